package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// runOptions are the run command's flags.
type runOptions struct {
	targets   []string
	scenarios []string
	local     bool
	bin       string
	sioDir    string
	queue     int
	nodeArgs  []string
	serverLog string

	url, control, controlToken, secret string
	sioURL                             string
	serverPIDs                         []int
	sources                            int

	jsonPath, svgPath string
	quiet             bool

	cfg scenarioConfig
}

func runCommand() *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run scenarios against one or more targets and report",
		Long: `Run scenarios (idle, fanout, rooms, churn, publish) against each target in turn
(roomcast, socketio) and print one table; --json and --svg write the results and a
percentile chart.

With --local the tool starts each server itself: "roomcast node --dev" (from
--roomcast-bin, or a roomcast binary next to this one) with load-test limits, and for
socketio redis-server plus node bench/socketio/server.js. Without --local, point it at
running servers with --url/--control/--control-token/--secret (roomcast) or
--socketio-url, and give --server-pid for server CPU and memory.`,
		Example: `  # everything on one box, both systems, short
  roomcast-bench run --local --targets roomcast,socketio --scenarios idle,fanout,rooms \
      --idle-conns 2000 --fanout-rates 100,500 --step 3s --json out.json --svg out.svg

  # a running node
  roomcast-bench run --url ws://127.0.0.1:8080/ws --control 127.0.0.1:9090 \
      --secret $ROOMCAST_JWT_SECRET --control-token $ROOMCAST_CONTROL_TOKEN \
      --server-pid $(pgrep -f 'roomcast node') --scenarios fanout`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.targets, "targets", []string{targetRoomcast}, "systems to measure, in order: roomcast, socketio")
	f.StringSliceVar(&o.scenarios, "scenarios", []string{"idle", "fanout", "rooms"}, "scenarios: idle, fanout, rooms, churn, publish")
	f.BoolVar(&o.local, "local", false, "start each server locally (roomcast node --dev; redis-server + node for socketio)")
	f.StringVar(&o.bin, "roomcast-bin", "", "roomcast binary for --local (default: next to this binary, then PATH)")
	f.StringVar(&o.sioDir, "socketio-dir", "bench/socketio", "Socket.IO adapter server directory for --local")
	f.IntVar(&o.queue, "max-queue-messages", 65536, "--local roomcast: per-connection send queue bound")
	f.StringSliceVar(&o.nodeArgs, "node-arg", nil, "--local roomcast: extra flag for roomcast node (repeatable)")
	f.StringVar(&o.serverLog, "server-log", "", "--local: file for the servers' output (default: discarded)")

	f.StringVar(&o.url, "url", "ws://127.0.0.1:8080/ws", "roomcast WebSocket URL")
	f.StringVar(&o.control, "control", "127.0.0.1:9090", "roomcast control API address")
	f.StringVar(&o.controlToken, "control-token", os.Getenv("ROOMCAST_CONTROL_TOKEN"), "control API token (env ROOMCAST_CONTROL_TOKEN)")
	f.StringVar(&o.secret, "secret", os.Getenv("ROOMCAST_JWT_SECRET"), "HS256 secret the node trusts, to mint client tokens (env ROOMCAST_JWT_SECRET)")
	f.StringVar(&o.sioURL, "socketio-url", "http://127.0.0.1:3000", "Socket.IO adapter server base URL")
	f.IntSliceVar(&o.serverPIDs, "server-pid", nil, "server process ids (summed: e.g. node and redis), for RSS and CPU from /proc")
	f.IntVar(&o.sources, "sources", 8, "spread connections over 127.0.0.1..127.0.0.N source addresses")

	f.StringVar(&o.jsonPath, "json", "", "write results as JSON to this file (- for stdout)")
	f.StringVar(&o.svgPath, "svg", "", "write the latency percentile chart to this SVG file")
	f.BoolVar(&o.quiet, "quiet", false, "no live progress on stderr")

	c := &o.cfg
	f.IntVar(&c.Workers, "workers", 2, "worker processes holding connections (each holds at most ~19,000)")
	f.IntVar(&c.Parallel, "parallel", 32, "connects in flight per worker")
	f.IntVar(&c.Payload, "payload", 64, "payload bytes")
	f.DurationVar(&c.Step, "step", 10*time.Second, "publishing time per step")
	f.DurationVar(&c.Tail, "tail", 5*time.Second, "longest wait for a step's last deliveries")
	f.DurationVar(&c.P99Limit, "p99-limit", 50*time.Millisecond, "fanout stops raising the rate once p99 passes this")
	f.IntVar(&c.IdleConns, "idle-conns", 10000, "idle: connections")
	f.DurationVar(&c.IdleSettle, "idle-settle", 3*time.Second, "idle: pause after the last connect before sampling RSS")
	f.IntVar(&c.FanMembers, "fanout-members", 1000, "fanout: room members")
	f.IntSliceVar(&c.FanRates, "fanout-rates", []int{100, 200, 500, 1000, 2000}, "fanout: publish rates to step through, messages/s")
	f.IntVar(&c.RoomsConns, "rooms-conns", 10000, "rooms: connections")
	f.IntVar(&c.RoomsCount, "rooms-count", 10000, "rooms: rooms")
	f.IntVar(&c.RoomsSize, "rooms-size", 5, "rooms: members per room")
	f.StringVar(&c.RoomsDist, "rooms-dist", "uniform", "rooms: member distribution: uniform (every connection in the same number of rooms) or random")
	f.IntSliceVar(&c.RoomsRates, "rooms-rates", []int{10000, 50000}, "rooms: publish rates to step through, publishes/s")
	f.IntVar(&c.RoomsStreams, "rooms-streams", 2, "rooms: publish streams (rooms are partitioned among them)")
	f.IntVar(&c.ChurnConns, "churn-conns", 2000, "churn: connections held")
	f.Float64Var(&c.ChurnRate, "churn-rate", 200, "churn: connections replaced per second")
	f.DurationVar(&c.ChurnDuration, "churn-duration", 10*time.Second, "churn: duration")
	f.DurationVar(&c.PubDuration, "publish-duration", 5*time.Second, "publish: duration of each mode")
	f.IntVar(&c.PubConcurrency, "publish-concurrency", 32, "publish: unary calls in flight")
	f.IntVar(&c.PubWindow, "publish-window", 1024, "publish: stream publishes in flight")
	return cmd
}

