package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
)

type common struct {
	url          string
	control      string
	controlToken string
	secret       string
	serverPID    int
	sources      int
	jsonOut      bool
}

func (o *common) flags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVar(&o.url, "url", "ws://127.0.0.1:8080/ws", "node WebSocket URL")
	f.StringVar(&o.control, "control", "127.0.0.1:9090", "node control API address")
	f.StringVar(&o.controlToken, "control-token", os.Getenv("ROOMCAST_CONTROL_TOKEN"), "control API token (env ROOMCAST_CONTROL_TOKEN)")
	f.StringVar(&o.secret, "secret", os.Getenv("ROOMCAST_JWT_SECRET"), "HS256 secret the node trusts, to mint client tokens (env ROOMCAST_JWT_SECRET)")
	f.IntVar(&o.serverPID, "server-pid", 0, "server process id, for RSS and CPU from /proc")
	f.IntVar(&o.sources, "sources", 8, "spread connections over 127.0.0.1..127.0.0.N source addresses")
	f.BoolVar(&o.jsonOut, "json", false, "print results as JSON")
}

// dialer returns a WebSocket dialer bound to source address 127.0.0.(1+i%sources), so
// many connections do not exhaust one address's ephemeral ports.
func (o *common) dialer(i int) *websocket.Dialer {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%max(o.sources, 1)))}
	nd := &net.Dialer{LocalAddr: src, Timeout: 10 * time.Second}
	return &websocket.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   4096,
		WriteBufferSize:  1024,
	}
}

// connectClient dials and authenticates one client, joining room if set.
func (o *common) connectClient(ctx context.Context, i int, user, room string) (*websocket.Conn, error) {
	tok, err := app.DevToken(o.secret, user, 2*time.Hour)
	if err != nil {
		return nil, err
	}
	c, _, err := o.dialer(i).DialContext(ctx, o.url, nil)
	if err != nil {
		return nil, err
	}
	cmds := []*pb.ClientCommand{{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tok, Client: "roomcast-bench"}}}}
	if room != "" {
		cmds = append(cmds, &pb.ClientCommand{Id: 2, Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: room}}})
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for _, cmd := range cmds {
		b, _ := protojson.Marshal(cmd)
		if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
			c.Close()
			return nil, err
		}
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				c.Close()
				return nil, err
			}
			var m pb.ServerMessage
			if err := protojson.Unmarshal(data, &m); err != nil {
				c.Close()
				return nil, err
			}
			if m.GetId() != cmd.GetId() {
				continue
			}
			if m.GetError() != nil {
				c.Close()
				return nil, fmt.Errorf("%v", m.GetError())
			}
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

// proc samples a process's RSS and CPU time from /proc.
type procSample struct {
	rss int64         // bytes
	cpu time.Duration // user+system
}

func sampleProc(pid int) (procSample, error) {
	if pid == 0 {
		return procSample{}, nil
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procSample{}, err
	}
	var s procSample
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.rss = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may contain spaces) start after ") ".
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	f := strings.Fields(rest)
	if len(f) > 12 {
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		s.cpu = time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
	}
	return s, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (o *common) print(human string, v any) {
	if o.jsonOut {
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Println(string(b))
		return
	}
	fmt.Print(human)
}

// counter is a tiny progress counter shared by goroutines.
type counter struct{ n atomic.Int64 }
