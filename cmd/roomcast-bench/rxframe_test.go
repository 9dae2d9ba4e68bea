package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// serverFrame is a frame as a server sends it: unmasked.
func serverFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// frameLog records what the parser hands over.
type frameLog struct {
	got    []string
	stopOn string // stop after a message with this text
}

func (f *frameLog) wsFrame(op byte, p []byte) (bool, error) {
	f.got = append(f.got, fmt.Sprintf("%d:%s", op, p))
	return f.stopOn != "" && string(p) == f.stopOn, nil
}

// feedAll feeds stream in chunks of the given sizes (the rest in one).
func feedAll(t *testing.T, w *wsIn, h wsHandler, stream []byte, chunks ...int) error {
	t.Helper()
	for _, n := range chunks {
		n = min(n, len(stream))
		// A fresh copy, as the engine's shared buffer is overwritten by the next read.
		if _, err := w.feed(bytes.Clone(stream[:n]), h); err != nil {
			return err
		}
		stream = stream[n:]
	}
	_, err := w.feed(bytes.Clone(stream), h)
	return err
}

func TestWSInFrames(t *testing.T) {
	big := strings.Repeat("b", 300)     // 16-bit length
	huge := strings.Repeat("h", 70_000) // 64-bit length
	var stream []byte
	stream = append(stream, serverFrame(true, wsText, []byte("one"))...)
	stream = append(stream, serverFrame(true, wsBinary, []byte(big))...)
	// A fragmented message with a ping between its fragments.
	stream = append(stream, serverFrame(false, wsText, []byte("fr"))...)
	stream = append(stream, serverFrame(true, wsPing, []byte("p!"))...)
	stream = append(stream, serverFrame(false, wsContinuation, []byte("ag"))...)
	stream = append(stream, serverFrame(true, wsContinuation, []byte("ment"))...)
	stream = append(stream, serverFrame(true, wsText, []byte(huge))...)
	stream = append(stream, serverFrame(true, wsPong, nil)...)
	stream = append(stream, serverFrame(true, wsText, nil)...)
	want := []string{"1:one", "2:" + big, "9:p!", "1:fragment", "1:" + huge, "10:", "1:"}

	check := func(t *testing.T, chunks ...int) {
		t.Helper()
		var w wsIn
		var log frameLog
		if err := feedAll(t, &w, &log, stream, chunks...); err != nil {
			t.Fatal(err)
		}
		if strings.Join(log.got, "|") != strings.Join(want, "|") {
			t.Fatalf("chunks %v: got %d frames %.80q, want %d", chunks, len(log.got), log.got, len(want))
		}
		if w.buffered() || w.fragOp != 0 {
			t.Fatalf("chunks %v: state left: %d bytes pending, fragment op %d", chunks, len(w.pend), w.fragOp)
		}
	}
	t.Run("several frames in one read", func(t *testing.T) { check(t) })
	t.Run("byte by byte", func(t *testing.T) {
		ones := make([]int, len(stream))
		for i := range ones {
			ones[i] = 1
		}
		check(t, ones...)
	})
	t.Run("every split point", func(t *testing.T) {
		for i := range 400 { // the first frames and their headers
			check(t, i)
		}
		for _, i := range []int{len(stream) - 70_010, len(stream) - 70_000, len(stream) - 5} {
			check(t, i)
		}
	})
	t.Run("irregular reads", func(t *testing.T) { check(t, 3, 7, 2, 500, 1, 1, 64<<10, 9) })
}

func TestWSInStopKeepsTheRest(t *testing.T) {
	var stream []byte
	for _, m := range []string{"a", "reply", "b", "c"} {
		stream = append(stream, serverFrame(true, wsText, []byte(m))...)
	}
	stream = append(stream, serverFrame(true, wsText, []byte("partial"))[:4]...)
	var w wsIn
	log := &frameLog{stopOn: "reply"}
	stopped, err := w.feed(stream, log)
	if err != nil || !stopped || strings.Join(log.got, "|") != "1:a|1:reply" {
		t.Fatalf("stopped %v err %v got %q; want a stop after the reply", stopped, err, log.got)
	}
	// The stream continues where it stopped, the partial frame's end arriving later.
	log = &frameLog{}
	if _, err := w.feed(nil, log); err != nil {
		t.Fatal(err)
	}
	if _, err := w.feed(serverFrame(true, wsText, []byte("partial"))[4:], log); err != nil {
		t.Fatal(err)
	}
	if strings.Join(log.got, "|") != "1:b|1:c|1:partial" || w.buffered() {
		t.Fatalf("after the stop: %q (pending %d bytes)", log.got, len(w.pend))
	}
}

func TestWSInErrors(t *testing.T) {
	masked := appendClientFrame(nil, wsText, []byte("x"))
	long := serverFrame(true, wsText, nil)
	long = append(long[:1], 127)
	long = binary.BigEndian.AppendUint64(long, 1<<62)
	tests := []struct {
		name   string
		stream []byte
		limit  int
	}{
		{"masked", masked, 0},
		{"reserved bits", append([]byte{0xc1, 1}, 'x'), 0},
		{"unknown opcode", serverFrame(true, 0x3, []byte("x")), 0},
		{"fragmented control", serverFrame(false, wsPing, nil), 0},
		{"long control", serverFrame(true, wsClose, make([]byte, 126)), 0},
		{"continuation first", serverFrame(true, wsContinuation, []byte("x")), 0},
		{"text inside a message", append(serverFrame(false, wsText, []byte("a")), serverFrame(true, wsText, []byte("b"))...), 0},
		{"frame over the limit", serverFrame(true, wsText, make([]byte, 200)), 100},
		{"message over the limit", append(serverFrame(false, wsText, make([]byte, 60)), serverFrame(true, wsContinuation, make([]byte, 60))...), 100},
		{"absurd length, header only", long, 0},
		{"garbage", []byte("HTTP/1.1 500 oops\r\n\r\n"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := wsIn{limit: tt.limit}
			if err := feedAll(t, &w, &frameLog{}, tt.stream); err == nil {
				t.Fatalf("no error for %q", tt.stream)
			}
		})
	}
}

// unmask decodes a client frame (one, whole) for the tests.
func unmask(t *testing.T, b []byte) (op byte, payload []byte) {
	t.Helper()
	if b[0]&0x80 == 0 || b[1]&0x80 == 0 {
		t.Fatalf("client frame %x: not final or not masked", b[:2])
	}
	n, hdr := int(b[1]&0x7f), 2
	switch n {
	case 126:
		n, hdr = int(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		n, hdr = int(binary.BigEndian.Uint64(b[2:])), 10
	}
	key := b[hdr : hdr+4]
	payload = bytes.Clone(b[hdr+4:])
	if len(payload) != n {
		t.Fatalf("client frame: %d payload bytes, header says %d", len(payload), n)
	}
	for i := range payload {
		payload[i] ^= key[i&3]
	}
	return b[0] & 0x0f, payload
}

func TestAppendClientFrame(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 0xffff, 0x10000} {
		p := bytes.Repeat([]byte{'z'}, n)
		op, got := unmask(t, appendClientFrame(nil, wsText, p))
		if op != wsText || !bytes.Equal(got, p) {
			t.Fatalf("%d bytes: op %d, payload round trip failed", n, op)
		}
	}
	if got := closeReply([]byte{0x03, 0xe9, 'b', 'y', 'e'}); !bytes.Equal(got, []byte{0x03, 0xe9}) {
		t.Fatalf("close reply %x, want the status echoed", got)
	}
}