func (o *runOptions) run(ctx context.Context) error {
	scen := map[string]func(*runner, context.Context) ([]stepResult, error){
		"idle": (*runner).idle, "fanout": (*runner).fanout, "rooms": (*runner).manyRooms,
		"churn": (*runner).churn, "publish": (*runner).publishThroughput,
	}
	for _, s := range o.scenarios {
		if scen[s] == nil {
			return fmt.Errorf("unknown scenario %q (idle, fanout, rooms, churn, publish)", s)
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	rep := report{Started: time.Now().Format(time.RFC3339),
		Host: hostInfo{Cores: runtime.NumCPU(), LoadAvg: strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "), Go: runtime.Version()}}
	var progress io.Writer = os.Stderr
	if o.quiet {
		progress = nil
	}
	var runErr error
	for _, t := range o.targets {
		steps, err := o.runTarget(ctx, t, progress, scen)
		rep.Steps = append(rep.Steps, steps...)
		if err != nil {
			runErr = fmt.Errorf("%s: %w", t, err)
			break
		}
	}
	if err := o.write(rep); err != nil {
		return err
	}
	return runErr
}

func (o *runOptions) runTarget(ctx context.Context, target string, progress io.Writer,
	scen map[string]func(*runner, context.Context) ([]stepResult, error)) ([]stepResult, error) {
	r := &runner{cfg: o.cfg, target: target, progress: progress, serverPIDs: o.serverPIDs}
	switch target {
	case targetRoomcast:
		r.dial = dialSpec{Target: target, URL: o.url, Secret: o.secret}
		r.pub = pubSpec{Target: target, Control: o.control, Token: o.controlToken}
	case targetSocketIO:
		r.dial = dialSpec{Target: target, URL: o.sioURL}
		r.pub = pubSpec{Target: target, URL: o.sioURL}
	default:
		return nil, fmt.Errorf("unknown target %q (roomcast, socketio)", target)
	}
	if o.local {
		logf, err := o.openLog()
		if err != nil {
			return nil, err
		}
		defer logf.Close()
		var srv *localServer
		if target == targetRoomcast {
			bin, err := findRoomcast(o.bin)
			if err != nil {
				return nil, err
			}
			srv, err = startLocalRoomcast(ctx, bin, o.queue, o.nodeArgs, logf)
			if err != nil {
				return nil, err
			}
		} else {
			srv, err = startLocalSocketIO(ctx, o.sioDir, logf)
			if err != nil {
				return nil, err
			}
		}
		defer srv.stop()
		r.dial, r.pub, r.serverPIDs = srv.dial, srv.pub, srv.pids
	}
	if target == targetRoomcast && r.dial.Secret == "" {
		return nil, fmt.Errorf("--secret (or ROOMCAST_JWT_SECRET) is required to mint client tokens")
	}
	r.dial.Sources = o.sources
	p, err := startPool(o.cfg.Workers)
	if err != nil {
		return nil, err
	}
	defer p.close()
	r.pool = p
	var out []stepResult
	for _, s := range o.scenarios {
		if progress != nil {
			fmt.Fprintf(progress, "[%s] scenario %s\n", target, s)
		}
		steps, err := scen[s](r, ctx)
		out = append(out, steps...)
		if err != nil {
			return out, fmt.Errorf("%s: %w", s, err)
		}
	}
	return out, nil
}

func (o *runOptions) openLog() (*os.File, error) {
	if o.serverLog == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	return os.OpenFile(o.serverLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}

func (o *runOptions) write(rep report) error {
	table := io.Writer(os.Stdout)
	if o.jsonPath == "-" {
		table = os.Stderr // stdout carries the JSON
	}
	writeTable(table, rep)
	if o.jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if o.jsonPath == "-" {
			_, err = os.Stdout.Write(b)
		} else {
			err = os.WriteFile(o.jsonPath, b, 0o644)
		}
		if err != nil {
			return err
		}
	}
	if o.svgPath != "" {
		f, err := os.Create(o.svgPath)
		if err != nil {
			return err
		}
		if err := writeSVG(f, rep); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	return nil
}
