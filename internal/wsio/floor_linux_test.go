//go:build linux

package wsio

import (
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkLoopbackSend measures the machine's floor under a fan-out, without
// WebSocket or roomcast: 1000 loopback TCP sockets, each drained by a goroutine of
// this process, get one 70-byte send per iteration, made with one write(2) per
// socket ("write") or in io_uring submissions of 256 ("uring"). It reports the
// CPU time of the sending thread per send; that thread does nothing else, so it is
// the kernel's cost of a send, which on loopback includes the receiver's TCP
// processing and its wake-up. Compare the two in one run; the README's Performance
// section says what they were on our machines.
func BenchmarkLoopbackSend(b *testing.B) {
	for _, mode := range []string{"write", "uring"} {
		b.Run(mode, func(b *testing.B) {
			const n = 1000
			fds, rd := loopbackPairs(b, n)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var ring *uring
			if mode == "uring" {
				r, err := newUring(batchMax)
				if err != nil {
					b.Skip(err)
				}
				ring = r
				defer ring.close()
			}
			msg := make([]byte, 70)
			bufs := make([][]byte, batchMax)
			for i := range bufs {
				bufs[i] = msg
			}
			res := make([]int32, batchMax)
			var spent time.Duration
			b.ResetTimer()
			for i := range b.N {
				rd.want.Store(int64(i+1) * n * int64(len(msg)))
				start := threadCPU(b)
				if ring == nil {
					for _, fd := range fds {
						if _, err := unix.Write(int(fd), msg); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					for j := 0; j < n; j += batchMax {
						k := min(n, j+batchMax)
						if err := ring.send(fds[j:k], bufs[:k-j], res); err != nil {
							b.Fatal(err)
						}
					}
				}
				spent += threadCPU(b) - start
				// Let the readers drain before the next round, so no send finds a
				// full buffer.
				select {
				case <-rd.done:
				case <-time.After(time.Minute):
					b.Fatalf("read %d of %d bytes", rd.got.Load(), rd.want.Load())
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(spent.Nanoseconds())/float64(b.N*n), "ns/send")
		})
	}
}

// threadCPU is the CPU time of the calling (locked) OS thread.
func threadCPU(b *testing.B) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

// readTally counts the bytes the readers of loopbackPairs got; done gets a value
// when the count reaches want.
type readTally struct {
	got, want atomic.Int64
	done      chan struct{}
}

// loopbackPairs connects n loopback TCP pairs and returns the accepted sides'
// descriptors (kept open until the benchmark ends) and the tally of the dialled
// sides, each drained by a goroutine.
func loopbackPairs(b *testing.B, n int) ([]int32, *readTally) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	rd := &readTally{done: make(chan struct{}, 1)}
	rd.want.Store(-1)
	fds := make([]int32, 0, n)
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		f, err := s.(*net.TCPConn).File()
		if err != nil {
			b.Fatal(err)
		}
		_ = s.Close() // f holds the socket
		fds = append(fds, int32(f.Fd()))
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 4096)
			for {
				k, err := c.Read(buf)
				if k > 0 && rd.got.Add(int64(k)) == rd.want.Load() {
					rd.done <- struct{}{}
				}
				if err != nil {
					return
				}
			}
		}()
		b.Cleanup(func() {
			_ = f.Close()
			_, _ = io.Copy(io.Discard, c) // until EOF
			_ = c.Close()
			<-done
		})
	}
	return fds, rd
}
