package wsio

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"
)

// Message is an encoded WebSocket data message that many connections can share: it
// is framed once (header and payload, as a server sends it: unmasked, uncompressed)
// and its encoded size is known, so send queues can account for it. The flusher
// copies or writes these bytes straight to the socket; gorilla never sees data
// messages, so a fan-out takes no shared lock per receiver. A Message is immutable
// and safe for concurrent use.
type Message struct {
	frame []byte
}

// NewMessage encodes data as one text or binary message. Text must be valid UTF-8
// (RFC 6455 requires it and browsers fail the connection otherwise). data may be
// reused by the caller after NewMessage returns.
func NewMessage(binary bool, data []byte) (*Message, error) {
	op := byte(opBinary)
	if !binary {
		op = opText
		if !utf8.Valid(data) {
			return nil, errors.New("wsio: text message is not valid utf-8")
		}
	}
	hl := frameHeaderLen(len(data))
	frame := make([]byte, hl+len(data))
	putFrameHeader(frame, op, len(data))
	copy(frame[hl:], data)
	return &Message{frame: frame}, nil
}

// Len reports the encoded size of the message on the wire (header and payload), the
// amount it counts against a send queue's byte bound.
func (m *Message) Len() int { return len(m.frame) }

// frameHeaderLen is the size of an unmasked (server to client) frame header for a
// payload of n bytes.
func frameHeaderLen(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// putFrameHeader writes the header of a final, unmasked frame with opcode op and a
// payload of n bytes at the start of b, which holds at least frameHeaderLen(n) bytes.
func putFrameHeader(b []byte, op byte, n int) {
	b[0] = 0x80 | op
	switch {
	case n <= 125:
		b[1] = byte(n)
	case n <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
}
