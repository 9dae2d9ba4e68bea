package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

type fanoutStep struct {
	Rate             int     `json:"publish_rate"`
	Published        int64   `json:"published"`
	Deliveries       int64   `json:"deliveries"`
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	P50ms            float64 `json:"p50_ms"`
	P99ms            float64 `json:"p99_ms"`
	P999ms           float64 `json:"p999_ms"`
	MaxMs            float64 `json:"max_ms"`
	Lost             int64   `json:"lost"`
	Duplicates       int64   `json:"duplicates"`
	ServerCPUPerDel  float64 `json:"server_cpu_us_per_delivery"`
	ServerCPUCores   float64 `json:"server_cpu_cores"`
	BenchCPUCores    float64 `json:"bench_cpu_cores"`
}

type fanoutResult struct {
	Scenario string       `json:"scenario"`
	Cores    int          `json:"cores"`
	Members  int          `json:"members"`
	Payload  int          `json:"payload_bytes"`
	Steps    []fanoutStep `json:"steps"`
}

// receiver is one room member: it records latency and sequence per message.
type receiver struct {
	mu    sync.Mutex
	hist  *hdrhistogram.Histogram
	last  int64
	count int64
	lost  int64
	dups  int64
}

func fanoutCommand(o *common) *cobra.Command {
	var members, payload int
	var rates []int
	var duration time.Duration
	var room string
	cmd := &cobra.Command{
		Use:     "fanout",
		Short:   "One room of N members; publish at rising open-loop rates; report latency and cost",
		Example: `  roomcast-bench fanout --members 1000 --rates 100,500,1000 --duration 10s --server-pid $PID`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.secret == "" || o.controlToken == "" {
				return fmt.Errorf("--secret and --control-token are required (or ROOMCAST_JWT_SECRET / ROOMCAST_CONTROL_TOKEN)")
			}
			return runFanout(cmd.Context(), o, room, members, payload, rates, duration)
		},
	}
	cmd.Flags().IntVar(&members, "members", 1000, "room members (connections)")
	cmd.Flags().IntVar(&payload, "payload", 64, "payload size in bytes")
	cmd.Flags().IntSliceVar(&rates, "rates", []int{100, 500, 1000}, "publish rates to step through, messages/s")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Second, "time per rate step")
	cmd.Flags().StringVar(&room, "room", "bench-fanout", "room (its namespace must exist)")
	return cmd
}

func runFanout(ctx context.Context, o *common, room string, members, payload int, rates []int, duration time.Duration) error {
	var recvs []*receiver
	var conns []*websocket.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i := range members {
		c, err := o.connectClient(ctx, i, fmt.Sprintf("fan-%d", i), room)
		if err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
		r := &receiver{hist: hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)}
		recvs = append(recvs, r)
		conns = append(conns, c)
		go r.read(c)
	}
	cc, err := grpc.NewClient(o.control, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	res := fanoutResult{Scenario: "fanout", Cores: runtime.NumCPU(), Members: members, Payload: payload}
	var seq int64
	for _, rate := range rates {
		step, err := fanoutStepRun(ctx, o, cc, room, rate, payload, duration, recvs, &seq)
		if err != nil {
			return err
		}
		res.Steps = append(res.Steps, step)
		if !o.jsonOut {
			fmt.Printf("rate %6d msg/s → %9.0f deliveries/s  p50 %7.2fms  p99 %7.2fms  p99.9 %7.2fms  max %7.2fms  lost %d dup %d  server %.2fµs/delivery (%.2f cores)  bench %.2f cores\n",
				step.Rate, step.DeliveriesPerSec, step.P50ms, step.P99ms, step.P999ms, step.MaxMs, step.Lost, step.Duplicates,
				step.ServerCPUPerDel, step.ServerCPUCores, step.BenchCPUCores)
		}
	}
	o.print("", res)
	return nil
}

