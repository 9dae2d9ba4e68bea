package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// fake is a ControlService with canned answers that records every request and
// the authorization metadata it came with.
type fake struct {
	pb.UnimplementedControlServiceServer

	health *health.Server

	mu     sync.Mutex
	reqs   []proto.Message
	auth   []string
	err    error // returned by every RPC when set
	block  bool  // RPCs wait for their context to end
	events []*pb.Event
	follow bool // StreamEvents waits for the client after the canned events
}

func (f *fake) record(ctx context.Context, req proto.Message) error {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.auth = append(f.auth, strings.Join(md.Get("authorization"), ","))
	err, block := f.err, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (f *fake) requests() []proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]proto.Message(nil), f.reqs...)
}

func (f *fake) authorizations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...)
}

func (f *fake) set(fn func(f *fake)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// Canned answers.
var (
	cannedPublish  = &pb.PublishResponse{Position: &pb.Position{Epoch: "e1", Offset: 7}}
	cannedSendUser = &pb.SendToUserResponse{Connections: 2}
	cannedSendConn = &pb.SendToConnectionResponse{}
	cannedJoin     = &pb.JoinRoomResponse{Connections: 3}
	cannedLeave    = &pb.LeaveRoomResponse{Connections: 1}
	cannedKick     = &pb.KickResponse{Connections: 2}
	cannedStats    = &pb.GetPresenceStatsResponse{Users: 2, Connections: 3}
	cannedPresence = &pb.GetPresenceResponse{Members: []*pb.Member{
		{User: "alice", Connections: []string{"c1", "c2"}, Info: mustValue(map[string]any{"name": "Alice"})},
		{User: "bob", Connections: []string{"c3"}},
	}}
	cannedHistory = &pb.GetHistoryResponse{
		Messages: []*pb.RoomMessage{
			{Room: "chat:lobby", Epoch: "e1", Offset: 1, TimeUnixMs: 1700000000000,
				Payload:   &pb.Payload{Kind: &pb.Payload_Json{Json: mustValue(map[string]any{"text": "hi"})}},
				Publisher: &pb.ClientInfo{User: "alice", Connection: "c1"}},
			{Room: "chat:lobby", Epoch: "e1", Offset: 2, TimeUnixMs: 1700000001000,
				Payload: &pb.Payload{Kind: &pb.Payload_Binary{Binary: []byte{1, 2, 3}}}},
		},
		Position: &pb.Position{Epoch: "e1", Offset: 2},
	}
	cannedRoomPages = map[string]*pb.ListRoomsResponse{
		"": {Rooms: []*pb.RoomSummary{
			{Name: "chat:a", Users: 1, Connections: 2, Position: &pb.Position{Epoch: "e1", Offset: 4}, Owner: "n1"},
			{Name: "chat:b", Users: 0, Connections: 0, Position: &pb.Position{Epoch: "e1", Offset: 9}, Owner: "n1"},
		}, NextPageToken: "p2"},
		"p2": {Rooms: []*pb.RoomSummary{
			{Name: "chat:c", Users: 5, Connections: 6, Position: &pb.Position{Epoch: "e1"}, Owner: "n2"},
		}},
	}
	cannedNodePages = map[string]*pb.ListNodesResponse{
		"": {Nodes: []*pb.NodeInfo{{Name: "n1", State: pb.NodeState_NODE_STATE_ACTIVE, ClientAddress: "10.0.0.1:8080",
			ControlAddress: "10.0.0.1:9090", Version: "v0.1.0", Connections: 10, Rooms: 4, Shards: 8,
			StartedAt: timestamppb.New(mustTime("2026-01-02T03:04:05Z"))}}, NextPageToken: "n2"},
		"n2": {Nodes: []*pb.NodeInfo{{Name: "n2", State: pb.NodeState_NODE_STATE_DRAINING}}},
	}
)

func (f *fake) Publish(ctx context.Context, r *pb.PublishRequest) (*pb.PublishResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedPublish, nil
}

func (f *fake) Broadcast(ctx context.Context, r *pb.BroadcastRequest) (*pb.BroadcastResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return broadcastAnswer(r.GetRooms()), nil
}

// broadcastAnswer succeeds for every room except those starting with "bad:".
func broadcastAnswer(rooms []string) *pb.BroadcastResponse {
	resp := &pb.BroadcastResponse{}
	for i, room := range rooms {
		res := &pb.BroadcastResult{Room: room}
		if strings.HasPrefix(room, "bad:") {
			res.Error = &pb.Error{Code: pb.ErrorCode_ERROR_CODE_UNKNOWN_NAMESPACE, Message: "unknown namespace \"bad\""}
		} else {
			res.Position = &pb.Position{Epoch: "e1", Offset: uint64(i + 1)}
		}
		resp.Results = append(resp.Results, res)
	}
	return resp
}

func (f *fake) SendToUser(ctx context.Context, r *pb.SendToUserRequest) (*pb.SendToUserResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedSendUser, nil
}

func (f *fake) SendToConnection(ctx context.Context, r *pb.SendToConnectionRequest) (*pb.SendToConnectionResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedSendConn, nil
}

func (f *fake) JoinRoom(ctx context.Context, r *pb.JoinRoomRequest) (*pb.JoinRoomResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedJoin, nil
}

func (f *fake) LeaveRoom(ctx context.Context, r *pb.LeaveRoomRequest) (*pb.LeaveRoomResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedLeave, nil
}

func (f *fake) Kick(ctx context.Context, r *pb.KickRequest) (*pb.KickResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedKick, nil
}

func (f *fake) GetPresence(ctx context.Context, r *pb.GetPresenceRequest) (*pb.GetPresenceResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedPresence, nil
}

func (f *fake) GetPresenceStats(ctx context.Context, r *pb.GetPresenceStatsRequest) (*pb.GetPresenceStatsResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedStats, nil
}

func (f *fake) GetHistory(ctx context.Context, r *pb.GetHistoryRequest) (*pb.GetHistoryResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedHistory, nil
}

func (f *fake) ListRooms(ctx context.Context, r *pb.ListRoomsRequest) (*pb.ListRoomsResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedRoomPages[r.GetPageToken()], nil
}

func (f *fake) ListNodes(ctx context.Context, r *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return cannedNodePages[r.GetPageToken()], nil
}

func (f *fake) StreamEvents(r *pb.StreamEventsRequest, stream grpc.ServerStreamingServer[pb.StreamEventsResponse]) error {
	ctx := stream.Context()
	if err := f.record(ctx, r); err != nil {
		return err
	}
	f.mu.Lock()
	events, follow := f.events, f.follow
	f.mu.Unlock()
	for _, e := range events {
		if err := stream.Send(&pb.StreamEventsResponse{Event: e}); err != nil {
			return err
		}
	}
	if follow {
		<-ctx.Done()
	}
	return nil
}

// startFake serves a fake ControlService and the health service on a loopback
// port, with creds when non-nil, and returns it with its address.
func startFake(t *testing.T, creds credentials.TransportCredentials) (*fake, string) {
	t.Helper()
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	f := &fake{health: health.NewServer()}
	addr := serveControl(t, f, func(srv *grpc.Server) { grpc_health_v1.RegisterHealthServer(srv, f.health) }, opts...)
	return f, addr
}

// serveControl serves impl (and whatever more registers) on a loopback port until
// the test ends, and returns its address.
func serveControl(t *testing.T, impl pb.ControlServiceServer, more func(*grpc.Server), opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	pb.RegisterControlServiceServer(srv, impl)
	if more != nil {
		more(srv)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

// result is what one CLI run produced.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI executes the command tree like cmd/roomcast does, with args, and
// returns its output and exit code.
func runCLI(ctx context.Context, t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return runCLIOut(ctx, t, &syncBuffer{}, stdin, args...)
}

// runCLIOut is runCLI writing stdout to out, which the test may watch while the
// command runs.
func runCLIOut(ctx context.Context, t *testing.T, out *syncBuffer, stdin string, args ...string) result {
	t.Helper()
	root := &cobra.Command{Use: "roomcast", Short: "roomcast test root"}
	AddGlobalFlags(root)
	root.AddCommand(Commands()...)
	var errOut bytes.Buffer
	root.SetOut(out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	code := Execute(ctx, root)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// syncBuffer is a bytes.Buffer safe to read while a command writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls until the buffer contains s; the deadline only bounds failure.
func (b *syncBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q: %q", s, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustTime(s string) time.Time {
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return tm
}

func mustValue(v any) *structpb.Value {
	val, err := structpb.NewValue(v)
	if err != nil {
		panic(err)
	}
	return val
}
