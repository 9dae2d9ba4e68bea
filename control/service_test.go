package control

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

func jsonPayload(t *testing.T, v any) *pb.Payload {
	t.Helper()
	sv, err := structpb.NewValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.Payload{Kind: &pb.Payload_Json{Json: sv}}
}

func textPayload(s string) *pb.Payload { return &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: s}} }

func binPayload(b []byte) *pb.Payload { return &pb.Payload{Kind: &pb.Payload_Binary{Binary: b}} }

func TestPublish(t *testing.T) {
	f := &fakeFabric{}
	c := newClient(t, f)
	ctx := testCtx(t)

	tests := []struct {
		name    string
		req     *pb.PublishRequest
		want    fabric.Publication // when code is OK
		code    codes.Code
		errText string
	}{
		{name: "json value becomes compact json",
			req:  &pb.PublishRequest{Room: "chat:lobby", Payload: jsonPayload(t, map[string]any{"b": []any{1.0, "x"}, "a": true}), IdempotencyKey: "k1"},
			want: fabric.Publication{Room: "chat:lobby", Payload: fabric.Payload{Data: []byte(`{"a":true,"b":[1,"x"]}`)}, IdempotencyKey: "k1"}},
		{name: "json scalar",
			req:  &pb.PublishRequest{Room: "chat:lobby", Payload: jsonPayload(t, "hi")},
			want: fabric.Publication{Room: "chat:lobby", Payload: fabric.Payload{Data: []byte(`"hi"`)}}},
		{name: "json_text kept byte for byte",
			req:  &pb.PublishRequest{Room: "chat:lobby", Payload: textPayload(`{"x": 1}`)},
			want: fabric.Publication{Room: "chat:lobby", Payload: fabric.Payload{Data: []byte(`{"x": 1}`)}}},
		{name: "binary as is",
			req:  &pb.PublishRequest{Room: "bin", Payload: binPayload([]byte{0, 1, 2})},
			want: fabric.Publication{Room: "bin", Payload: fabric.Payload{Data: []byte{0, 1, 2}, Binary: true}}},
		{name: "empty room", req: &pb.PublishRequest{Payload: textPayload(`1`)}, code: codes.InvalidArgument, errText: "room name is empty"},
		{name: "room with space", req: &pb.PublishRequest{Room: "a b", Payload: textPayload(`1`)}, code: codes.InvalidArgument},
		{name: "room with star", req: &pb.PublishRequest{Room: "chat:*", Payload: textPayload(`1`)}, code: codes.InvalidArgument},
		{name: "missing payload", req: &pb.PublishRequest{Room: "r"}, code: codes.InvalidArgument, errText: "payload is missing"},
		{name: "payload without kind", req: &pb.PublishRequest{Room: "r", Payload: &pb.Payload{}}, code: codes.InvalidArgument, errText: "payload is missing"},
		{name: "empty json value", req: &pb.PublishRequest{Room: "r", Payload: &pb.Payload{Kind: &pb.Payload_Json{Json: &structpb.Value{}}}}, code: codes.InvalidArgument},
		{name: "invalid json_text", req: &pb.PublishRequest{Room: "r", Payload: textPayload(`{"x":`)}, code: codes.InvalidArgument, errText: "not valid json"},
		{name: "empty json_text", req: &pb.PublishRequest{Room: "r", Payload: textPayload(``)}, code: codes.InvalidArgument},
		{name: "idempotency key too long", req: &pb.PublishRequest{Room: "r", Payload: textPayload(`1`), IdempotencyKey: strings.Repeat("k", MaxIdempotencyKey+1)}, code: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.published())
			resp, err := c.Publish(ctx, tt.req)
			wantCode(t, err, tt.code)
			if tt.code != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tt.errText) {
					t.Fatalf("message %q does not contain %q", status.Convert(err).Message(), tt.errText)
				}
				if len(f.published()) != before {
					t.Fatal("an invalid request reached the fabric")
				}
				return
			}
			pubs := f.published()
			got := pubs[len(pubs)-1]
			if got.Room != tt.want.Room || string(got.Payload.Data) != string(tt.want.Payload.Data) ||
				got.Payload.Binary != tt.want.Payload.Binary || got.IdempotencyKey != tt.want.IdempotencyKey {
				t.Fatalf("published %+v (data %q), want %+v (data %q)", got, got.Payload.Data, tt.want, tt.want.Payload.Data)
			}
			if resp.GetPosition().GetEpoch() != "e1" || resp.GetPosition().GetOffset() != uint64(len(pubs)) {
				t.Fatalf("position = %v", resp.GetPosition())
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
	}{
		{fabric.Errorf(fabric.CodeBadRequest, "bad"), codes.InvalidArgument},
		{fabric.Errorf(fabric.CodeUnknownCommand, "x"), codes.InvalidArgument},
		{fabric.Errorf(fabric.CodeUnknownNamespace, `unknown namespace "zz"`), codes.InvalidArgument},
		{fabric.Errorf(fabric.CodeNotFound, "no such user"), codes.NotFound},
		{fabric.Errorf(fabric.CodePermissionDenied, "no"), codes.PermissionDenied},
		{fabric.Errorf(fabric.CodeLimitExceeded, "x"), codes.ResourceExhausted},
		{fabric.Errorf(fabric.CodeRoomFull, "x"), codes.ResourceExhausted},
		{fabric.Errorf(fabric.CodeRateLimited, "x"), codes.ResourceExhausted},
		{fabric.Errorf(fabric.CodeTooLarge, "x"), codes.ResourceExhausted},
		{fabric.Errorf(fabric.CodeNotAvailable, "x"), codes.FailedPrecondition},
		{fabric.Errorf(fabric.CodeNotJoined, "x"), codes.FailedPrecondition},
		{fabric.Errorf(fabric.CodeAlreadyJoined, "x"), codes.FailedPrecondition},
		{fabric.Errorf(fabric.CodeUnavailable, "owner moving"), codes.Unavailable},
		{fabric.Errorf(fabric.CodeTokenExpired, "x"), codes.Unauthenticated},
		{fabric.Errorf(fabric.CodeInternal, "boom"), codes.Internal},
		{fmt.Errorf("wrapped: %w", fabric.Errorf(fabric.CodeNotFound, "gone")), codes.NotFound},
		{errors.New("disk on fire"), codes.Internal},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{fmt.Errorf("publish: %w", context.Canceled), codes.Canceled},
	}
	var mu sync.Mutex
	var next error
	f := &fakeFabric{publish: func(context.Context, fabric.Publication) (fabric.Position, error) {
		mu.Lock()
		defer mu.Unlock()
		return fabric.Position{}, next
	}}
	c := newClient(t, f)
	ctx := testCtx(t)
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			mu.Lock()
			next = tt.err
			mu.Unlock()
			_, err := c.Publish(ctx, &pb.PublishRequest{Room: "r", Payload: textPayload("1")})
			wantCode(t, err, tt.code)
			st := status.Convert(err)
			if tt.code == codes.Internal {
				if st.Message() != "internal error" {
					t.Fatalf("internal detail leaked: %q", st.Message())
				}
			}
			var fe *fabric.Error
			if errors.As(tt.err, &fe) {
				details := st.Details()
				if len(details) != 1 {
					t.Fatalf("details = %v", details)
				}
				d, ok := details[0].(*pb.Error)
				if !ok || d.GetCode() != pb.ErrorCode(fe.Code) || d.GetTemporary() != fe.Code.Temporary() {
					t.Fatalf("detail = %v, want code %v", details[0], fe.Code)
				}
			}
		})
	}
}

