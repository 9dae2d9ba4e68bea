package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
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
	nodes                              int      // --local cluster size
	nodeProcs                          int      // --local cluster: GOMAXPROCS per node (-1: cores ÷ nodes)
	clusterURLs, clusterControls       []string // a running cluster
	sio2URLs                           []string // running Socket.IO nodes sharing Redis
	pprofDir                           string
	serverPIDs                         []int
	sources                            int
	rxBatchWait                        time.Duration

	jsonPath, svgPath string
	quiet             bool

	cfg scenarioConfig
}

func runCommand() *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run scenarios against one or more targets and report",
		Long: `Run scenarios (idle, fanout, rooms, churn, publish, recover) against each target
in turn (roomcast: one node; cluster: a roomcast cluster; socketio: one Socket.IO node
with the Redis adapter; socketio2: two of them sharing Redis) and print one table;
--json and --svg write the results and a percentile chart. A cluster target is also
compared with its single-node baseline measured in the same run (same scenarios,
rates and members): p50/p99/p99.9 side by side and the p99 difference.

Connections spread over a cluster's nodes round-robin; publish streams go through the
nodes round-robin too (fanout publishes through a node that does not own the room), so
most publishes cross a peer link; the result says what share did.

recover (cluster with --local only; run last because it kills a node): Go SDK clients
(reconnect and recovery on) spread over the nodes join history rooms while a publisher
runs; one node is killed with SIGKILL; reported: time from the kill until every client
of that node is connected to another node and has re-joined all its rooms (recovered,
or told recovered=false), and messages lost or duplicated.

With --local the tool starts each server itself: "roomcast node --dev" (from
--roomcast-bin, or a roomcast binary next to this one) with load-test limits, and for
socketio redis-server plus node bench/socketio/server.js. Without --local, point it at
running servers with --url/--control/--control-token/--secret (roomcast) or
--socketio-url, and give --server-pid for server CPU and memory.`,
		Example: `  # everything on one box, both systems, short
  roomcast-bench run --local --targets roomcast,socketio --scenarios idle,fanout,rooms \
      --idle-conns 2000 --fanout-rates 100,500 --step 3s --json out.json --svg out.svg

  # one node versus a local 3-node cluster, same run; then kill a node
  roomcast-bench run --local --targets roomcast,cluster --scenarios fanout,rooms,recover \
      --fanout-rates 100 --rooms-rates 10000 --json out.json --svg out.svg

  # a running node
  roomcast-bench run --url ws://127.0.0.1:8080/ws --control 127.0.0.1:9090 \
      --secret $ROOMCAST_JWT_SECRET --control-token $ROOMCAST_CONTROL_TOKEN \
      --server-pid $(pgrep -f 'roomcast node') --scenarios fanout`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.targets, "targets", []string{targetRoomcast}, "systems to measure, in order: roomcast, cluster, socketio, socketio2")
	f.StringSliceVar(&o.scenarios, "scenarios", []string{"idle", "fanout", "rooms"}, "scenarios: idle, fanout, rooms, churn, publish, recover")
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
	f.IntVar(&o.nodes, "nodes", 3, "--local cluster: roomcast nodes to start")
	f.IntVar(&o.nodeProcs, "node-procs", -1, "--local cluster: GOMAXPROCS of each node; -1: the cores divided among the nodes (at least 1), as a per-node container CPU limit would give; 0: Go's default (every node schedules on every core)")
	f.StringSliceVar(&o.clusterURLs, "cluster-url", nil, "a running cluster: every node's WebSocket URL")
	f.StringSliceVar(&o.clusterControls, "cluster-control", nil, "a running cluster: every node's control API address, in the same order")
	f.StringSliceVar(&o.sio2URLs, "socketio2-url", nil, "running Socket.IO adapter servers sharing one Redis (target socketio2)")
	f.StringVar(&o.pprofDir, "pprof-dir", "", "roomcast targets with --local: save a CPU profile of every node for every publishing step here")
	f.IntSliceVar(&o.serverPIDs, "server-pid", nil, "server process ids (summed: e.g. node and redis), for RSS and CPU from /proc")
	f.IntVar(&o.sources, "sources", 8, "spread connections over 127.0.0.1..127.0.0.N source addresses")
	f.DurationVar(&o.rxBatchWait, "rx-batch-wait", 0, "workers' receive loops: after a wake-up with few ready sockets, wait this long before polling\n"+
		"again (0 = off, at most 1ms), so a fan-out sweep is read in fewer, larger batches (less tool CPU).\n"+
		"Receive times are taken when the bytes are read, so the wait can only add to the latencies\n"+
		"reported (by up to this much), never hide any")

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
	f.BoolVar(&c.FanViaOwner, "fanout-via-owner", false, "fanout on a cluster: publish through the room's owner (default: through another node)")
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
	f.IntVar(&c.RecClients, "recover-clients", 1500, "recover: Go SDK clients, spread over the nodes")
	f.IntVar(&c.RecRooms, "recover-rooms", 300, "recover: history rooms (feed:*, 1,000 messages retained)")
	f.IntVar(&c.RecJoins, "recover-joins", 3, "recover: rooms each client joins")
	f.Float64Var(&c.RecRate, "recover-rate", 1000, "recover: publishes per second while the node dies")
	f.DurationVar(&c.RecDuration, "recover-duration", 12*time.Second, "recover: publishing time")
	f.DurationVar(&c.RecKillAfter, "recover-kill-after", 3*time.Second, "recover: kill the node this long after publishing starts")
	f.DurationVar(&c.RecTimeout, "recover-timeout", 60*time.Second, "recover: longest wait for every client of the killed node to recover")
	f.IntVar(&c.RecKill, "recover-kill", -1, "recover: index of the node to kill (default: the last; never one a publish stream uses)")
	return cmd
}