func fanoutStepRun(ctx context.Context, o *common, cc *grpc.ClientConn, room string, rate, payload int, d time.Duration, recvs []*receiver, seq *int64) (fanoutStep, error) {
	for _, r := range recvs {
		r.mu.Lock()
		r.hist.Reset()
		r.count, r.lost, r.dups = 0, 0, 0
		r.mu.Unlock()
	}
	sctx, cancel := context.WithCancel(withToken(ctx, o.controlToken))
	defer cancel()
	stream, err := pb.NewControlServiceClient(cc).PublishStream(sctx)
	if err != nil {
		return fanoutStep{}, err
	}
	var acked atomic.Int64
	ackErr := make(chan error, 1)
	go func() {
		for {
			a, err := stream.Recv()
			if err != nil {
				ackErr <- nil
				return
			}
			if a.GetError() != nil {
				ackErr <- fmt.Errorf("publish failed: %v", a.GetError())
				return
			}
			acked.Add(1)
		}
	}()
	srv0, _ := sampleProc(o.serverPID)
	self0 := selfCPU()
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	total := int(d / interval)
	pad := strings.Repeat("x", max(payload-40, 1))
	for i := range total {
		intended := start.Add(time.Duration(i) * interval)
		if w := time.Until(intended); w > 0 {
			time.Sleep(w)
		}
		*seq++
		body := `{"t":` + strconv.FormatInt(intended.UnixNano(), 10) + `,"s":` + strconv.FormatInt(*seq, 10) + `,"p":"` + pad + `"}`
		if err := stream.Send(&pb.PublishStreamRequest{RequestId: uint64(*seq), Room: room,
			Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: body}}}); err != nil {
			return fanoutStep{}, err
		}
	}
	_ = stream.CloseSend()
	// Wait (bounded) for the tail of the deliveries.
	want := int64(total) * int64(len(recvs))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if delivered(recvs) >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	srv1, _ := sampleProc(o.serverPID)
	self1 := selfCPU()
	select {
	case err := <-ackErr:
		if err != nil {
			return fanoutStep{}, err
		}
	default:
	}
	merged := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
	step := fanoutStep{Rate: rate, Published: int64(total)}
	for _, r := range recvs {
		r.mu.Lock()
		merged.Merge(r.hist)
		step.Deliveries += r.count
		step.Lost += r.lost
		step.Duplicates += r.dups
		r.mu.Unlock()
	}
	step.Lost += want - step.Deliveries - step.Lost // never arrived by the deadline
	if step.Lost < 0 {
		step.Lost = 0
	}
	ms := func(q float64) float64 { return float64(merged.ValueAtQuantile(q)) / 1000 }
	step.DeliveriesPerSec = float64(step.Deliveries) / d.Seconds()
	step.P50ms, step.P99ms, step.P999ms, step.MaxMs = ms(50), ms(99), ms(99.9), float64(merged.Max())/1000
	if step.Deliveries > 0 && o.serverPID != 0 {
		step.ServerCPUPerDel = float64((srv1.cpu - srv0.cpu).Microseconds()) / float64(step.Deliveries)
		step.ServerCPUCores = (srv1.cpu - srv0.cpu).Seconds() / elapsed.Seconds()
	}
	step.BenchCPUCores = (self1 - self0).Seconds() / elapsed.Seconds()
	return step, nil
}

func delivered(recvs []*receiver) int64 {
	var n int64
	for _, r := range recvs {
		r.mu.Lock()
		n += r.count
		r.mu.Unlock()
	}
	return n
}

var (
	tKey = []byte(`"t":`)
	sKey = []byte(`"s":`)
)

func (r *receiver) read(c *websocket.Conn) {
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		if bytes.Contains(data, []byte(`"ping"`)) && !bytes.Contains(data, tKey) {
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"pong":{}}`))
			continue
		}
		t, ok1 := intAfter(data, tKey)
		s, ok2 := intAfter(data, sKey)
		if !ok1 || !ok2 {
			continue
		}
		lat := time.Since(time.Unix(0, t))
		r.mu.Lock()
		_ = r.hist.RecordValue(max(lat.Microseconds(), 1))
		r.count++
		switch {
		case s <= r.last:
			r.dups++
			r.count--
		case r.last != 0 && s > r.last+1:
			r.lost += s - r.last - 1
		}
		if s > r.last {
			r.last = s
		}
		r.mu.Unlock()
	}
}

func intAfter(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	var n int64
	j := i + len(key)
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		n = n*10 + int64(b[j]-'0')
	}
	return n, j > i+len(key)
}
