package wsio

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system) this process has used, which a
// busy shared machine distorts less than wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
