package main

import (
	"fmt"
	"html"
	"io"
	"math"
	"sort"
	"strings"
)

// tableHeader and tableRow print results as a fixed-width table.
func tableHeader() string {
	return fmt.Sprintf("%-9s %-10s %-14s %7s %9s %11s %8s %8s %8s %8s %7s %7s %5s %6s %8s %9s %6s",
		"target", "scenario", "step", "conns", "pub/s", "deliv/s", "p50ms", "p99ms", "p99.9ms", "maxms", "lag99",
		"lost", "dup", "srvCPU", "srvµs/op", "srvKB/conn", "tool")
}

func tableRow(r stepResult) string {
	kb := "-"
	if r.ServerRSSPerConn != 0 {
		kb = fmt.Sprintf("%.2f", r.ServerRSSPerConn/1000)
	}
	return fmt.Sprintf("%-9s %-10s %-14s %7d %9.0f %11.0f %8.2f %8.2f %8.2f %8.2f %7.2f %7d %5d %6.2f %8.2f %9s %6.2f",
		r.Target, r.Scenario, r.Step, r.Conns, r.PublishPerSec, r.DeliveryRate, r.P50ms, r.P99ms, r.P999ms, r.MaxMs, r.SendLagP99ms,
		r.Lost, r.Duplicates, r.ServerCPUCores, r.ServerCPUPerOp, kb, r.ToolCPUCores)
}

func writeTable(w io.Writer, rep report) {
	fmt.Fprintf(w, "roomcast-bench %s on %d cores (load at start %s)\n", rep.Started, rep.Host.Cores, rep.Host.LoadAvg)
	fmt.Fprintln(w, tableHeader())
	for _, r := range rep.Steps {
		fmt.Fprintln(w, tableRow(r))
	}
	writeComparison(w, rep.Compare)
	var notes []string
	for _, r := range rep.Steps {
		if r.Note != "" {
			notes = append(notes, fmt.Sprintf("  %s %s %s: %s", r.Target, r.Scenario, r.Step, r.Note))
		}
		if r.Unsent > 0 || r.PublishErrors > 0 || r.Dropped > 0 {
			notes = append(notes, fmt.Sprintf("  %s %s %s: unsent %d, publish errors %d, conns dropped by server %d",
				r.Target, r.Scenario, r.Step, r.Unsent, r.PublishErrors, r.Dropped))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "notes:")
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
	fmt.Fprintln(w, "srvCPU/tool: cores busy; srvµs/op: server CPU per delivery (fanout, many-rooms), per publish (publish), per replaced connection (churn)")
	fmt.Fprintln(w, "lag99: p99 of how late the tool's publisher sent after the intended time (part of the latency; the tool's own timer and CPU)")
}

// writeSVG draws a percentile chart per scenario with latency (a log axis in ms)
// against the percentile (axis spaced by -log10(1-q), so 90, 99, 99.9 are equidistant);
// one line per step and target.
func writeSVG(w io.Writer, rep report) error {
	byScen := map[string][]stepResult{}
	var order []string
	for _, r := range rep.Steps {
		if len(r.Percentiles) == 0 {
			continue
		}
		if _, ok := byScen[r.Scenario]; !ok {
			order = append(order, r.Scenario)
		}
		byScen[r.Scenario] = append(byScen[r.Scenario], r)
	}
	const pw, ph, ml, mr, mt, mb = 760.0, 320.0, 70.0, 230.0, 40.0, 50.0
	height := float64(max(len(order), 1)) * (ph + mt + mb)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", pw+ml+mr, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	if len(order) == 0 {
		fmt.Fprintf(&b, `<text x="20" y="30">no latency data</text>`+"\n")
	}
	xOf := func(q float64) float64 { // q in percent
		const maxNines = 5.0 // 99.999
		n := 0.0
		if q > 0 {
			n = -math.Log10(math.Max(1-q/100, 1e-5))
		}
		return ml + pw*n/maxNines
	}
	palette := []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}
	for si, scen := range order {
		steps := byScen[scen]
		top := float64(si)*(ph+mt+mb) + mt
		lo, hi := math.Inf(1), 0.0
		for _, s := range steps {
			for _, p := range s.Percentiles {
				v := math.Max(p.Ms, 0.01)
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		lo = math.Pow(10, math.Floor(math.Log10(lo)))
		hi = math.Pow(10, math.Ceil(math.Log10(hi)))
		if hi <= lo {
			hi = lo * 10
		}
		yOf := func(ms float64) float64 {
			v := math.Max(ms, lo)
			return top + ph - ph*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
		}
		what := "publish→deliver latency"
		switch scen {
		case "recover":
			what = "time from the kill until every room is re-joined"
		case "churn":
			what = "connect + join latency"
		case "publish":
			what = "publish call latency"
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="15" font-weight="bold">%s: %s by percentile</text>`+"\n", ml, top-14, html.EscapeString(scen), what)
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", ml, top, pw, ph)
		for d := lo; d <= hi*1.001; d *= 10 {
			y := yOf(d)
			fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%s ms</text>`+"\n",
				ml, ml+pw, y, y, ml-6, y+4, trimFloat(d))
		}
		for _, q := range []float64{0, 90, 99, 99.9, 99.99, 99.999} {
			x := xOf(q)
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#ddd"/><text x="%.1f" y="%.0f" text-anchor="middle">%s%%</text>`+"\n",
				x, x, top, top+ph, x, top+ph+18, trimFloat(q))
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">percentile</text>`+"\n", ml+pw/2, top+ph+38)
		sort.SliceStable(steps, func(i, j int) bool { return steps[i].Target < steps[j].Target })
		for k, s := range steps {
			color := palette[k%len(palette)]
			dash := ""
			if protocolOf(s.Target) != targetRoomcast {
				dash = ` stroke-dasharray="6 4"`
			}
			var pts []string
			for _, p := range s.Percentiles {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(p.Q), yOf(p.Ms)))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash, strings.Join(pts, " "))
			ly := top + 10 + float64(k)*18
			fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="%s" stroke-width="2"%s/><text x="%.0f" y="%.0f">%s %s (p99 %.2f ms)</text>`+"\n",
				ml+pw+10, ml+pw+34, ly, ly, color, dash, ml+pw+40, ly+4, html.EscapeString(s.Target), html.EscapeString(s.Step), s.P99ms)
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func trimFloat(f float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", f), "0"), ".")
}
