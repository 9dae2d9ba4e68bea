package mesh

import (
	"context"
	"log/slog"
	"testing"

	"github.com/roomcast/roomcast/fabric"
)

// nopEdge discards deliveries so the benchmark measures the owner's work only.
type nopEdge struct{ noEdge }

func BenchmarkPublishWithHistory(b *testing.B) {
	ns, err := fabric.NewNamespaces([]fabric.Namespace{{Name: "chat", HistorySize: 100}})
	if err != nil {
		b.Fatal(err)
	}
	m, err := New(Config{Node: "n1", Namespaces: ns, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	m.Attach(nopEdge{})
	pub := fabric.Publication{Room: "chat:bench", Payload: fabric.Payload{Data: []byte(`{"text":"hello, world"}`)}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Publish(ctx, pub); err != nil {
			b.Fatal(err)
		}
	}
}
