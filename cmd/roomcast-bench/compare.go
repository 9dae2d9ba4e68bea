package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// placePublishers prepares the publishing steps of a scenario on a cluster target: it
// learns which node owns each room with the prefix (for the share of publishes sent
// through a non-owner) and, when the scenario publishes to only one room, points the
// first publish stream at a node that does not own it, so every publish crosses a peer
// link. Failing to list the owners only loses that share; the step still runs.
func (r *runner) placePublishers(ctx context.Context, prefix string, single []string) {
	r.pubBase, r.owners = 0, nil
	if protocolOf(r.target) != targetRoomcast || len(r.pub.Controls) < 2 {
		return
	}
	owners, err := roomOwners(ctx, r.pub, prefix)
	if err != nil && r.progress != nil {
		fmt.Fprintf(r.progress, "[%s] cannot list room owners: %v\n", r.target, err)
	}
	r.owners = owners
	if len(single) == 1 {
		if o, ok := owners[single[0]]; ok {
			r.pubBase = (o + 1) % len(r.pub.Controls)
			if r.cfg.FanViaOwner {
				r.pubBase = o
			}
		}
	}
}

// startProfiles fetches a CPU profile of every node the tool knows the admin address
// of, covering d, into pprofDir (when set) as <label>-<node>.pprof. The returned stop
// waits for the fetches (it may be called more than once) and returns their errors.
func (r *runner) startProfiles(ctx context.Context, label string, d time.Duration) (stop func() error) {
	if r.pprofDir == "" {
		return func() error { return nil }
	}
	secs := max(int(d.Seconds()), 1)
	var wg sync.WaitGroup
	errs := make([]error, len(r.nodes))
	for i, n := range r.nodes {
		if n.admin == "" {
			continue
		}
		path := filepath.Join(r.pprofDir, fmt.Sprintf("%s-%s.pprof", sanitize(label), sanitize(n.name)))
		wg.Go(func() { errs[i] = fetchProfile(ctx, n.admin, secs, path) })
	}
	return sync.OnceValue(func() error {
		wg.Wait()
		return errors.Join(errs...)
	})
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		}
		return '_'
	}, s)
}

func fetchProfile(ctx context.Context, admin string, secs int, path string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: pprof: %s", admin, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// comparison sets one step of a cluster target beside the same step (scenario and
// step name: same rate, same members) of its single-node baseline from the same run.
type comparison struct {
	Scenario string `json:"scenario"`
	Step     string `json:"step"`
	Baseline string `json:"baseline"` // the single-node target
	Cluster  string `json:"cluster"`  // the cluster target
	Nodes    int    `json:"nodes,omitempty"`

	BaseP50ms  float64 `json:"base_p50_ms"`
	BaseP99ms  float64 `json:"base_p99_ms"`
	BaseP999ms float64 `json:"base_p999_ms"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	P999ms     float64 `json:"p999_ms"`
	// P99DeltaMs is the cluster's p99 minus the baseline's (the target: at
	// most 1 ms for roomcast).
	P99DeltaMs  float64 `json:"p99_delta_ms"`
	ViaNonOwner float64 `json:"publishes_via_non_owner,omitempty"`
	BaseLost    int64   `json:"base_lost"`
	Lost        int64   `json:"lost"`
}

// compareSteps pairs every latency-measuring step of a cluster target with the step of
// the same scenario and name of its baseline target; steps without a counterpart are
// left out.
func compareSteps(steps []stepResult) []comparison {
	type key struct{ target, scenario, step string }
	byKey := map[key]stepResult{}
	for _, s := range steps {
		byKey[key{s.Target, s.Scenario, s.Step}] = s
	}
	var out []comparison
	for _, s := range steps {
		base := baselineOf(s.Target)
		if base == "" || s.Delivered == 0 {
			continue
		}
		b, ok := byKey[key{base, s.Scenario, s.Step}]
		if !ok || b.Delivered == 0 {
			continue
		}
		out = append(out, comparison{
			Scenario: s.Scenario, Step: s.Step, Baseline: base, Cluster: s.Target, Nodes: s.Nodes,
			BaseP50ms: b.P50ms, BaseP99ms: b.P99ms, BaseP999ms: b.P999ms,
			P50ms: s.P50ms, P99ms: s.P99ms, P999ms: s.P999ms,
			P99DeltaMs: s.P99ms - b.P99ms, ViaNonOwner: s.ViaNonOwner,
			BaseLost: b.Lost, Lost: s.Lost,
		})
	}
	return out
}

// writeComparison prints the comparisons as a table.
func writeComparison(w io.Writer, cs []comparison) {
	if len(cs) == 0 {
		return
	}
	fmt.Fprintln(w, "one node vs cluster, same run (publish→deliver ms):")
	fmt.Fprintf(w, "%-10s %-14s %-20s %8s %8s %8s   %8s %8s %8s %9s %8s\n",
		"scenario", "step", "baseline → cluster", "p50", "p99", "p99.9", "p50", "p99", "p99.9", "Δp99", "nonOwner")
	for _, c := range cs {
		via := "-"
		if c.ViaNonOwner > 0 {
			via = fmt.Sprintf("%.0f%%", 100*c.ViaNonOwner)
		}
		fmt.Fprintf(w, "%-10s %-14s %-20s %8.2f %8.2f %8.2f   %8.2f %8.2f %8.2f %+9.2f %8s\n",
			c.Scenario, c.Step, c.Baseline+" → "+c.Cluster, c.BaseP50ms, c.BaseP99ms, c.BaseP999ms,
			c.P50ms, c.P99ms, c.P999ms, c.P99DeltaMs, via)
	}
}
