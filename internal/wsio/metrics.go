package wsio

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the transport's Prometheus collectors: what the node cannot see from
// above, chiefly how well writes coalesce and which violations close connections.
type metrics struct {
	socketWrites prometheus.Counter
	writeBytes   prometheus.Counter
	messages     prometheus.Counter
	writeErrors  prometheus.Counter
	// blockedWrites counts writes that found the socket's buffer full and had to
	// wait under WriteTimeout: a sign of slow consumers.
	blockedWrites prometheus.Counter
	// writeBatches counts io_uring submissions; socket writes per batch shows how
	// many system calls batching saves.
	writeBatches prometheus.Counter
	violations   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		socketWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_wsio_socket_writes_total",
			Help: "Socket writes of coalesced batches; data messages per write shows how well fan-out coalesces.",
		}),
		writeBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_wsio_socket_write_bytes_total",
			Help: "Bytes handed to socket writes (frames of data and control messages).",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_wsio_messages_written_total",
			Help: "Data messages framed into batches.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_wsio_write_errors_total",
			Help: "Socket writes that failed or timed out, closing their connection.",
		}),
		blockedWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_wsio_blocked_writes_total",
			Help: "Socket writes that found the socket buffer full and waited (at most the write timeout) for the peer to read.",
		}),
		writeBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_wsio_write_batches_total",
			Help: "io_uring submissions, each carrying the socket writes a flush worker found waiting together (a fan-out's).",
		}),
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roomcast_wsio_violations_total",
			Help: "Connections the transport closed for a peer's violation, by close code.",
		}, []string{"code"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.socketWrites, m.writeBytes, m.messages, m.writeErrors, m.blockedWrites, m.writeBatches, m.violations} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) violation(code int) { m.violations.WithLabelValues(strconv.Itoa(code)).Inc() }
