package peer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	linksUp           prometheus.Gauge
	envelopesSent     prometheus.Counter
	envelopesReceived prometheus.Counter
	batchesSent       prometheus.Counter
	batchesReceived   prometheus.Counter
	batchesDropped    prometheus.Counter
	bytesSent         prometheus.Counter
	bytesReceived     prometheus.Counter
	queueDrops        prometheus.Counter
	reconnects        prometheus.Counter
	dialFailures      prometheus.Counter
	handshakeFailures *prometheus.CounterVec
	lateReplies       prometheus.Counter
	eventDrops        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "roomcast", Subsystem: "peer", Name: name, Help: help})
	}
	m := &metrics{
		linksUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "roomcast", Subsystem: "peer", Name: "links_up",
			Help: "Established peer links (inbound and outbound).",
		}),
		envelopesSent:     counter("envelopes_sent_total", "Envelopes written to peer links."),
		envelopesReceived: counter("envelopes_received_total", "Envelopes read from peer links."),
		batchesSent:       counter("batches_sent_total", "Batches (stream writes) written to peer links."),
		batchesReceived:   counter("batches_received_total", "Batches read from peer links."),
		batchesDropped:    counter("batches_dropped_total", "Batches dropped because their sender was not the link's peer."),
		bytesSent:         counter("bytes_sent_total", "Encoded envelope bytes written to peer links."),
		bytesReceived:     counter("bytes_received_total", "Encoded batch bytes read from peer links."),
		queueDrops:        counter("queue_drops_total", "Envelopes refused by a full queue or dropped with a broken link."),
		reconnects:        counter("reconnects_total", "Redial attempts after a failed dial."),
		dialFailures:      counter("dial_failures_total", "Outbound dials or handshakes that failed."),
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roomcast", Subsystem: "peer", Name: "handshake_failures_total",
			Help: "Failed handshakes, by reason (dial: as dialer; auth, mismatch, tie_break, timeout, other: as listener).",
		}, []string{"reason"}),
		lateReplies: counter("late_replies_total", "Replies that arrived after their request gave up."),
		eventDrops:  counter("event_drops_total", "Link events dropped because the Events channel was full."),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.linksUp, m.envelopesSent, m.envelopesReceived, m.batchesSent,
		m.batchesReceived, m.batchesDropped, m.bytesSent, m.bytesReceived, m.queueDrops, m.reconnects,
		m.dialFailures, m.handshakeFailures, m.lateReplies, m.eventDrops} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("peer: register metrics: %w", err)
		}
	}
	return m, nil
}
