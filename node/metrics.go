package node

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// metrics are the node's Prometheus collectors.
type metrics struct {
	conns       prometheus.Gauge
	connects    prometheus.Counter
	disconnects *prometheus.CounterVec
	msgsIn      prometheus.Counter
	msgsOut     prometheus.Counter
	bytesIn     prometheus.Counter
	bytesOut    prometheus.Counter
	slow        prometheus.Counter
	commands    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "roomcast_connections", Help: "Open WebSocket connections.",
		}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_connects_total", Help: "Connections that completed connect.",
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roomcast_disconnects_total", Help: "Closed connections by reason.",
		}, []string{"reason"}),
		msgsIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_messages_in_total", Help: "WebSocket data messages received from clients.",
		}),
		msgsOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_messages_out_total", Help: "WebSocket data messages queued to clients.",
		}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_bytes_in_total", Help: "Bytes of data messages received from clients.",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_bytes_out_total", Help: "Bytes of data messages queued to clients.",
		}),
		slow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_slow_consumer_disconnects_total", Help: "Connections closed because their send queue overflowed.",
		}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roomcast_commands_total", Help: "Client commands by command and result.",
		}, []string{"command", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.conns, m.connects, m.disconnects, m.msgsIn, m.msgsOut,
		m.bytesIn, m.bytesOut, m.slow, m.commands} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// resultLabel names a command's outcome: "ok" or the lowercase error code name.
func resultLabel(err error) string {
	if err == nil {
		return "ok"
	}
	name := pb.ErrorCode(fabric.CodeOf(err)).String()
	return strings.ToLower(strings.TrimPrefix(name, "ERROR_CODE_"))
}
