package main

import (
	"github.com/HdrHistogram/hdrhistogram-go"
)

// stepResult is one measured step of a scenario, for one target. Fields that do not
// apply to a scenario stay zero and are left out of the JSON.
type stepResult struct {
	Target   string `json:"target"`
	Scenario string `json:"scenario"`
	Step     string `json:"step"`
	Cores    int    `json:"cores"`

	Conns      int     `json:"conns_held"`            // connections actually held
	Requested  int     `json:"conns_requested"`       // connections asked for
	Rooms      int     `json:"rooms,omitempty"`       // rooms published to
	Seconds    float64 `json:"seconds"`               // measured wall time
	TargetRate float64 `json:"target_rate,omitempty"` // scheduled publishes (or churn ops) per second

	Published     int64   `json:"published,omitempty"`
	Unsent        int64   `json:"unsent,omitempty"` // scheduled but not sent by the step's end: the publisher fell behind
	PublishErrors int64   `json:"publish_errors,omitempty"`
	PublishPerSec float64 `json:"publishes_per_sec,omitempty"`
	Expected      int64   `json:"deliveries_expected,omitempty"`
	Delivered     int64   `json:"deliveries,omitempty"`
	DeliveryRate  float64 `json:"deliveries_per_sec,omitempty"`
	Lost          int64   `json:"lost"`
	Duplicates    int64   `json:"duplicates"`
	Gaps          int64   `json:"gaps_seen,omitempty"`
	Dropped       int64   `json:"conns_dropped,omitempty"` // connections the server closed meanwhile
	// LateAfterTail counts deliveries of this step that arrived after its accounting
	// closed (the tail wait): included in Lost, but late rather than lost. Counted
	// until the scenario's connections close.
	LateAfterTail int64 `json:"late_after_tail,omitempty"`
	stepID        int64 // the step number the payloads carry

	// Latency: publish→deliver from the intended send time (fan-out, many rooms), call
	// latency (publish throughput), or connect latency (churn), in milliseconds.
	P50ms       float64      `json:"p50_ms,omitempty"`
	P99ms       float64      `json:"p99_ms,omitempty"`
	P999ms      float64      `json:"p999_ms,omitempty"`
	MaxMs       float64      `json:"max_ms,omitempty"`
	Percentiles []percentile `json:"percentiles,omitempty"`
	// SendLag is how late the publisher sent messages after their intended times
	// (fan-out, many rooms), in milliseconds: the load tool's own share of the
	// latency above (its timer and the CPU it shares with the server).
	SendLagP50ms float64 `json:"send_lag_p50_ms,omitempty"`
	SendLagP99ms float64 `json:"send_lag_p99_ms,omitempty"`

	ServerCPUCores float64 `json:"server_cpu_cores"`
	// ServerCPUPerOp is server CPU per delivery (fan-out, many rooms), per publish
	// (publish throughput) or per replaced connection (churn), in microseconds.
	ServerCPUPerOp   float64 `json:"server_cpu_us_per_op,omitempty"`
	ServerRSSBytes   int64   `json:"server_rss_bytes,omitempty"`
	ServerRSSPerConn float64 `json:"server_rss_bytes_per_conn,omitempty"`
	ToolCPUCores     float64 `json:"tool_cpu_cores"`
	Note             string  `json:"note,omitempty"`

	// Nodes is the number of server nodes of the target (clusters).
	Nodes int `json:"nodes,omitempty"`
	// ViaNonOwner is the share of publishes sent through a node that does not own the
	// room (clusters, when the owners could be listed).
	ViaNonOwner float64 `json:"publishes_via_non_owner,omitempty"`
	// Recovery details the recover scenario.
	Recovery *recoveryResult `json:"recovery,omitempty"`
}

// percentile is one point of a latency distribution.
type percentile struct {
	Q  float64 `json:"q"`
	Ms float64 `json:"ms"`
}

// plotQuantiles are the points drawn in the percentile chart.
var plotQuantiles = []float64{0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100}

// setLatency fills the latency fields from h (µs).
func (r *stepResult) setLatency(h *hdrhistogram.Histogram) {
	if h == nil || h.TotalCount() == 0 {
		return
	}
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	r.P50ms, r.P99ms, r.P999ms, r.MaxMs = ms(50), ms(99), ms(99.9), float64(h.Max())/1000
	r.Percentiles = r.Percentiles[:0]
	for _, q := range plotQuantiles {
		v := ms(q)
		if q == 100 {
			v = r.MaxMs
		}
		r.Percentiles = append(r.Percentiles, percentile{Q: q, Ms: v})
	}
}

// report is everything a run measured.
type report struct {
	Started string       `json:"started"`
	Host    hostInfo     `json:"host"`
	Steps   []stepResult `json:"steps"`
	// Compare sets each cluster step beside the same step of its single-node baseline
	// measured in the same run.
	Compare []comparison `json:"compare,omitempty"`
}

type hostInfo struct {
	Cores   int    `json:"cores"`
	LoadAvg string `json:"loadavg_at_start"`
	Go      string `json:"go"`
}
