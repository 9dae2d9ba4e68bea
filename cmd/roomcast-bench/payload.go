package main

import (
	"bytes"
	"strconv"
)

// A bench payload is a JSON object whose first keys are fixed and in a fixed order, so
// receivers find them with a byte scan instead of a JSON parse (the tool shares the
// cores with the server; its per-delivery cost must stay small):
//
//	{"bt":<intended send time, µs since the Unix epoch>,"bs":<per-room sequence>,
//	 "br":<room index>,"bk":<step>,"p":"xxx…"}
//
// Microseconds keep the time inside JavaScript's exact integer range, so the Socket.IO
// server forwards the same numbers it was given.
type stamp struct {
	t    int64 // intended send time, µs since the Unix epoch
	seq  int64 // sequence number within the room, from 1
	room int64 // room index within the scenario
	step int64 // scenario step the message belongs to
}

var stampKey = []byte(`{"bt":`)

// appendPayload appends the JSON payload for s, padded with "x" to about size bytes.
func appendPayload(b []byte, s stamp, size int) []byte {
	start := len(b)
	b = append(b, stampKey...)
	b = strconv.AppendInt(b, s.t, 10)
	b = append(b, `,"bs":`...)
	b = strconv.AppendInt(b, s.seq, 10)
	b = append(b, `,"br":`...)
	b = strconv.AppendInt(b, s.room, 10)
	b = append(b, `,"bk":`...)
	b = strconv.AppendInt(b, s.step, 10)
	b = append(b, `,"p":"`...)
	for n := len(b) - start + 2; n < size; n++ {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

// parseStamp finds a bench payload anywhere in a received frame (a roomcast JSON
// message, or a Socket.IO event packet) and decodes its stamp.
func parseStamp(frame []byte) (stamp, bool) {
	i := bytes.Index(frame, stampKey)
	if i < 0 {
		return stamp{}, false
	}
	b := frame[i+len(stampKey):]
	var s stamp
	var ok bool
	if s.t, b, ok = number(b, nil); !ok {
		return stamp{}, false
	}
	if s.seq, b, ok = number(b, []byte(`,"bs":`)); !ok {
		return stamp{}, false
	}
	if s.room, b, ok = number(b, []byte(`,"br":`)); !ok {
		return stamp{}, false
	}
	if s.step, _, ok = number(b, []byte(`,"bk":`)); !ok {
		return stamp{}, false
	}
	return s, true
}

// number skips prefix and reads a non-negative decimal integer.
func number(b, prefix []byte) (int64, []byte, bool) {
	if !bytes.HasPrefix(b, prefix) {
		return 0, b, false
	}
	b = b[len(prefix):]
	var n int64
	j := 0
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		n = n*10 + int64(b[j]-'0')
	}
	return n, b[j:], j > 0
}
