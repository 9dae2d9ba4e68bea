package wsio

import (
	"errors"
	"io"
	"net"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// readLoop is the reader goroutine of goroutine mode: gorilla parses, the tracker
// in readSocket watches frame boundaries for PartialTimeout and LastRead.
func (c *Conn) readLoop() {
	defer c.s.wg.Done()
	var err error
	var u utf8Stream
	for {
		var typ int
		var r io.Reader
		typ, r, err = c.ws.NextReader()
		if err != nil {
			break
		}
		buf := c.s.pools.getData(0)
		var text *utf8Stream
		if typ == websocket.TextMessage {
			u.reset()
			text = &u
		}
		*buf, err = readAllInto(*buf, r, text)
		if errors.Is(err, errInvalidUTF8) {
			// Failed fast, before the rest of the message; gorilla discards what is
			// left of it on the next NextReader.
			c.s.pools.putData(buf)
			c.fail(websocket.CloseInvalidFramePayloadData, "text message is not valid utf-8")
			continue
		}
		if err != nil {
			c.s.pools.putData(buf)
			break
		}
		if !c.accepting() {
			c.s.pools.putData(buf)
			continue
		}
		if typ == websocket.TextMessage && !utf8.Valid(*buf) {
			c.s.pools.putData(buf)
			c.fail(websocket.CloseInvalidFramePayloadData, "text message is not valid utf-8")
			continue
		}
		c.h.OnMessage(c, typ == websocket.BinaryMessage, *buf)
		c.s.pools.putData(buf)
	}
	c.readEnded(err)
	<-c.done
	c.mu.Lock()
	c.notified = true
	c.mu.Unlock()
	c.h.OnClose(c, c.reason())
}

// errInvalidUTF8 stops readAllInto at the first invalid UTF-8 in a text message.
var errInvalidUTF8 = errors.New("text message is not valid utf-8")

// readAllInto appends everything r yields to b. With text set, each read is checked
// as it arrives, so invalid UTF-8 fails fast with errInvalidUTF8.
func readAllInto(b []byte, r io.Reader, text *utf8Stream) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		if text != nil && n > 0 && !text.feed(b[len(b):len(b)+n]) {
			return b, errInvalidUTF8
		}
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// readEnded maps the error that ended gorilla's reading to the connection's fate.
func (c *Conn) readEnded(err error) {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case c.partialExpired:
		c.fail(websocket.ClosePolicyViolation, "partial message timeout")
	case errors.Is(err, websocket.ErrReadLimit):
		c.fail(websocket.CloseMessageTooBig, "message too big")
	case errors.As(err, &ce) && ce.Code == websocket.CloseAbnormalClosure:
		c.shutdown(io.ErrUnexpectedEOF) // gorilla's name for a vanished peer
	case errors.As(err, &ce):
		// The close handler has answered it (peerClose).
		c.peerClose(ce.Code, ce.Text)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.As(err, &ne):
		c.shutdown(err)
	default:
		// gorilla found a protocol violation and has queued its close frame (1002).
		c.fail(websocket.CloseProtocolError, trimPrefix(err.Error()))
	}
}

func trimPrefix(s string) string {
	const p = "websocket: "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

// readSocket reads from the socket for gorilla in goroutine mode. While a frame or
// fragmented message is pending it keeps a read deadline at PartialTimeout after the
// partial input began; between messages there is none (idle time is the owner's
// business, via LastRead).
func (c *Conn) readSocket(p []byte) (int, error) {
	if c.trk.pending() {
		dl := c.trackSince + int64(c.s.cfg.PartialTimeout)
		if !c.deadlineSet || c.deadlineAt != dl {
			_ = c.nc.SetReadDeadline(time.Unix(0, dl))
			c.deadlineSet, c.deadlineAt = true, dl
		}
	} else if c.deadlineSet {
		_ = c.nc.SetReadDeadline(time.Time{})
		c.deadlineSet = false
	}
	n, err := c.nc.Read(p)
	if n > 0 {
		frames, msgs := c.trk.feed(p[:n])
		now := int64(0)
		if frames > 0 {
			now = time.Now().UnixNano()
			c.lastRead.Store(now)
		}
		switch {
		case !c.trk.pending():
			c.trackSince = 0
		case c.trackSince == 0 || msgs > 0:
			if now == 0 {
				now = time.Now().UnixNano()
			}
			c.trackSince = now
		}
	}
	if err != nil && c.deadlineSet {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.partialExpired = true
		}
	}
	return n, err
}
