package peer

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

// BenchmarkSend measures envelopes per second over one link: a sender enqueues small
// Deliver envelopes (waiting for room when the queue is full) and the receiver counts
// them; the clock stops when the last one has been handled.
func BenchmarkSend(b *testing.B) {
	dir := newDirectory()
	a := startNode(b, dir, "a", 1, nil)
	r := startNode(b, dir, "b", 1, nil)
	var got atomic.Int64
	done := make(chan struct{})
	want := int64(b.N)
	r.handle = func(*Peer, *meshv1.Envelope) {
		if got.Add(1) == want {
			close(done)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, err := a.links.Link(ctx, r.id)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if err := p.SendWait(ctx, seqEnv(int64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("received %d of %d", got.Load(), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "envelopes/s")
	b.ReportMetric(val(a.links.m.batchesSent)/val(a.links.m.envelopesSent), "batches/envelope")
}
