package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
)

// The receive engine parses the server→client side of RFC 6455 itself (the bytes come
// from its own reads, not through gorilla): frames are unmasked, carry no extension
// bits (the handshake negotiates none), and a message may be fragmented, with control
// frames interleaved between its fragments. Client→server frames are always masked.

// WebSocket opcodes.
const (
	wsContinuation = 0x0
	wsText         = 0x1
	wsBinary       = 0x2
	wsClose        = 0x8
	wsPing         = 0x9
	wsPong         = 0xa
)

// rxMaxMessage bounds a message (all of its fragments): larger is a protocol error that
// drops the connection, not an allocation the server can make us do.
const rxMaxMessage = 16 << 20

// errRxClosed reports a close frame from the server.
var errRxClosed = errors.New("server closed the connection")

// wsHandler receives what wsIn.feed parses: a whole data message (text or binary,
// reassembled when fragmented) or a control frame. payload aliases the caller's buffer
// and is valid only during the call. stop makes feed return right after that frame,
// keeping the rest unparsed; an error ends the connection.
type wsHandler interface {
	wsFrame(op byte, payload []byte) (stop bool, err error)
}

// wsIn is one connection's incoming WebSocket stream state between reads: the bytes of
// a frame not yet complete, and the fragments of a message not yet complete. It is
// owned by one goroutine at a time (the setup, then the connection's event loop).
type wsIn struct {
	pend   []byte // an incomplete frame (copied out of the shared read buffer)
	frag   []byte // fragments of the current message so far
	fragOp byte   // the current fragmented message's opcode; 0 when none
	limit  int    // the largest message accepted; rxMaxMessage when 0
}

// feed parses data, after any bytes kept from earlier reads, handing each complete
// frame to h. Bytes of an incomplete frame, or every byte after the frame where h asked
// to stop, are kept for the next call. It reports whether h asked to stop.
func (w *wsIn) feed(data []byte, h wsHandler) (stopped bool, err error) {
	if len(w.pend) > 0 {
		w.pend = append(w.pend, data...)
		data = w.pend
	}
	rest, stopped, err := w.parse(data, h)
	if err != nil {
		return false, err
	}
	w.keep(rest)
	return stopped, nil
}

// buffered reports whether bytes are kept (an incomplete frame, or unparsed frames).
func (w *wsIn) buffered() bool { return len(w.pend) > 0 }

// keep makes rest (a suffix of w.pend or of the caller's buffer) the kept bytes.
func (w *wsIn) keep(rest []byte) {
	switch {
	case len(rest) == 0:
		w.pend = w.pend[:0]
		if cap(w.pend) > 64<<10 {
			w.pend = nil // a large frame passed; do not hold its buffer forever
		}
	case len(w.pend) > 0 && &rest[len(rest)-1] == &w.pend[len(w.pend)-1]:
		w.pend = w.pend[:copy(w.pend, rest)] // a suffix of pend: move it to the front
	default:
		w.pend = append(w.pend[:0], rest...)
	}
}

// parse hands every complete frame of data to h and returns the bytes left over.
func (w *wsIn) parse(data []byte, h wsHandler) ([]byte, bool, error) {
	limit := w.limit
	if limit <= 0 {
		limit = rxMaxMessage
	}
	for len(data) > 0 {
		fin, op, hdr, n, err := frameHeader(data, limit)
		if err != nil {
			return nil, false, err
		}
		if hdr == 0 || len(data)-hdr < n {
			return data, false, nil // incomplete
		}
		payload := data[hdr : hdr+n]
		data = data[hdr+n:]
		var stop bool
		switch op {
		case wsText, wsBinary:
			if w.fragOp != 0 {
				return nil, false, fmt.Errorf("websocket: opcode %d inside a fragmented message", op)
			}
			if fin {
				stop, err = h.wsFrame(op, payload)
				break
			}
			w.fragOp = op
			w.frag = append(w.frag[:0], payload...)
		case wsContinuation:
			if w.fragOp == 0 {
				return nil, false, errors.New("websocket: continuation frame outside a message")
			}
			if len(w.frag)+n > limit {
				return nil, false, fmt.Errorf("websocket: message over %d bytes", limit)
			}
			w.frag = append(w.frag, payload...)
			if fin {
				op := w.fragOp
				w.fragOp = 0
				stop, err = h.wsFrame(op, w.frag)
				w.frag = w.frag[:0]
				if cap(w.frag) > 64<<10 {
					w.frag = nil
				}
			}
		default: // a control frame (frameHeader accepts no other opcode)
			stop, err = h.wsFrame(op, payload)
		}
		if err != nil {
			return nil, false, err
		}
		if stop {
			return data, true, nil
		}
	}
	return data, false, nil
}

// frameHeader decodes the header at the start of b: hdr is its length and n the
// payload's, or hdr is 0 when b does not hold the whole header yet. Anything a server
// must not send (a mask, extension bits, an unknown opcode, a fragmented or long
// control frame, a payload over limit) is an error.
func frameHeader(b []byte, limit int) (fin bool, op byte, hdr, n int, err error) {
	if len(b) < 2 {
		return false, 0, 0, 0, nil
	}
	fin, op = b[0]&0x80 != 0, b[0]&0x0f
	if b[0]&0x70 != 0 {
		return false, 0, 0, 0, errors.New("websocket: reserved bits set")
	}
	if b[1]&0x80 != 0 {
		return false, 0, 0, 0, errors.New("websocket: masked frame from the server")
	}
	var size uint64
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return false, 0, 0, 0, nil
		}
		hdr, size = 4, uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		if len(b) < 10 {
			return false, 0, 0, 0, nil
		}
		hdr, size = 10, binary.BigEndian.Uint64(b[2:])
	default:
		hdr, size = 2, uint64(l)
	}
	switch op {
	case wsContinuation, wsText, wsBinary:
		if size > uint64(limit) {
			return false, 0, 0, 0, fmt.Errorf("websocket: frame of %d bytes, over %d", size, limit)
		}
	case wsClose, wsPing, wsPong:
		if !fin || size > 125 {
			return false, 0, 0, 0, errors.New("websocket: fragmented or long control frame")
		}
	default:
		return false, 0, 0, 0, fmt.Errorf("websocket: unknown opcode %d", op)
	}
	return fin, op, hdr, int(size), nil
}

// appendClientFrame appends a final, masked frame of opcode op carrying payload.
func appendClientFrame(b []byte, op byte, payload []byte) []byte {
	b = append(b, 0x80|op)
	switch n := len(payload); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, payload...)
	for i := range payload {
		b[start+i] ^= key[i&3]
	}
	return b
}

// closeReply is the payload of the close frame answering a server's close: its status
// code echoed, or none when it sent none.
func closeReply(payload []byte) []byte {
	if len(payload) >= 2 {
		return payload[:2]
	}
	return nil
}
