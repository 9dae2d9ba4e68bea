package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// TestRequestMapping runs every verb against the fake and checks the request it
// sent, the table it printed and, with -o json, that stdout is the response as
// protojson.
func TestRequestMapping(t *testing.T) {
	jsonText := func(s string) *pb.Payload { return &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: s}} }
	binary := func(b string) *pb.Payload { return &pb.Payload{Kind: &pb.Payload_Binary{Binary: []byte(b)}} }
	user := func(u string) *pb.Target { return &pb.Target{Target: &pb.Target_User{User: u}} }
	conn := func(c string) *pb.Target { return &pb.Target{Target: &pb.Target_Connection{Connection: c}} }

	dir := t.TempDir()
	dataFile := filepath.Join(dir, "data.bin")
	if err := os.WriteFile(dataFile, []byte{0, 1, 2, 0xff}, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		args      []string
		stdin     string
		wantReqs  []proto.Message
		wantTable []string      // substrings of the table output
		wantJSON  proto.Message // stdout with -o json, decoded
	}{
		{
			name:      "publish json",
			args:      []string{"publish", "chat:lobby", `{"text": "hi", "n": 12345678901234567890}`},
			wantReqs:  []proto.Message{&pb.PublishRequest{Room: "chat:lobby", Payload: jsonText(`{"text": "hi", "n": 12345678901234567890}`)}},
			wantTable: []string{"ROOM", "EPOCH", "OFFSET", "chat:lobby", "e1", "7"},
			wantJSON:  cannedPublish,
		},
		{
			name:      "publish binary with idempotency key",
			args:      []string{"publish", "game:1", "raw bytes", "--binary", "--idempotency-key", "k1"},
			wantReqs:  []proto.Message{&pb.PublishRequest{Room: "game:1", Payload: binary("raw bytes"), IdempotencyKey: "k1"}},
			wantTable: []string{"game:1", "e1", "7"},
			wantJSON:  cannedPublish,
		},
		{
			name:     "publish binary file",
			args:     []string{"publish", "game:1", "--binary", "--file", dataFile},
			wantReqs: []proto.Message{&pb.PublishRequest{Room: "game:1", Payload: binary("\x00\x01\x02\xff")}},
			wantJSON: cannedPublish,
		},
		{
			name:     "publish json from stdin",
			args:     []string{"publish", "chat:lobby", "--file", "-"},
			stdin:    "[1, 2, 3]\n",
			wantReqs: []proto.Message{&pb.PublishRequest{Room: "chat:lobby", Payload: jsonText("[1, 2, 3]")}},
			wantJSON: cannedPublish,
		},
		{
			name: "broadcast",
			args: []string{"broadcast", "chat:a", "chat:b", "--data", `"hello"`, "--idempotency-key", "k2"},
			wantReqs: []proto.Message{&pb.BroadcastRequest{Rooms: []string{"chat:a", "chat:b"},
				Payload: jsonText(`"hello"`), IdempotencyKey: "k2"}},
			wantTable: []string{"ROOM", "ERROR", "chat:a", "chat:b"},
			wantJSON:  broadcastAnswer([]string{"chat:a", "chat:b"}),
		},
		{
			name:      "send to user",
			args:      []string{"send", "--user", "alice", `{"type":"notice"}`},
			wantReqs:  []proto.Message{&pb.SendToUserRequest{User: "alice", Payload: jsonText(`{"type":"notice"}`)}},
			wantTable: []string{"TARGET", "CONNECTIONS", "user:alice", "2"},
			wantJSON:  cannedSendUser,
		},
		{
			name:      "send to connection",
			args:      []string{"send", "--conn", "n1-c7", "--binary", "x"},
			wantReqs:  []proto.Message{&pb.SendToConnectionRequest{Connection: "n1-c7", Payload: binary("x")}},
			wantTable: []string{"conn:n1-c7"},
			wantJSON:  cannedSendConn,
		},
		{
			name:      "join user",
			args:      []string{"join", "chat:lobby", "--user", "alice"},
			wantReqs:  []proto.Message{&pb.JoinRoomRequest{Room: "chat:lobby", Target: user("alice")}},
			wantTable: []string{"ROOM", "TARGET", "CONNECTIONS", "chat:lobby", "user:alice", "3"},
			wantJSON:  cannedJoin,
		},
		{
			name:      "join connection",
			args:      []string{"join", "chat:lobby", "--conn", "n1-c7"},
			wantReqs:  []proto.Message{&pb.JoinRoomRequest{Room: "chat:lobby", Target: conn("n1-c7")}},
			wantTable: []string{"conn:n1-c7", "3"},
			wantJSON:  cannedJoin,
		},
		{
			name:      "leave",
			args:      []string{"leave", "chat:lobby", "--conn", "n1-c7"},
			wantReqs:  []proto.Message{&pb.LeaveRoomRequest{Room: "chat:lobby", Target: conn("n1-c7")}},
			wantTable: []string{"chat:lobby", "conn:n1-c7", "1"},
			wantJSON:  cannedLeave,
		},
		{
			name:      "kick user defaults",
			args:      []string{"kick", "--user", "alice"},
			wantReqs:  []proto.Message{&pb.KickRequest{Target: user("alice")}},
			wantTable: []string{"user:alice", "2"},
			wantJSON:  cannedKick,
		},
		{
			name:     "kick connection with code, reason, reconnect",
			args:     []string{"kick", "--conn", "n1-c7", "--code", "4010", "--reason", "moving you", "--reconnect"},
			wantReqs: []proto.Message{&pb.KickRequest{Target: conn("n1-c7"), Code: 4010, Reason: "moving you", Reconnect: true}},
			wantJSON: cannedKick,
		},
		{
			name:      "presence",
			args:      []string{"presence", "chat:lobby"},
			wantReqs:  []proto.Message{&pb.GetPresenceRequest{Room: "chat:lobby"}},
			wantTable: []string{"USER", "INFO", "alice", "c1,c2", `{"name":"Alice"}`, "bob", "c3"},
			wantJSON:  cannedPresence,
		},
		{
			name:      "stats",
			args:      []string{"stats", "chat:lobby"},
			wantReqs:  []proto.Message{&pb.GetPresenceStatsRequest{Room: "chat:lobby"}},
			wantTable: []string{"USERS", "CONNECTIONS", "chat:lobby", "2", "3"},
			wantJSON:  cannedStats,
		},
		{
			name:     "history",
			args:     []string{"history", "chat:lobby"},
			wantReqs: []proto.Message{&pb.GetHistoryRequest{Room: "chat:lobby"}},
			wantTable: []string{"OFFSET", "PAYLOAD", `{"text":"hi"}`, "alice/c1", "base64:AQID",
				"2023-11-14T22:13:20.000Z", "position: epoch e1 offset 2"},
			wantJSON: cannedHistory,
		},
		{
			name: "history since, limit, reverse",
			args: []string{"history", "chat:lobby", "--since-epoch", "e1", "--since-offset", "41", "--limit", "10", "--reverse"},
			wantReqs: []proto.Message{&pb.GetHistoryRequest{Room: "chat:lobby",
				Since: &pb.Position{Epoch: "e1", Offset: 41}, Limit: 10, Reverse: true}},
			wantJSON: cannedHistory,
		},
		{
			name:      "rooms one page",
			args:      []string{"rooms", "--prefix", "chat:", "--page-size", "2"},
			wantReqs:  []proto.Message{&pb.ListRoomsRequest{Prefix: "chat:", PageSize: 2}},
			wantTable: []string{"NAME", "OWNER", "chat:a", "chat:b"},
			wantJSON:  cannedRoomPages[""],
		},
		{
			name: "rooms all pages",
			args: []string{"rooms", "--prefix", "chat:", "--page-size", "2", "--all"},
			wantReqs: []proto.Message{
				&pb.ListRoomsRequest{Prefix: "chat:", PageSize: 2},
				&pb.ListRoomsRequest{Prefix: "chat:", PageSize: 2, PageToken: "p2"},
			},
			wantTable: []string{"chat:a", "chat:b", "chat:c", "n2"},
			wantJSON: &pb.ListRoomsResponse{Rooms: append(append([]*pb.RoomSummary(nil),
				cannedRoomPages[""].Rooms...), cannedRoomPages["p2"].Rooms...)},
		},
		{
			name:     "rooms from a page token",
			args:     []string{"rooms", "--page-token", "p2"},
			wantReqs: []proto.Message{&pb.ListRoomsRequest{PageToken: "p2"}},
			wantJSON: cannedRoomPages["p2"],
		},
		{
			name:      "nodes follows pages",
			args:      []string{"nodes"},
			wantReqs:  []proto.Message{&pb.ListNodesRequest{}, &pb.ListNodesRequest{PageToken: "n2"}},
			wantTable: []string{"NAME", "STATE", "SHARDS", "n1", "active", "10.0.0.1:8080", "v0.1.0", "2026-01-02T03:04:05.000Z", "n2", "draining"},
			wantJSON:  &pb.ListNodesResponse{Nodes: append(append([]*pb.NodeInfo(nil), cannedNodePages[""].Nodes...), cannedNodePages["n2"].Nodes...)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, format := range []string{"table", "json"} {
				t.Run(format, func(t *testing.T) {
					f, addr := startFake(t, nil)
					args := append([]string{"--addr", addr, "--output", format}, tt.args...)
					res := runCLI(context.Background(), t, tt.stdin, args...)
					if res.code != 0 {
						t.Fatalf("exit code %d, stderr %q", res.code, res.stderr)
					}
					assertProtos(t, "requests", tt.wantReqs, f.requests())
					if format == "table" {
						for _, s := range tt.wantTable {
							if !strings.Contains(res.stdout, s) {
								t.Errorf("table output lacks %q:\n%s", s, res.stdout)
							}
						}
						return
					}
					assertJSONLines(t, res.stdout, tt.wantJSON)
				})
			}
		})
	}
}

