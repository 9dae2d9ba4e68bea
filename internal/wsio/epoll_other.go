//go:build !linux

package wsio

import (
	"errors"
	"syscall"
)

const epollSupported = false

// poller is not available off Linux; NewServer never builds one there.
type poller struct{}

func newPoller(*Server) (*poller, error) {
	return nil, errors.New("wsio: epoll mode is only available on linux")
}

func (*poller) close()          {}
func (*poller) add(*Conn) error { return errors.New("wsio: epoll mode is only available on linux") }
func (*poller) remove(*Conn)    {}

// rawWrite is not available off Linux: writes always take the blocking path.
func rawWrite(syscall.RawConn, []byte) (int, error) { return 0, errWouldBlock }

// uring is not available off Linux: every write is a write of its own.
type uring struct{ entries uint32 }

var errUringUnavailable = errors.New("io_uring is only available on linux")

func newUring(uint32) (*uring, error)                { return nil, errUringUnavailable }
func (*uring) send([]int32, [][]byte, []int32) error { return errUringUnavailable }
func (*uring) close()                                {}
func (r *uring) capacity() int                       { return int(r.entries) }
