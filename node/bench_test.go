package node

import (
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/jwtauth"
)

// BenchmarkFanout delivers one room message to 1000 local connections per iteration
// (encode once, queue to each, coalesced writes) and reports ns per delivery,
// measured until every client has read every message.
func BenchmarkFanout(b *testing.B) {
	const conns = 1000
	h := newHarness(b, func(c *Config) { c.ConnectRate = 1e6 })
	var received atomic.Int64
	var wg sync.WaitGroup
	tok, err := jwtauth.Mint("HS256", "", testSecret, jwtauth.Claims{User: "bench", Rooms: []string{"chat:bench"}}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	h.n.cfg.MaxConnsPerUser = 0
	var clients []*client
	for i := 0; i < conns; i++ {
		cl, _, err := h.tryDial("", nil)
		if err != nil {
			b.Fatal(err)
		}
		cl.t = b
		clients = append(clients, cl)
		cl.send(connectCmd(tok))
		if m, err := cl.read(); err != nil || m.GetConnect() == nil {
			b.Fatalf("connect: %v %v", m, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, r, err := cl.ws.NextReader()
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, r)
				received.Add(1)
			}
		}()
	}
	defer func() {
		for _, cl := range clients {
			cl.close()
		}
		wg.Wait()
	}()
	msg := fabric.Message{Room: "chat:bench", Pos: fabric.Position{Epoch: "e1"},
		Payload: fabric.Payload{Data: []byte(`{"text":"sixty-four bytes of json payload, give or take a few"}`)},
		Time:    time.Now()}
	start := received.Load()
	b.ResetTimer()
	began := time.Now()
	for i := 0; i < b.N; i++ {
		m := msg
		m.Pos.Offset = uint64(i + 1)
		h.n.Deliver(&m)
		// Stay within the send queues: let the readers catch up now and then.
		if i%256 == 255 {
			for received.Load()-start < int64(i-1024)*conns {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	for received.Load()-start < int64(b.N)*conns {
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(time.Since(began).Nanoseconds())/float64(b.N*conns), "ns/delivery")
}