func TestBroadcast(t *testing.T) {
	f := &fakeFabric{publish: func(_ context.Context, p fabric.Publication) (fabric.Position, error) {
		if strings.HasPrefix(p.Room, "closed:") {
			return fabric.Position{}, fabric.Errorf(fabric.CodePermissionDenied, "namespace closed forbids publishing")
		}
		return fabric.Position{Epoch: "e-" + p.Room, Offset: 7}, nil
	}}
	c := newClient(t, f)
	ctx := testCtx(t)

	rooms := []string{"a", "closed:x", "bad room", "b"}
	for i := range 40 {
		rooms = append(rooms, fmt.Sprintf("many:%02d", i))
	}
	resp, err := c.Broadcast(ctx, &pb.BroadcastRequest{Rooms: rooms, Payload: textPayload(`{"n":1}`), IdempotencyKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != len(rooms) {
		t.Fatalf("%d results for %d rooms", len(resp.GetResults()), len(rooms))
	}
	for i, r := range resp.GetResults() {
		if r.GetRoom() != rooms[i] {
			t.Fatalf("result %d is for room %q, want %q (order lost)", i, r.GetRoom(), rooms[i])
		}
		switch rooms[i] {
		case "closed:x":
			if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED || r.GetPosition() != nil {
				t.Fatalf("closed room result = %v", r)
			}
		case "bad room":
			if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_BAD_REQUEST {
				t.Fatalf("bad room result = %v", r)
			}
		default:
			if r.GetError() != nil || r.GetPosition().GetEpoch() != "e-"+rooms[i] {
				t.Fatalf("result for %q = %v", rooms[i], r)
			}
		}
	}
	for _, p := range f.published() {
		if p.IdempotencyKey != "k" || string(p.Payload.Data) != `{"n":1}` {
			t.Fatalf("published %+v", p)
		}
	}

	t.Run("validation", func(t *testing.T) {
		tooMany := make([]string, MaxBroadcastRooms+1)
		for i := range tooMany {
			tooMany[i] = fmt.Sprintf("r%d", i)
		}
		for name, req := range map[string]*pb.BroadcastRequest{
			"no rooms":        {Payload: textPayload("1")},
			"too many rooms":  {Rooms: tooMany, Payload: textPayload("1")},
			"missing payload": {Rooms: []string{"a"}},
		} {
			_, err := c.Broadcast(ctx, req)
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s: code %v, want InvalidArgument", name, status.Code(err))
			}
		}
	})
}

func TestPublishStreamOrderAndErrors(t *testing.T) {
	f := &fakeFabric{}
	var mu sync.Mutex
	var offset uint64
	f.publish = func(_ context.Context, p fabric.Publication) (fabric.Position, error) {
		if strings.HasPrefix(p.Room, "deny:") {
			return fabric.Position{}, fabric.Errorf(fabric.CodePermissionDenied, "denied")
		}
		if p.Room == "slow:down" {
			return fabric.Position{}, fabric.Errorf(fabric.CodeRateLimited, "slow down")
		}
		mu.Lock()
		defer mu.Unlock()
		offset++
		return fabric.Position{Epoch: "e", Offset: offset}, nil
	}
	c := newClient(t, f)
	stream, err := c.PublishStream(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}

	const n = 600 // more than the internal queues, so backpressure is exercised
	type want struct {
		code pb.ErrorCode
	}
	wants := make([]want, n)
	go func() {
		// The sender is the test's own goroutine and ends with CloseSend.
		for i := range n {
			req := &pb.PublishStreamRequest{RequestId: uint64(1000 + i), Room: "ok:room", Payload: textPayload(fmt.Sprint(i))}
			switch i % 5 {
			case 1:
				req.Room = "deny:x"
			case 2:
				req.Room = ""
			case 3:
				req.Payload = nil
			case 4:
				if i%10 == 9 {
					req.Room = "slow:down"
				}
			}
			if err := stream.Send(req); err != nil {
				t.Errorf("Send: %v", err)
				return
			}
		}
		stream.CloseSend()
	}()
	for i := range n {
		switch i % 5 {
		case 1:
			wants[i] = want{code: pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED}
		case 2, 3:
			wants[i] = want{code: pb.ErrorCode_ERROR_CODE_BAD_REQUEST}
		case 4:
			if i%10 == 9 {
				wants[i] = want{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED}
			}
		}
	}
	acks, err := recvAll(stream.Recv)
	if err != nil {
		t.Fatalf("stream ended with %v after %d acks", err, len(acks))
	}
	if len(acks) != n {
		t.Fatalf("%d acks for %d publishes", len(acks), n)
	}
	var lastOffset uint64
	for i, a := range acks {
		if a.GetRequestId() != uint64(1000+i) {
			t.Fatalf("ack %d has request id %d: out of order", i, a.GetRequestId())
		}
		if got := a.GetError().GetCode(); got != wants[i].code {
			t.Fatalf("ack %d: error code %v, want %v (%v)", i, got, wants[i].code, a.GetError())
		}
		if wants[i].code == pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
			if a.GetPosition().GetOffset() != lastOffset+1 {
				t.Fatalf("ack %d: offset %d after %d", i, a.GetPosition().GetOffset(), lastOffset)
			}
			lastOffset = a.GetPosition().GetOffset()
		}
		if wants[i].code == pb.ErrorCode_ERROR_CODE_RATE_LIMITED && !a.GetError().GetTemporary() {
			t.Fatalf("rate limited error not marked temporary: %v", a.GetError())
		}
	}
	// The fabric saw the successful publishes in request order.
	pubs := f.published()
	prev := -1
	for _, p := range pubs {
		var i int
		fmt.Sscan(string(p.Payload.Data), &i)
		if i <= prev {
			t.Fatalf("publish %d after %d: out of order", i, prev)
		}
		prev = i
	}
}

