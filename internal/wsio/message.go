package wsio

import (
	"errors"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// Message is an encoded WebSocket data message that many connections can share: it
// is framed once (a websocket.PreparedMessage) and its encoded size is known, so
// send queues can account for it. A Message is immutable and safe for concurrent use.
type Message struct {
	pm *websocket.PreparedMessage
	n  int
}

// NewMessage encodes data as one text or binary message. Text must be valid UTF-8
// (RFC 6455 requires it and browsers fail the connection otherwise). data may be
// reused by the caller after NewMessage returns.
func NewMessage(binary bool, data []byte) (*Message, error) {
	typ := websocket.BinaryMessage
	if !binary {
		typ = websocket.TextMessage
		if !utf8.Valid(data) {
			return nil, errors.New("wsio: text message is not valid utf-8")
		}
	}
	pm, err := websocket.NewPreparedMessage(typ, data)
	if err != nil {
		return nil, err
	}
	return &Message{pm: pm, n: frameHeaderLen(len(data)) + len(data)}, nil
}

// Len reports the encoded size of the message on the wire (header and payload), the
// amount it counts against a send queue's byte bound.
func (m *Message) Len() int { return m.n }

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
