package wsio

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa

	maxControlPayload = 125
	maxHeaderLen      = 2 + 8 + 4
)

// frameHeader is a parsed client frame header.
type frameHeader struct {
	fin    bool
	op     byte
	length int64
	mask   [4]byte
}

func (h *frameHeader) control() bool { return h.op >= opClose }

// protocolError builds the close error for a frame we refuse.
func protocolError(code int, text string) *websocket.CloseError {
	return &websocket.CloseError{Code: code, Text: text}
}

// parseHeader parses the client frame header at the start of b. It returns the
// header length n, or n == 0 when b does not yet hold the whole header. Violations
// visible in the header (RFC 6455, section 5.2 and 5.5) are reported as soon as the
// bytes that show them are present, so a bad frame is refused without waiting for
// the rest of it.
func parseHeader(b []byte) (h frameHeader, n int, perr *websocket.CloseError) {
	if len(b) < 2 {
		return h, 0, nil
	}
	b0, b1 := b[0], b[1]
	h.fin = b0&0x80 != 0
	h.op = b0 & 0x0f
	if b0&0x70 != 0 {
		return h, 0, protocolError(websocket.CloseProtocolError, "reserved bits set")
	}
	switch h.op {
	case opContinuation, opText, opBinary:
	case opClose, opPing, opPong:
		if !h.fin {
			return h, 0, protocolError(websocket.CloseProtocolError, "fragmented control frame")
		}
		if b1&0x7f > maxControlPayload {
			return h, 0, protocolError(websocket.CloseProtocolError, "control frame payload over 125 bytes")
		}
	default:
		return h, 0, protocolError(websocket.CloseProtocolError, "reserved opcode "+strconv.Itoa(int(h.op)))
	}
	if b1&0x80 == 0 {
		return h, 0, protocolError(websocket.CloseProtocolError, "unmasked client frame")
	}
	n = 2
	switch l := b1 & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		h.length = int64(binary.BigEndian.Uint16(b[2:]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		v := binary.BigEndian.Uint64(b[2:])
		if v>>63 != 0 {
			return h, 0, protocolError(websocket.CloseProtocolError, "invalid payload length")
		}
		h.length = int64(v)
		n = 10
	default:
		h.length = int64(l)
	}
	if len(b) < n+4 {
		// The length is known: report it so size limits apply before the mask key.
		return h, 0, nil
	}
	copy(h.mask[:], b[n:n+4])
	return h, n + 4, nil
}

// headerPrefixLen reports how long the header starting with bytes b0, b1 is.
func headerPrefixLen(b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// unmask XORs p with the frame's masking key, starting at payload offset 0.
func unmask(key [4]byte, p []byte) {
	for i := range p {
		p[i] ^= key[i&3]
	}
}

// validReceivedCloseCode reports whether a peer may send code (RFC 6455, section 7.4).
func validReceivedCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// parseClosePayload validates an unmasked close frame payload and returns the code
// and reason it carries (1005 when it carries none).
func parseClosePayload(p []byte) (code int, text string, perr *websocket.CloseError) {
	switch {
	case len(p) == 0:
		return websocket.CloseNoStatusReceived, "", nil
	case len(p) == 1:
		return 0, "", protocolError(websocket.CloseProtocolError, "close frame payload of one byte")
	}
	code = int(binary.BigEndian.Uint16(p))
	if !validReceivedCloseCode(code) {
		return 0, "", protocolError(websocket.CloseProtocolError, "bad close code "+strconv.Itoa(code))
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", protocolError(websocket.CloseProtocolError, "close reason is not valid utf-8")
	}
	return code, string(p[2:]), nil
}

// closePayload encodes a close frame payload for code and reason, cutting the reason
// at a rune boundary so the payload fits a control frame. Code 1005 means "no status"
// and is sent as an empty payload, as RFC 6455 forbids sending 1005 itself.
func closePayload(code int, reason string) []byte {
	if code == websocket.CloseNoStatusReceived || code == 0 {
		return []byte{}
	}
	if len(reason) > maxControlPayload-2 {
		cut := maxControlPayload - 2
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return websocket.FormatCloseMessage(code, reason)
}

// tracker follows frame boundaries in a byte stream without buffering it. The
// goroutine-mode reader feeds it everything read from the socket, so it knows
// whether a frame or fragmented message is pending (for PartialTimeout) and when a
// frame was last completed (for LastRead), while gorilla does the parsing.
type tracker struct {
	hdr    [maxHeaderLen]byte
	hn     uint8 // header bytes collected
	op     byte  // opcode of the frame whose payload is being skipped
	fin    bool
	inMsg  bool  // a fragmented data message is open
	remain int64 // payload bytes left in the current frame
	inBody bool  // the header is complete and remain counts the payload
	// badClose is set when a close frame announces a one-byte payload, which gorilla
	// would take for "no status" instead of the protocol error it is.
	badClose bool
}

// pending reports whether the stream stops inside a frame or a fragmented message.
func (t *tracker) pending() bool { return t.hn > 0 || t.inBody || t.inMsg }

// feed consumes p and reports how many frames and data messages it completed.
func (t *tracker) feed(p []byte) (frames, msgs int) {
	for len(p) > 0 {
		if t.inBody {
			k := int64(len(p))
			if k > t.remain {
				k = t.remain
			}
			t.remain -= k
			p = p[k:]
			if t.remain == 0 {
				msgs += t.endFrame()
				frames++
			}
			continue
		}
		t.hdr[t.hn] = p[0]
		t.hn++
		p = p[1:]
		if t.hn < 2 || int(t.hn) < headerPrefixLen(t.hdr[1]) {
			continue
		}
		h, n, perr := parseHeader(t.hdr[:t.hn])
		t.hn = 0
		if perr != nil || n == 0 {
			// gorilla reports the violation; stop tracking precisely.
			t.inBody, t.remain, t.inMsg = false, 0, false
			continue
		}
		t.op, t.fin, t.remain, t.inBody = h.op, h.fin, h.length, true
		if h.op == opClose && h.length == 1 {
			t.badClose = true
		}
		if t.remain == 0 {
			msgs += t.endFrame()
			frames++
		}
	}
	return frames, msgs
}

// endFrame closes the current frame and reports 1 when it ended a data message.
func (t *tracker) endFrame() int {
	t.inBody = false
	if t.op >= opClose {
		return 0
	}
	t.inMsg = !t.fin
	if t.fin {
		return 1
	}
	return 0
}

// utf8Stream validates a text message whose bytes arrive in pieces (fragments, or
// reads), so invalid UTF-8 fails the connection as soon as it is seen instead of
// when the message completes (RFC 6455, 8.1; Autobahn 6.4). It holds at most the
// first bytes of one code point cut by a piece boundary; those bytes are always a
// valid prefix, since utf8.FullRune calls an invalid prefix a full (error) rune.
type utf8Stream struct {
	carry [utf8.UTFMax]byte
	n     uint8
}

func (u *utf8Stream) reset() { u.n = 0 }

// feed reports whether the text seen so far, p included, can still be valid UTF-8.
// The whole message must still be checked at its end (an incomplete code point may
// be left over).
func (u *utf8Stream) feed(p []byte) bool {
	for u.n > 0 && len(p) > 0 {
		u.carry[u.n] = p[0]
		u.n++
		p = p[1:]
		if utf8.FullRune(u.carry[:u.n]) {
			// The carried bytes were an incomplete valid prefix: one more byte makes
			// either the whole code point or an invalid sequence.
			if r, size := utf8.DecodeRune(u.carry[:u.n]); r == utf8.RuneError && size == 1 {
				return false
			}
			u.n = 0
		}
	}
	if len(p) == 0 {
		return true // the carried code point is still incomplete
	}
	cut := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(p[:cut]) {
		return false
	}
	u.n = uint8(copy(u.carry[:], p[cut:]))
	return true
}