func TestUnaryRPCs(t *testing.T) {
	type call struct {
		mu   sync.Mutex
		args []any
	}
	var got call
	record := func(args ...any) {
		got.mu.Lock()
		got.args = args
		got.mu.Unlock()
	}
	f := &fakeFabric{
		sendToUser: func(_ context.Context, user string, p fabric.Payload) (int, error) {
			record(user, string(p.Data))
			if user == "ghost" {
				return 0, fabric.Errorf(fabric.CodeNotFound, "user %q is offline", user)
			}
			return 3, nil
		},
		sendToConn: func(_ context.Context, conn string, p fabric.Payload) error {
			record(conn, string(p.Data))
			return nil
		},
		joinRoom: func(_ context.Context, room string, t fabric.Target) (int, error) {
			record(room, t)
			return 2, nil
		},
		leaveRoom: func(_ context.Context, room string, t fabric.Target) (int, error) {
			record(room, t)
			return 1, nil
		},
		kick: func(_ context.Context, t fabric.Target, k fabric.Kick) (int, error) {
			record(t, k)
			return 4, nil
		},
	}
	c := newClient(t, f)
	ctx := testCtx(t)
	user := &pb.Target{Target: &pb.Target_User{User: "alice"}}
	conn := &pb.Target{Target: &pb.Target_Connection{Connection: "1a@n1"}}

	tests := []struct {
		name  string
		call  func() (proto.Message, error)
		code  codes.Code
		want  []any // recorded fabric arguments, when OK
		count uint32
	}{
		{"send to user", func() (proto.Message, error) {
			return c.SendToUser(ctx, &pb.SendToUserRequest{User: "alice", Payload: textPayload(`"hi"`)})
		}, codes.OK, []any{"alice", `"hi"`}, 3},
		{"send to offline user", func() (proto.Message, error) {
			return c.SendToUser(ctx, &pb.SendToUserRequest{User: "ghost", Payload: textPayload(`"hi"`)})
		}, codes.NotFound, nil, 0},
		{"send to user: empty user", func() (proto.Message, error) {
			return c.SendToUser(ctx, &pb.SendToUserRequest{Payload: textPayload(`1`)})
		}, codes.InvalidArgument, nil, 0},
		{"send to user: missing payload", func() (proto.Message, error) {
			return c.SendToUser(ctx, &pb.SendToUserRequest{User: "alice"})
		}, codes.InvalidArgument, nil, 0},
		{"send to connection", func() (proto.Message, error) {
			return c.SendToConnection(ctx, &pb.SendToConnectionRequest{Connection: "1a@n1", Payload: textPayload(`2`)})
		}, codes.OK, []any{"1a@n1", `2`}, 0},
		{"send to connection: empty", func() (proto.Message, error) {
			return c.SendToConnection(ctx, &pb.SendToConnectionRequest{Payload: textPayload(`2`)})
		}, codes.InvalidArgument, nil, 0},
		{"send to connection: malformed id", func() (proto.Message, error) {
			return c.SendToConnection(ctx, &pb.SendToConnectionRequest{Connection: "no-node", Payload: textPayload(`2`)})
		}, codes.InvalidArgument, nil, 0},
		{"join user", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:a", Target: user})
		}, codes.OK, []any{"chat:a", fabric.Target{User: "alice"}}, 2},
		{"join connection", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:a", Target: conn})
		}, codes.OK, []any{"chat:a", fabric.Target{Conn: "1a@n1"}}, 2},
		{"join: empty room", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Target: user})
		}, codes.InvalidArgument, nil, 0},
		{"join: missing target", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:a"})
		}, codes.InvalidArgument, nil, 0},
		{"join: empty target", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:a", Target: &pb.Target{}})
		}, codes.InvalidArgument, nil, 0},
		{"join: empty user", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:a", Target: &pb.Target{Target: &pb.Target_User{}}})
		}, codes.InvalidArgument, nil, 0},
		{"join: malformed connection", func() (proto.Message, error) {
			return c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:a", Target: &pb.Target{Target: &pb.Target_Connection{Connection: "x@"}}})
		}, codes.InvalidArgument, nil, 0},
		{"leave user", func() (proto.Message, error) {
			return c.LeaveRoom(ctx, &pb.LeaveRoomRequest{Room: "chat:a", Target: user})
		}, codes.OK, []any{"chat:a", fabric.Target{User: "alice"}}, 1},
		{"leave: bad room", func() (proto.Message, error) {
			return c.LeaveRoom(ctx, &pb.LeaveRoomRequest{Room: "chat a", Target: user})
		}, codes.InvalidArgument, nil, 0},
		{"leave: missing target", func() (proto.Message, error) {
			return c.LeaveRoom(ctx, &pb.LeaveRoomRequest{Room: "chat:a"})
		}, codes.InvalidArgument, nil, 0},
		{"kick default reconnect code", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Reconnect: true, Reason: "bye"})
		}, codes.OK, []any{fabric.Target{User: "alice"}, fabric.Kick{Code: fabric.CloseKicked, Reason: "bye", Reconnect: true}}, 4},
		{"kick default no-reconnect code", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: conn})
		}, codes.OK, []any{fabric.Target{Conn: "1a@n1"}, fabric.Kick{Code: fabric.CloseForbidden}}, 4},
		{"kick custom reconnect code", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Code: 4499, Reconnect: true})
		}, codes.OK, []any{fabric.Target{User: "alice"}, fabric.Kick{Code: 4499, Reconnect: true}}, 4},
		{"kick custom final code", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Code: 4500})
		}, codes.OK, []any{fabric.Target{User: "alice"}, fabric.Kick{Code: 4500}}, 4},
		{"kick: final code with reconnect", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Code: 4500, Reconnect: true})
		}, codes.InvalidArgument, nil, 0},
		{"kick: reconnect code without reconnect", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Code: 4003})
		}, codes.InvalidArgument, nil, 0},
		{"kick: code below range", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Code: 1000, Reconnect: true})
		}, codes.InvalidArgument, nil, 0},
		{"kick: code above range", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Code: 5000})
		}, codes.InvalidArgument, nil, 0},
		{"kick: reason too long", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{Target: user, Reason: strings.Repeat("é", 61)})
		}, codes.InvalidArgument, nil, 0},
		{"kick: missing target", func() (proto.Message, error) {
			return c.Kick(ctx, &pb.KickRequest{})
		}, codes.InvalidArgument, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			record()
			resp, err := tt.call()
			wantCode(t, err, tt.code)
			got.mu.Lock()
			args := got.args
			got.mu.Unlock()
			if tt.code != codes.OK {
				if tt.code == codes.InvalidArgument && len(args) != 0 {
					t.Fatalf("invalid request reached the fabric with %v", args)
				}
				return
			}
			if fmt.Sprint(args) != fmt.Sprint(tt.want) {
				t.Fatalf("fabric got %v, want %v", args, tt.want)
			}
			if m, ok := resp.(interface{ GetConnections() uint32 }); ok && m.GetConnections() != tt.count {
				t.Fatalf("connections = %d, want %d", m.GetConnections(), tt.count)
			}
		})
	}
}