// assertProtos checks that got equals want, message by message.
func assertProtos(t *testing.T, what string, want, got []proto.Message) {
	t.Helper()
	if len(want) != len(got) {
		t.Errorf("%s: got %d messages, want %d: %v", what, len(got), len(want), got)
		return
	}
	for i := range want {
		if !proto.Equal(want[i], got[i]) {
			t.Errorf("%s[%d]:\n got %v\nwant %v", what, i, prototext.Format(got[i]), prototext.Format(want[i]))
		}
	}
}

func timestampAt(s string) *timestamppb.Timestamp { return timestamppb.New(mustTime(s)) }

// assertJSONLines checks that out is exactly one line per want, each the
// protojson of the matching message.
func assertJSONLines[M proto.Message](t *testing.T, out string, want ...M) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines of JSON, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		got := w.ProtoReflect().New().Interface()
		if err := protojson.Unmarshal([]byte(lines[i]), got); err != nil {
			t.Fatalf("line %d is not protojson of %T: %v\n%s", i, w, err, lines[i])
		}
		assertProtos(t, fmt.Sprintf("line %d", i), []proto.Message{w}, []proto.Message{got})
	}
}

func TestJSONOutputKeepsZeroFields(t *testing.T) {
	_, addr := startFake(t, nil)
	res := runCLI(context.Background(), t, "", "--addr", addr, "-o", "json", "rooms", "--page-token", "p2")
	// chat:c has an offset of 0; scripts can still read it.
	if !strings.Contains(res.stdout, `"offset":"0"`) {
		t.Errorf("zero offset missing from %s", res.stdout)
	}
}