func (o *runOptions) run(ctx context.Context) error {
	scen := map[string]func(*runner, context.Context) ([]stepResult, error){
		"idle": (*runner).idle, "fanout": (*runner).fanout, "rooms": (*runner).manyRooms,
		"churn": (*runner).churn, "publish": (*runner).publishThroughput, "recover": (*runner).recover,
	}
	if err := o.validate(scen); err != nil {
		return err
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
	rep.Compare = compareSteps(rep.Steps)
	if err := o.write(rep); err != nil {
		return err
	}
	return runErr
}

func (o *runOptions) runTarget(ctx context.Context, target string, progress io.Writer,
	scen map[string]func(*runner, context.Context) ([]stepResult, error)) ([]stepResult, error) {
	r := &runner{cfg: o.cfg, target: target, progress: progress, serverPIDs: o.serverPIDs, pprofDir: o.pprofDir}
	switch target {
	case targetRoomcast:
		r.dial = dialSpec{Target: targetRoomcast, URL: o.url, Secret: o.secret}
		r.pub = pubSpec{Target: targetRoomcast, Control: o.control, Token: o.controlToken}
	case targetCluster:
		r.dial = dialSpec{Target: targetRoomcast, URLs: o.clusterURLs, Secret: o.secret}
		r.pub = pubSpec{Target: targetRoomcast, Controls: o.clusterControls, Token: o.controlToken}
		for k, u := range o.clusterURLs {
			r.nodes = append(r.nodes, clusterNode{name: fmt.Sprintf("node%d", k), url: u, control: o.clusterControls[k]})
		}
	case targetSocketIO:
		r.dial = dialSpec{Target: targetSocketIO, URL: o.sioURL}
		r.pub = pubSpec{Target: targetSocketIO, URL: o.sioURL}
	case targetSocketIO2:
		r.dial = dialSpec{Target: targetSocketIO, URLs: o.sio2URLs}
		r.pub = pubSpec{Target: targetSocketIO, URLs: o.sio2URLs}
	}
	if o.local {
		logf, err := o.openLog()
		if err != nil {
			return nil, err
		}
		defer logf.Close()
		var srv *localServer
		switch target {
		case targetRoomcast, targetCluster:
			bin, err := findRoomcast(o.bin)
			if err != nil {
				return nil, err
			}
			if target == targetRoomcast {
				srv, err = startLocalRoomcast(ctx, bin, o.queue, o.nodeArgs, logf)
			} else {
				srv, err = startLocalCluster(ctx, bin, o.nodes, nodeProcs(o.nodeProcs, o.nodes), o.queue, o.nodeArgs, logf)
			}
			if err != nil {
				return nil, err
			}
		default:
			nodes := 1
			if target == targetSocketIO2 {
				nodes = 2
			}
			srv, err = startLocalSocketIO(ctx, o.sioDir, nodes, logf)
			if err != nil {
				return nil, err
			}
		}
		defer srv.stop()
		r.dial, r.pub, r.serverPIDs, r.nodes = srv.dial, srv.pub, srv.pids, srv.nodes
	}
	if protocolOf(target) == targetRoomcast && r.dial.Secret == "" {
		return nil, fmt.Errorf("--secret (or ROOMCAST_JWT_SECRET) is required to mint client tokens")
	}
	r.dial.Sources = o.sources
	r.dial.RxBatchWait = o.rxBatchWait
	p, err := startPool(o.cfg.Workers)
	if err != nil {
		return nil, err
	}
	defer p.close()
	r.pool = p
	var out []stepResult
	for _, s := range orderScenarios(o.scenarios) {
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

// validate checks the targets, scenarios and what each target needs.
func (o *runOptions) validate(scen map[string]func(*runner, context.Context) ([]stepResult, error)) error {
	for _, s := range o.scenarios {
		if scen[s] == nil {
			return fmt.Errorf("unknown scenario %q (idle, fanout, rooms, churn, publish, recover)", s)
		}
	}
	if o.rxBatchWait < 0 || o.rxBatchWait > rxMaxBatchWait {
		return fmt.Errorf("--rx-batch-wait %v: want 0 (off) to %v", o.rxBatchWait, rxMaxBatchWait)
	}
	if len(o.targets) == 0 {
		return fmt.Errorf("no target (--targets %s)", strings.Join(targetNames, ","))
	}
	for _, t := range o.targets {
		switch t {
		case targetRoomcast, targetSocketIO:
		case targetCluster:
			if o.local {
				if o.nodes < 2 {
					return fmt.Errorf("--nodes %d: a cluster needs at least 2", o.nodes)
				}
				break
			}
			if len(o.clusterURLs) < 2 || len(o.clusterURLs) != len(o.clusterControls) {
				return fmt.Errorf("target cluster without --local needs --cluster-url and --cluster-control for every node (at least 2, same order)")
			}
			if slices.Contains(o.scenarios, "recover") {
				return fmt.Errorf("scenario recover kills a node: it needs --local")
			}
		case targetSocketIO2:
			if !o.local && len(o.sio2URLs) < 2 {
				return fmt.Errorf("target socketio2 without --local needs --socketio2-url for at least 2 servers")
			}
		default:
			return fmt.Errorf("unknown target %q (%s)", t, strings.Join(targetNames, ", "))
		}
	}
	return nil
}

// orderScenarios returns the scenarios in the given order, except that recover, which
// kills a node, runs last.
func orderScenarios(in []string) []string {
	var out []string
	last := false
	for _, s := range in {
		if s == "recover" {
			last = true
			continue
		}
		out = append(out, s)
	}
	if last {
		out = append(out, "recover")
	}
	return out
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