func TestPresenceAndHistory(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_123)
	var gotQuery fabric.HistoryQuery
	var mu sync.Mutex
	f := &fakeFabric{
		presence: func(_ context.Context, room string) ([]fabric.Member, error) {
			if room == "nopresence:x" {
				return nil, fabric.Errorf(fabric.CodeNotAvailable, "presence is off for namespace %q", "nopresence")
			}
			return []fabric.Member{
				{User: "alice", Conns: []string{"1@n", "2@n"}, Info: []byte(`{"name":"Alice"}`)},
				{User: "bob", Conns: []string{"3@n"}},
			}, nil
		},
		stats: func(context.Context, string) (fabric.Stats, error) { return fabric.Stats{Users: 2, Conns: 3}, nil },
		history: func(_ context.Context, room string, q fabric.HistoryQuery) (fabric.History, error) {
			mu.Lock()
			gotQuery = q
			mu.Unlock()
			if q.Since != nil && q.Since.Epoch != "e" {
				return fabric.History{}, fabric.Errorf(fabric.CodeNotAvailable, "position of another epoch")
			}
			return fabric.History{
				Pos: fabric.Position{Epoch: "e", Offset: 9},
				Messages: []*fabric.Message{
					{Room: room, Pos: fabric.Position{Epoch: "e", Offset: 8}, Payload: fabric.Payload{Data: []byte(`{"t":"hi","n":2}`)}, Time: at},
					{Room: room, Pos: fabric.Position{Epoch: "e", Offset: 9}, Payload: fabric.Payload{Data: []byte{0xff, 0}, Binary: true},
						Publisher: fabric.ClientInfo{User: "alice", Conn: "1@n", Info: []byte(`"A"`)}, Time: at},
				},
			}, nil
		},
	}
	c := newClient(t, f)
	ctx := testCtx(t)

	t.Run("presence", func(t *testing.T) {
		resp, err := c.GetPresence(ctx, &pb.GetPresenceRequest{Room: "chat:a"})
		if err != nil {
			t.Fatal(err)
		}
		m := resp.GetMembers()
		if len(m) != 2 || m[0].GetUser() != "alice" || strings.Join(m[0].GetConnections(), ",") != "1@n,2@n" ||
			m[0].GetInfo().GetStructValue().GetFields()["name"].GetStringValue() != "Alice" || m[1].GetInfo() != nil {
			t.Fatalf("members = %v", m)
		}
		_, err = c.GetPresence(ctx, &pb.GetPresenceRequest{Room: "nopresence:x"})
		wantCode(t, err, codes.FailedPrecondition)
		_, err = c.GetPresence(ctx, &pb.GetPresenceRequest{})
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("stats", func(t *testing.T) {
		resp, err := c.GetPresenceStats(ctx, &pb.GetPresenceStatsRequest{Room: "chat:a"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetUsers() != 2 || resp.GetConnections() != 3 {
			t.Fatalf("stats = %v", resp)
		}
		_, err = c.GetPresenceStats(ctx, &pb.GetPresenceStatsRequest{})
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("history", func(t *testing.T) {
		resp, err := c.GetHistory(ctx, &pb.GetHistoryRequest{Room: "chat:a", Since: &pb.Position{Epoch: "e", Offset: 7}, Limit: 5, Reverse: true})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		q := gotQuery
		mu.Unlock()
		if q.Since == nil || *q.Since != (fabric.Position{Epoch: "e", Offset: 7}) || q.Limit != 5 || !q.Reverse {
			t.Fatalf("query = %+v", q)
		}
		if resp.GetPosition().GetOffset() != 9 || len(resp.GetMessages()) != 2 {
			t.Fatalf("history = %v", resp)
		}
		m0, m1 := resp.GetMessages()[0], resp.GetMessages()[1]
		fields := m0.GetPayload().GetJson().GetStructValue().GetFields()
		if m0.GetRoom() != "chat:a" || m0.GetOffset() != 8 || m0.GetEpoch() != "e" || fields["t"].GetStringValue() != "hi" ||
			fields["n"].GetNumberValue() != 2 || m0.GetTimeUnixMs() != at.UnixMilli() || m0.GetPublisher() != nil {
			t.Fatalf("message 0 = %v", m0)
		}
		if string(m1.GetPayload().GetBinary()) != "\xff\x00" || m1.GetPublisher().GetUser() != "alice" ||
			m1.GetPublisher().GetConnection() != "1@n" || m1.GetPublisher().GetInfo().GetStringValue() != "A" {
			t.Fatalf("message 1 = %v", m1)
		}
	})
	t.Run("history limits", func(t *testing.T) {
		for _, tc := range []struct{ limit, want uint32 }{{0, MaxHistoryLimit}, {5000, MaxHistoryLimit}, {1, 1}} {
			if _, err := c.GetHistory(ctx, &pb.GetHistoryRequest{Room: "chat:a", Limit: tc.limit}); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			q := gotQuery
			mu.Unlock()
			if q.Limit != int(tc.want) || q.Since != nil {
				t.Fatalf("limit %d: query %+v", tc.limit, q)
			}
		}
		_, err := c.GetHistory(ctx, &pb.GetHistoryRequest{Room: "chat:a", Since: &pb.Position{Epoch: "old"}})
		wantCode(t, err, codes.FailedPrecondition)
		_, err = c.GetHistory(ctx, &pb.GetHistoryRequest{})
		wantCode(t, err, codes.InvalidArgument)
	})
}

func TestListRooms(t *testing.T) {
	f := &fakeFabric{rooms: []string{"chat:a", "chat:b", "chat:c", "chat:d", "chat:e", "news:x"}}
	c := newClient(t, f)
	ctx := testCtx(t)

	var names []string
	token := ""
	pages := 0
	for {
		resp, err := c.ListRooms(ctx, &pb.ListRoomsRequest{Prefix: "chat:", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range resp.GetRooms() {
			names = append(names, r.GetName())
			if r.GetUsers() != 1 || r.GetConnections() != 2 || r.GetPosition().GetOffset() != 3 || r.GetOwner() != "n1" {
				t.Fatalf("room = %v", r)
			}
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	if strings.Join(names, ",") != "chat:a,chat:b,chat:c,chat:d,chat:e" || pages != 3 {
		t.Fatalf("rooms %v in %d pages", names, pages)
	}

	resp, err := c.ListRooms(ctx, &pb.ListRoomsRequest{})
	if err != nil || len(resp.GetRooms()) != 6 || resp.GetNextPageToken() != "" {
		t.Fatalf("default page: %v, %v", resp, err)
	}
	for name, req := range map[string]*pb.ListRoomsRequest{
		"page size too large": {PageSize: MaxPageSize + 1},
		"malformed token":     {PageToken: "!!!"},
		"padded token":        {PageToken: "YQ=="},
	} {
		_, err := c.ListRooms(ctx, req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: code %v, want InvalidArgument", name, status.Code(err))
		}
	}
}

func TestListNodes(t *testing.T) {
	started := time.Unix(1_700_000_000, 0)
	f := &fakeFabric{listNodes: func(context.Context) ([]fabric.NodeInfo, error) {
		return []fabric.NodeInfo{
			{Name: "n1", State: fabric.NodeActive, ClientAddr: ":8080", ControlAddr: ":9090", Version: "v1", Conns: 10, Rooms: 2, Shards: 64, StartedAt: started},
			{Name: "n2", State: fabric.NodeDraining},
			{Name: "n3", State: fabric.NodeSuspect},
		}, nil
	}}
	c := newClient(t, f)
	ctx := testCtx(t)

	all, err := c.ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.GetNodes()) != 3 || all.GetNextPageToken() != "" {
		t.Fatalf("all nodes = %v", all)
	}
	n1 := all.GetNodes()[0]
	if n1.GetName() != "n1" || n1.GetState() != pb.NodeState_NODE_STATE_ACTIVE || n1.GetClientAddress() != ":8080" ||
		n1.GetControlAddress() != ":9090" || n1.GetVersion() != "v1" || n1.GetConnections() != 10 || n1.GetRooms() != 2 ||
		n1.GetShards() != 64 || !n1.GetStartedAt().AsTime().Equal(started) {
		t.Fatalf("n1 = %v", n1)
	}
	if all.GetNodes()[1].GetState() != pb.NodeState_NODE_STATE_DRAINING || all.GetNodes()[2].GetState() != pb.NodeState_NODE_STATE_SUSPECT {
		t.Fatalf("states = %v", all.GetNodes())
	}

	p1, err := c.ListNodes(ctx, &pb.ListNodesRequest{PageSize: 2})
	if err != nil || len(p1.GetNodes()) != 2 || p1.GetNextPageToken() == "" {
		t.Fatalf("page 1 = %v, %v", p1, err)
	}
	p2, err := c.ListNodes(ctx, &pb.ListNodesRequest{PageSize: 2, PageToken: p1.GetNextPageToken()})
	if err != nil || len(p2.GetNodes()) != 1 || p2.GetNodes()[0].GetName() != "n3" || p2.GetNextPageToken() != "" {
		t.Fatalf("page 2 = %v, %v", p2, err)
	}
	_, err = c.ListNodes(ctx, &pb.ListNodesRequest{PageToken: "%%"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.ListNodes(ctx, &pb.ListNodesRequest{PageSize: MaxPageSize + 1})
	wantCode(t, err, codes.InvalidArgument)
}

func TestPanicIsInternal(t *testing.T) {
	f := &fakeFabric{publish: func(_ context.Context, p fabric.Publication) (fabric.Position, error) {
		if p.Room == "boom" {
			panic("fabric bug")
		}
		return fabric.Position{Epoch: "e", Offset: 1}, nil
	}}
	c := newClient(t, f)
	ctx := testCtx(t)
	_, err := c.Publish(ctx, &pb.PublishRequest{Room: "boom", Payload: textPayload("1")})
	wantCode(t, err, codes.Internal)
	// The server survives and keeps serving.
	if _, err := c.Publish(ctx, &pb.PublishRequest{Room: "fine", Payload: textPayload("1")}); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
}