func TestRoomsWithoutAllHintsAtNextPage(t *testing.T) {
	_, addr := startFake(t, nil)
	res := runCLI(context.Background(), t, "", "--addr", addr, "rooms")
	if res.code != 0 || !strings.Contains(res.stderr, "--page-token p2") {
		t.Errorf("code %d, stderr %q: want a hint with the next page token", res.code, res.stderr)
	}
}

// TestExitCodes checks the codes scripts rely on and the stderr message format.
func TestExitCodes(t *testing.T) {
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}()
	tests := []struct {
		name       string
		serverErr  error
		block      bool
		addr       string // instead of the fake's
		args       []string
		wantCode   int
		wantStderr string // prefix
		wantNoReq  bool   // the request must not reach the server
	}{
		{name: "ok", args: []string{"stats", "chat:x"}, wantCode: 0},
		{name: "not found", serverErr: status.Error(codes.NotFound, "no such user"),
			args: []string{"kick", "--user", "zed"}, wantCode: 1, wantStderr: "roomcast: NotFound: no such user\n"},
		{name: "invalid argument", serverErr: status.Error(codes.InvalidArgument, "empty room"),
			args: []string{"stats", "x"}, wantCode: 1, wantStderr: "roomcast: InvalidArgument: empty room\n"},
		{name: "failed precondition", serverErr: status.Error(codes.FailedPrecondition, "presence is off"),
			args: []string{"presence", "news:x"}, wantCode: 1, wantStderr: "roomcast: FailedPrecondition: presence is off\n"},
		{name: "unauthenticated", serverErr: status.Error(codes.Unauthenticated, "bad token"),
			args: []string{"nodes"}, wantCode: 4, wantStderr: "roomcast: Unauthenticated: bad token\n"},
		{name: "permission denied", serverErr: status.Error(codes.PermissionDenied, "no"),
			args: []string{"publish", "a:b", "1"}, wantCode: 4, wantStderr: "roomcast: PermissionDenied: no\n"},
		{name: "unavailable from server", serverErr: status.Error(codes.Unavailable, "draining"),
			args: []string{"publish", "a:b", "1"}, wantCode: 3, wantStderr: "roomcast: Unavailable: draining\n"},
		{name: "timeout", block: true, args: []string{"--timeout", "200ms", "stats", "chat:x"},
			wantCode: 3, wantStderr: "roomcast: DeadlineExceeded:"},
		{name: "cannot connect", addr: closed, args: []string{"stats", "chat:x"},
			wantCode: 3, wantStderr: "roomcast: Unavailable:"},
		{name: "broadcast partly failed", args: []string{"broadcast", "chat:a", "bad:b", "--data", "1"},
			wantCode: 1, wantStderr: "roomcast: broadcast failed in 1 of 2 rooms\n"},
		{name: "missing argument", args: []string{"stats"}, wantCode: 2, wantNoReq: true,
			wantStderr: "roomcast: accepts 1 arg(s), received 0\nRun 'roomcast stats --help' for usage.\n"},
		{name: "too many arguments", args: []string{"publish", "a:b", "1", "2"}, wantCode: 2, wantNoReq: true},
		{name: "unknown flag", args: []string{"stats", "x", "--nope"}, wantCode: 2, wantNoReq: true,
			wantStderr: "roomcast: unknown flag: --nope\n"},
		{name: "bad flag value", args: []string{"kick", "--user", "a", "--code", "x"}, wantCode: 2, wantNoReq: true},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantNoReq: true},
		{name: "invalid json", args: []string{"publish", "a:b", "{nope"}, wantCode: 2, wantNoReq: true,
			wantStderr: "roomcast: data is not valid JSON"},
		{name: "no data", args: []string{"publish", "a:b"}, wantCode: 2, wantNoReq: true},
		{name: "data and file", args: []string{"publish", "a:b", "1", "--file", "x"}, wantCode: 2, wantNoReq: true},
		{name: "missing file", args: []string{"publish", "a:b", "--file", "/nonexistent/x"}, wantCode: 2, wantNoReq: true},
		{name: "both targets", args: []string{"join", "r:x", "--user", "a", "--conn", "c"}, wantCode: 2, wantNoReq: true,
			wantStderr: "roomcast: give either --user or --conn, not both\n"},
		{name: "no target", args: []string{"kick"}, wantCode: 2, wantNoReq: true},
		{name: "since-offset without epoch", args: []string{"history", "r:x", "--since-offset", "3"}, wantCode: 2, wantNoReq: true},
		{name: "bad output", args: []string{"--output", "yaml", "stats", "x"}, wantCode: 2, wantNoReq: true,
			wantStderr: "roomcast: invalid output \"yaml\": want table or json\n"},
		{name: "bad timeout", args: []string{"--timeout", "0s", "stats", "x"}, wantCode: 2, wantNoReq: true},
		{name: "unknown event type", args: []string{"events", "--type", "explosion"}, wantCode: 2, wantNoReq: true,
			wantStderr: "roomcast: unknown event type \"explosion\": want one of client_message, connect, disconnect, gap, join, kick, leave\n"},
		{name: "cert without key", args: []string{"--cert-file", "c.pem", "stats", "x"}, wantCode: 2, wantNoReq: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, addr := startFake(t, nil)
			f.set(func(f *fake) { f.err, f.block = tt.serverErr, tt.block })
			if tt.addr != "" {
				addr = tt.addr
			}
			res := runCLI(context.Background(), t, "", append([]string{"--addr", addr}, tt.args...)...)
			if res.code != tt.wantCode {
				t.Errorf("exit code %d, want %d (stderr %q)", res.code, tt.wantCode, res.stderr)
			}
			if !strings.HasPrefix(res.stderr, tt.wantStderr) {
				t.Errorf("stderr %q, want prefix %q", res.stderr, tt.wantStderr)
			}
			if tt.wantCode == 0 && res.stderr != "" {
				t.Errorf("stderr %q on success", res.stderr)
			}
			if tt.wantNoReq && len(f.requests()) != 0 {
				t.Errorf("a usage error reached the server: %v", f.requests())
			}
		})
	}
}

