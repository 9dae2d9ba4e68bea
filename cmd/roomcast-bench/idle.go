package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
)

type idleResult struct {
	Scenario       string  `json:"scenario"`
	Cores          int     `json:"cores"`
	Requested      int     `json:"requested"`
	Held           int     `json:"held"`
	Failed         int     `json:"failed"`
	RSSBeforeBytes int64   `json:"server_rss_before_bytes"`
	RSSAfterBytes  int64   `json:"server_rss_after_bytes"`
	BytesPerConn   float64 `json:"server_rss_bytes_per_conn"`
	ConnectSeconds float64 `json:"connect_seconds"`
}

func idleCommand(o *common) *cobra.Command {
	var conns, parallel int
	var settle time.Duration
	cmd := &cobra.Command{
		Use:     "idle",
		Short:   "Open N authenticated idle connections and report server RSS per connection",
		Example: `  roomcast-bench idle --conns 10000 --server-pid $(pgrep -f 'roomcast node')`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.secret == "" {
				return fmt.Errorf("--secret (or ROOMCAST_JWT_SECRET) is required to mint client tokens")
			}
			ctx := cmd.Context()
			before, err := sampleProc(o.serverPID)
			if err != nil {
				return err
			}
			start := time.Now()
			held, failed, firstErr := openIdle(ctx, o, conns, parallel)
			defer func() {
				for _, c := range held {
					_ = c.Close()
				}
			}()
			took := time.Since(start)
			// Let the server finish its post-handshake work and return buffers.
			time.Sleep(settle)
			after, err := sampleProc(o.serverPID)
			if err != nil {
				return err
			}
			r := idleResult{Scenario: "idle", Cores: runtime.NumCPU(), Requested: conns, Held: len(held), Failed: failed,
				RSSBeforeBytes: before.rss, RSSAfterBytes: after.rss, ConnectSeconds: took.Seconds()}
			if len(held) > 0 && o.serverPID != 0 {
				r.BytesPerConn = float64(after.rss-before.rss) / float64(len(held))
			}
			human := fmt.Sprintf("idle: %d/%d connections held (%d failed) in %.1fs on %d cores\n",
				r.Held, r.Requested, r.Failed, r.ConnectSeconds, r.Cores)
			if o.serverPID != 0 {
				human += fmt.Sprintf("server RSS %.1f MiB -> %.1f MiB: %.2f KB per connection\n",
					float64(before.rss)/(1<<20), float64(after.rss)/(1<<20), r.BytesPerConn/1000)
			}
			if firstErr != nil {
				human += fmt.Sprintf("first error: %v\n", firstErr)
			}
			o.print(human, r)
			return nil
		},
	}
	cmd.Flags().IntVar(&conns, "conns", 10000, "connections to open (a process holds at most ~20,000 files here)")
	cmd.Flags().IntVar(&parallel, "parallel", 64, "connections opened concurrently")
	cmd.Flags().DurationVar(&settle, "settle", 3*time.Second, "wait after the last connect before sampling RSS")
	return cmd
}

func openIdle(ctx context.Context, o *common, n, parallel int) (held []*websocket.Conn, failed int, firstErr error) {
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := o.connectClient(ctx, i, fmt.Sprintf("idle-%d", i), "")
				mu.Lock()
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					held = append(held, c)
					go answerPings(c)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return held, failed, firstErr
}

// answerPings keeps an idle client alive the way an SDK would: it answers the server's
// app-level pings (gorilla answers WebSocket pings itself) until the connection closes.
func answerPings(c *websocket.Conn) {
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		if bytes.Contains(data, []byte(`"ping"`)) {
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"pong":{}}`))
		}
	}
}
