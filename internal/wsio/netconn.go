package wsio

import (
	"errors"
	"net"
	"time"
)

// errNoInput means gorilla asked for bytes beyond the last complete message we
// exposed: a framing bug, never a peer's doing.
var errNoInput = errors.New("wsio: internal error: read beyond the exposed input")

// connIO is the net.Conn gorilla reads and writes. Reads see only what the read path
// exposes; writes (after the handshake) append to the connection's outgoing batch,
// which the flusher writes to the socket in one write. Deadlines are ours to manage,
// so after the handshake gorilla's deadline calls are ignored.
type connIO struct{ c *Conn }

var _ net.Conn = (*connIO)(nil)

// Read implements net.Conn.
func (n *connIO) Read(p []byte) (int, error) {
	c := n.c
	if c.epoll {
		k := copy(p, c.in[c.r:c.lim])
		c.r += k
		if k == 0 && len(p) > 0 {
			return 0, errNoInput
		}
		return k, nil
	}
	return c.readSocket(p)
}

// Write implements net.Conn.
func (n *connIO) Write(p []byte) (int, error) {
	c := n.c
	if c.handshake {
		return c.nc.Write(p)
	}
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.out == nil {
		c.out = c.s.pools.getOut()
	}
	*c.out = append(*c.out, p...)
	if len(p) > 0 && p[0]&0x0f == opClose {
		// gorilla writes each control frame whole, in one Write: no data may follow.
		c.closeFramed = true
	}
	c.kickLocked()
	c.mu.Unlock()
	return len(p), nil
}

// Close implements net.Conn; gorilla calls it only when the handshake fails.
func (n *connIO) Close() error { return n.c.nc.Close() }

// LocalAddr implements net.Conn.
func (n *connIO) LocalAddr() net.Addr { return n.c.nc.LocalAddr() }

// RemoteAddr implements net.Conn.
func (n *connIO) RemoteAddr() net.Addr { return n.c.nc.RemoteAddr() }

// SetDeadline implements net.Conn (effective during the handshake only).
func (n *connIO) SetDeadline(t time.Time) error {
	if n.c.handshake {
		return n.c.nc.SetDeadline(t)
	}
	return nil
}

// SetReadDeadline implements net.Conn (effective during the handshake only).
func (n *connIO) SetReadDeadline(t time.Time) error {
	if n.c.handshake {
		return n.c.nc.SetReadDeadline(t)
	}
	return nil
}

// SetWriteDeadline implements net.Conn (effective during the handshake only).
func (n *connIO) SetWriteDeadline(t time.Time) error {
	if n.c.handshake {
		return n.c.nc.SetWriteDeadline(t)
	}
	return nil
}