// TestErrorsCarryExitCodes checks the contract with cmd/roomcast's main, which
// runs root.Execute itself, prints "roomcast: " + err and exits with the error's
// ExitCode().
func TestErrorsCarryExitCodes(t *testing.T) {
	tests := []struct {
		name      string
		serverErr error
		args      []string
		wantCode  int
		wantText  string
	}{
		{"server error", status.Error(codes.NotFound, "no such connection"), []string{"kick", "--conn", "c"}, 1, "NotFound: no such connection"},
		{"auth", status.Error(codes.Unauthenticated, "missing token"), []string{"nodes"}, 4, "Unauthenticated: missing token"},
		{"unavailable", status.Error(codes.Unavailable, "draining"), []string{"nodes"}, 3, "Unavailable: draining"},
		{"usage", nil, []string{"stats"}, 2, "accepts 1 arg(s), received 0"},
		{"flag", nil, []string{"stats", "x", "--bogus"}, 2, "unknown flag: --bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, addr := startFake(t, nil)
			f.set(func(f *fake) { f.err = tt.serverErr })
			root := &cobra.Command{Use: "roomcast", SilenceUsage: true, SilenceErrors: true}
			AddGlobalFlags(root)
			root.AddCommand(Commands()...)
			root.SetOut(&strings.Builder{})
			root.SetArgs(append([]string{"--addr", addr}, tt.args...))
			err := root.Execute()
			var ec interface{ ExitCode() int }
			if !errors.As(err, &ec) {
				t.Fatalf("error %v (%T) has no ExitCode method", err, err)
			}
			if ec.ExitCode() != tt.wantCode || err.Error() != tt.wantText {
				t.Errorf("got code %d text %q, want %d %q", ec.ExitCode(), err.Error(), tt.wantCode, tt.wantText)
			}
		})
	}
}

