//go:build linux

package wsio

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A minimal io_uring submitter for one thing: many non-blocking socket sends in one
// system call. On the machines we measure on, a system call costs as much as the
// TCP work of a small loopback send, so a fan-out that writes 1,000 sockets one
// write(2) at a time spends about half its CPU entering and leaving the kernel;
// handing the same sends to the kernel as one batch halves the CPU per delivery
// (bench/README.md has the figures). No maintained pure-Go io_uring library is
// available to us, and the part used here is small: setup, the two rings, SEND, and
// io_uring_enter with GETEVENTS. No SQPOLL, no registered files or buffers, no
// single-issuer flags (a goroutine may submit from any thread).

// ABI constants (include/uapi/linux/io_uring.h).
const (
	uringOffSQRing = 0
	uringOffCQRing = 0x8000000
	uringOffSQEs   = 0x10000000

	uringEnterGetEvents = 1 << 0
	uringOpSend         = 26
	uringRegisterProbe  = 8
	uringOpSupported    = 1 << 0
	uringFeatSingleMmap = 1 << 0
	uringSetupSubmitAll = 1 << 7 // go on submitting after a request fails to queue (5.18)
	uringSetupClamp     = 1 << 4
)

type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	msgFlags    uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringProbe struct {
	lastOp uint8
	opsLen uint8
	resv   uint16
	resv2  [3]uint32
	ops    [64]struct {
		op    uint8
		resv  uint8
		flags uint16
		resv2 uint32
	}
}

// uring is one submission/completion ring pair, used by one goroutine at a time.
type uring struct {
	fd      int
	entries uint32
	sqMem   []byte
	cqMem   []byte // aliases sqMem when single
	single  bool   // IORING_FEAT_SINGLE_MMAP: one mapping holds both rings
	sqeMem  []byte

	sqTail, sqMask *uint32
	sqArray        []uint32
	sqes           []uringSQE
	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []uringCQE
}

// errUringUnavailable wraps why io_uring cannot be used here (an old kernel, a
// seccomp profile that forbids it, kernel.io_uring_disabled).
var errUringUnavailable = errors.New("io_uring unavailable")

// newUring sets up a ring of at least entries submission slots and checks that the
// kernel supports the SEND operation.
func newUring(entries uint32) (*uring, error) {
	var p uringParams
	p.flags = uringSetupSubmitAll | uringSetupClamp
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno == unix.EINVAL {
		// Kernels before 5.18 refuse SUBMIT_ALL; it only matters for failures to
		// queue, which a SEND with valid arguments does not have.
		p = uringParams{flags: uringSetupClamp}
		fd, _, errno = unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	}
	if errno != 0 {
		return nil, fmt.Errorf("%w: io_uring_setup: %v", errUringUnavailable, errno)
	}
	r := &uring{fd: int(fd), entries: p.sqEntries}
	if err := r.mmap(&p); err != nil {
		r.close()
		return nil, err
	}
	if err := r.probeSend(); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *uring) mmap(p *uringParams) error {
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	r.single = p.features&uringFeatSingleMmap != 0
	if r.single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, uringOffSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("%w: mmap sq ring: %v", errUringUnavailable, err)
	}
	if r.single {
		r.cqMem = r.sqMem
	} else if r.cqMem, err = unix.Mmap(r.fd, uringOffCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("%w: mmap cq ring: %v", errUringUnavailable, err)
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = unix.Mmap(r.fd, uringOffSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("%w: mmap sqes: %v", errUringUnavailable, err)
	}
	r.sqTail = (*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.tail]))
	r.sqMask = (*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.ringMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqMem[p.sqOff.array])), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&r.cqMem[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	return nil
}

func (r *uring) probeSend() error {
	var pr uringProbe
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uringRegisterProbe, uintptr(unsafe.Pointer(&pr)), uintptr(len(pr.ops)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("%w: probe: %v", errUringUnavailable, errno)
	}
	if pr.lastOp < uringOpSend || pr.ops[uringOpSend].flags&uringOpSupported == 0 {
		return fmt.Errorf("%w: the kernel has no SEND operation", errUringUnavailable)
	}
	return nil
}

// capacity is the most sends one call takes.
func (r *uring) capacity() int { return int(r.entries) }

func (r *uring) close() {
	if r.sqeMem != nil {
		_ = unix.Munmap(r.sqeMem)
	}
	if r.cqMem != nil && !r.single {
		_ = unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		_ = unix.Munmap(r.sqMem)
	}
	r.sqeMem, r.cqMem, r.sqMem = nil, nil, nil
	_ = unix.Close(r.fd)
}

// send makes one non-blocking send per buffer, bufs[i] to fds[i], in one system
// call, and stores each one's result in res: the count sent, or a negative errno
// (-EAGAIN when the socket's buffer is full). At most r.entries at a time. The
// caller keeps the descriptors open and the buffers alive until it returns.
func (r *uring) send(fds []int32, bufs [][]byte, res []int32) error {
	n := uint32(len(fds))
	if n == 0 {
		return nil
	}
	if n > r.entries {
		return fmt.Errorf("wsio: %d sends in a ring of %d", n, r.entries)
	}
	tail := atomic.LoadUint32(r.sqTail)
	mask := *r.sqMask
	for i := range n {
		idx := (tail + i) & mask
		sqe := &r.sqes[idx]
		*sqe = uringSQE{
			opcode:   uringOpSend,
			fd:       fds[i],
			addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(bufs[i])))),
			len:      uint32(len(bufs[i])),
			msgFlags: unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL,
			userData: uint64(i),
		}
		r.sqArray[idx] = idx
	}
	// The kernel reads the tail when we enter; the atomic store orders the
	// entries' writes before it.
	atomic.StoreUint32(r.sqTail, tail+n)
	submitted, done := uint32(0), uint32(0)
	for done < n {
		toSubmit := n - submitted
		k, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(n-done), uringEnterGetEvents, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return os.NewSyscallError("io_uring_enter", errno)
		}
		if errno == 0 {
			submitted += uint32(k)
		}
		done += r.reap(res)
	}
	return nil
}

// reap moves the completions present into res (indexed by user data) and reports
// how many there were.
func (r *uring) reap(res []int32) uint32 {
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	for h := head; h != tail; h++ {
		cqe := &r.cqes[h&r.cqMask]
		res[cqe.userData] = cqe.res
	}
	atomic.StoreUint32(r.cqHead, tail)
	return tail - head
}
