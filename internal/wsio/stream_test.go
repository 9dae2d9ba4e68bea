package wsio

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestRandomFragmentation sends a stream of messages split into random frames,
// with pings and pongs interleaved, written in random chunks, and checks every
// message arrives whole and in order: the epoll framing must never show gorilla a
// partial message whatever the chunk boundaries.
func TestRandomFragmentation(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		for seed := range uint64(3) {
			t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 42))
				rec := newRecorder(false)
				ts := newTestServer(t, Config{Mode: mode, MaxMessageBytes: 20000}, func() Handler { return rec })
				ws, _ := ts.dial(t)
				go func() { // consume pongs
					for {
						if _, _, err := ws.ReadMessage(); err != nil {
							return
						}
					}
				}()

				const n = 200
				var stream []byte
				want := make([]string, n)
				for i := range n {
					size := rng.IntN(3000)
					if rng.IntN(10) == 0 {
						size = rng.IntN(20000)
					}
					msg := bytes.Repeat([]byte{byte('a' + i%26)}, size)
					copy(msg, fmt.Sprint(i, ":"))
					want[i] = string(msg)
					op := byte(opBinary)
					if rng.IntN(2) == 0 {
						op = opText
					}
					rest := msg
					for first := true; ; first = false {
						k := len(rest)
						if rng.IntN(3) == 0 && k > 0 {
							k = rng.IntN(k + 1)
						}
						fop := byte(opContinuation)
						if first {
							fop = op
						}
						fin := k == len(rest)
						stream = append(stream, rawFrame(fin, fop, rest[:k], true)...)
						rest = rest[k:]
						if rng.IntN(4) == 0 {
							cop := byte(opPing)
							if rng.IntN(2) == 0 {
								cop = opPong
							}
							stream = append(stream, rawFrame(true, cop, []byte(fmt.Sprint(i)), true)...)
						}
						if fin {
							break
						}
					}
				}
				go func() {
					for len(stream) > 0 {
						k := min(len(stream), 1+rng.IntN(9000))
						if rng.IntN(4) == 0 {
							k = min(len(stream), 1+rng.IntN(4))
						}
						if _, err := ws.NetConn().Write(stream[:k]); err != nil {
							return
						}
						stream = stream[k:]
					}
				}()
				for i := range n {
					if m := rec.next(t); m.data != want[i] {
						t.Fatalf("message %d: got %d bytes %.10q, want %d bytes %.10q", i, len(m.data), m.data, len(want[i]), want[i])
					}
				}
			})
		}
	})
}