func TestBearerTokenAndEnvironment(t *testing.T) {
	t.Run("flag", func(t *testing.T) {
		f, addr := startFake(t, nil)
		res := runCLI(context.Background(), t, "", "--addr", addr, "--token", "s3cret", "nodes")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		for _, a := range f.authorizations() {
			if a != "Bearer s3cret" {
				t.Errorf("authorization %q, want %q", a, "Bearer s3cret")
			}
		}
	})
	t.Run("environment", func(t *testing.T) {
		f, addr := startFake(t, nil)
		t.Setenv(EnvAddr, addr)
		t.Setenv(EnvToken, "from-env")
		t.Setenv(EnvOutput, "json")
		res := runCLI(context.Background(), t, "", "stats", "chat:x")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		if got := f.authorizations(); len(got) != 1 || got[0] != "Bearer from-env" {
			t.Errorf("authorizations %q", got)
		}
		assertJSONLines(t, res.stdout, cannedStats)
	})
	t.Run("flags win over environment", func(t *testing.T) {
		f, addr := startFake(t, nil)
		t.Setenv(EnvAddr, "127.0.0.1:1") // would fail
		t.Setenv(EnvToken, "from-env")
		t.Setenv(EnvOutput, "json")
		res := runCLI(context.Background(), t, "", "--addr", addr, "--token", "from-flag", "-o", "table", "stats", "chat:x")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		if got := f.authorizations(); len(got) != 1 || got[0] != "Bearer from-flag" {
			t.Errorf("authorizations %q", got)
		}
		if !strings.Contains(res.stdout, "USERS") {
			t.Errorf("want a table, got %q", res.stdout)
		}
	})
	t.Run("timeout from environment", func(t *testing.T) {
		f, addr := startFake(t, nil)
		f.set(func(f *fake) { f.block = true })
		t.Setenv(EnvTimeout, "100ms")
		res := runCLI(context.Background(), t, "", "--addr", addr, "stats", "chat:x")
		if res.code != ExitUnavailable {
			t.Errorf("exit %d, want %d (%s)", res.code, ExitUnavailable, res.stderr)
		}
	})
	t.Run("no token sends no authorization", func(t *testing.T) {
		f, addr := startFake(t, nil)
		if res := runCLI(context.Background(), t, "", "--addr", addr, "nodes"); res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		for _, a := range f.authorizations() {
			if a != "" {
				t.Errorf("authorization %q sent without --token", a)
			}
		}
	})
}

func TestEvents(t *testing.T) {
	events := []*pb.Event{
		{Type: pb.EventType_EVENT_TYPE_JOIN, Time: timestampAt("2026-01-02T03:04:05Z"), Node: "n1", Room: "chat:lobby", User: "alice", Connection: "c1"},
		{Type: pb.EventType_EVENT_TYPE_CLIENT_MESSAGE, Time: timestampAt("2026-01-02T03:04:06Z"), Node: "n1", User: "alice", Connection: "c1",
			Payload: &pb.Payload{Kind: &pb.Payload_Json{Json: mustValue(map[string]any{"q": 1})}}},
		{Type: pb.EventType_EVENT_TYPE_KICK, Node: "n1", User: "bob", Connection: "c2", Code: 4502, Reason: "bye now"},
		{Type: pb.EventType_EVENT_TYPE_GAP, Missed: 12},
	}
	t.Run("filters map to the request", func(t *testing.T) {
		f, addr := startFake(t, nil)
		res := runCLI(context.Background(), t, "", "--addr", addr, "events", "--type", "join", "--type", "LEAVE,client-message",
			"--room", "chat:*", "--user", "alice", "--group", "workers", "--buffer", "64")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		want := []proto.Message{&pb.StreamEventsRequest{
			Types:       []pb.EventType{pb.EventType_EVENT_TYPE_JOIN, pb.EventType_EVENT_TYPE_LEAVE, pb.EventType_EVENT_TYPE_CLIENT_MESSAGE},
			RoomPattern: "chat:*", User: "alice", Group: "workers", Buffer: 64,
		}}
		assertProtos(t, "request", want, f.requests())
	})
	t.Run("table: one line per event", func(t *testing.T) {
		f, addr := startFake(t, nil)
		f.set(func(f *fake) { f.events = events })
		res := runCLI(context.Background(), t, "", "--addr", addr, "events")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		want := "2026-01-02T03:04:05.000Z join node=n1 room=chat:lobby user=alice conn=c1\n" +
			"2026-01-02T03:04:06.000Z client_message node=n1 user=alice conn=c1 payload={\"q\":1}\n" +
			"- kick node=n1 user=bob conn=c2 code=4502 reason=\"bye now\"\n" +
			"- gap missed=12\n"
		if res.stdout != want {
			t.Errorf("output:\n%s\nwant:\n%s", res.stdout, want)
		}
	})
	t.Run("json: one object per line", func(t *testing.T) {
		f, addr := startFake(t, nil)
		f.set(func(f *fake) { f.events = events })
		res := runCLI(context.Background(), t, "", "--addr", addr, "-o", "json", "events")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		var want []*pb.StreamEventsResponse
		for _, e := range events {
			want = append(want, &pb.StreamEventsResponse{Event: e})
		}
		assertJSONLines(t, res.stdout, want...)
	})
	t.Run("interrupt ends the stream with exit code 0", func(t *testing.T) {
		f, addr := startFake(t, nil)
		f.set(func(f *fake) { f.events, f.follow = events[:1], true })
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		out := &syncBuffer{}
		done := make(chan result, 1)
		go func() { done <- runCLIOut(ctx, t, out, "", "--addr", addr, "--timeout", "50ms", "events") }()
		out.waitFor(t, "join")
		// Still following after --timeout: the deadline does not apply to events.
		select {
		case <-done:
			t.Fatal("events ended before it was interrupted")
		case <-time.After(200 * time.Millisecond):
		}
		cancel()
		var res result
		select {
		case res = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("events did not stop after cancel")
		}
		if res.code != 0 || !strings.Contains(res.stdout, "join") {
			t.Errorf("exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
		}
	})
	t.Run("server error", func(t *testing.T) {
		f, addr := startFake(t, nil)
		f.set(func(f *fake) { f.err = status.Error(codes.PermissionDenied, "events need the admin token") })
		res := runCLI(context.Background(), t, "", "--addr", addr, "events")
		if res.code != ExitAuth || res.stderr != "roomcast: PermissionDenied: events need the admin token\n" {
			t.Errorf("exit %d, stderr %q", res.code, res.stderr)
		}
	})
}

func TestHealth(t *testing.T) {
	tests := []struct {
		name     string
		service  string
		status   grpc_health_v1.HealthCheckResponse_ServingStatus
		args     []string
		wantCode int
		wantOut  string
	}{
		{"serving", "", grpc_health_v1.HealthCheckResponse_SERVING, nil, 0, "SERVING\n"},
		{"not serving", "", grpc_health_v1.HealthCheckResponse_NOT_SERVING, nil, 1, "NOT_SERVING\n"},
		{"named service json", "roomcast.v1.ControlService", grpc_health_v1.HealthCheckResponse_SERVING,
			[]string{"-o", "json", "--service", "roomcast.v1.ControlService"}, 0, `{"status":"SERVING"}` + "\n"},
		{"unknown service", "", grpc_health_v1.HealthCheckResponse_SERVING, []string{"--service", "nope"}, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, addr := startFake(t, nil)
			f.health.SetServingStatus(tt.service, tt.status)
			res := runCLI(context.Background(), t, "", append([]string{"--addr", addr, "health"}, tt.args...)...)
			if res.code != tt.wantCode || res.stdout != tt.wantOut {
				t.Errorf("exit %d stdout %q stderr %q; want %d %q", res.code, res.stdout, res.stderr, tt.wantCode, tt.wantOut)
			}
		})
	}
}

// TestHelp checks that every verb documents itself with examples, and that the
// root help documents the exit codes.
func TestHelp(t *testing.T) {
	for _, c := range Commands() {
		name := c.Name()
		t.Run(name, func(t *testing.T) {
			if c.Example == "" || c.Short == "" || c.Long == "" {
				t.Errorf("%s lacks Short, Long or Example", name)
			}
			res := runCLI(context.Background(), t, "", name, "--help")
			if res.code != 0 || !strings.Contains(res.stdout, "Examples:") || !strings.Contains(res.stdout, "roomcast "+name) {
				t.Errorf("exit %d, help:\n%s", res.code, res.stdout)
			}
			if !strings.Contains(res.stdout, "--addr") {
				t.Errorf("help lacks the global flags:\n%s", res.stdout)
			}
		})
	}
	res := runCLI(context.Background(), t, "", "--help")
	for _, s := range []string{"Exit codes:", "2  usage error", "3  cannot connect", "4  unauthenticated", "ROOMCAST_ADDR"} {
		if !strings.Contains(res.stdout, s) {
			t.Errorf("root help lacks %q:\n%s", s, res.stdout)
		}
	}
}
