package control

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// nextSub waits for the fake's next subscription.
func nextSub(t *testing.T, ch <-chan *fakeSub) *fakeSub {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for a subscription")
		return nil
	}
}

func TestStreamEvents(t *testing.T) {
	subs := make(chan *fakeSub, 4)
	f := &fakeFabric{subscribeCh: subs}
	c := newClient(t, f)

	ctx, cancel := context.WithCancel(testCtx(t))
	stream, err := c.StreamEvents(ctx, &pb.StreamEventsRequest{
		Types:       []pb.EventType{pb.EventType_EVENT_TYPE_JOIN, pb.EventType_EVENT_TYPE_CLIENT_MESSAGE},
		RoomPattern: "chat:*",
		User:        "alice",
		Group:       "billing",
	})
	if err != nil {
		t.Fatal(err)
	}
	// Headers arrive once the subscription is in place.
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	sub := nextSub(t, subs)
	if sub.group != "billing" || sub.buffer != DefaultEventBuffer || sub.filter.RoomPattern != "chat:*" || sub.filter.User != "alice" ||
		len(sub.filter.Types) != 2 || sub.filter.Types[0] != fabric.EventJoin || sub.filter.Types[1] != fabric.EventClientMessage {
		t.Fatalf("subscription = %+v", sub)
	}

	at := time.Unix(1_700_000_000, 5_000_000)
	sent := []fabric.Event{
		{Type: fabric.EventJoin, Time: at, Node: "n1", Conn: "1@n1", User: "alice", Room: "chat:a"},
		{Type: fabric.EventClientMessage, Time: at, Node: "n1", Conn: "1@n1", User: "alice", Room: "chat:a",
			Payload: &fabric.Payload{Data: []byte(`{"q":1}`)}},
		{Type: fabric.EventKick, Time: at, Node: "n1", Conn: "1@n1", User: "alice", Code: fabric.CloseForbidden, Reason: "banned"},
		{Type: fabric.EventGap, Time: at, Missed: 17},
	}
	for _, ev := range sent {
		sub.events <- ev
	}
	var got []*pb.Event
	for range sent {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.GetEvent())
	}
	if e := got[0]; e.GetType() != pb.EventType_EVENT_TYPE_JOIN || !e.GetTime().AsTime().Equal(at) || e.GetNode() != "n1" ||
		e.GetConnection() != "1@n1" || e.GetUser() != "alice" || e.GetRoom() != "chat:a" || e.GetPayload() != nil {
		t.Fatalf("join event = %v", e)
	}
	if e := got[1]; e.GetType() != pb.EventType_EVENT_TYPE_CLIENT_MESSAGE ||
		e.GetPayload().GetJson().GetStructValue().GetFields()["q"].GetNumberValue() != 1 {
		t.Fatalf("client message event = %v", e)
	}
	if e := got[2]; e.GetType() != pb.EventType_EVENT_TYPE_KICK || e.GetCode() != uint32(fabric.CloseForbidden) || e.GetReason() != "banned" {
		t.Fatalf("kick event = %v", e)
	}
	if e := got[3]; e.GetType() != pb.EventType_EVENT_TYPE_GAP || e.GetMissed() != 17 {
		t.Fatalf("gap event = %v", e)
	}

	// The client going away ends the subscription.
	cancel()
	waitClosed(t, sub.closed, "the subscription to close after the client cancelled")
}

func TestStreamEventsValidation(t *testing.T) {
	f := &fakeFabric{subscribeFn: func(filter fabric.EventFilter, group string, buffer int) error {
		if group == "full" {
			return fabric.Errorf(fabric.CodeLimitExceeded, "too many subscribers")
		}
		return nil
	}}
	c := newClient(t, f)
	for _, tc := range []struct {
		name string
		req  *pb.StreamEventsRequest
		code codes.Code
	}{
		{"unspecified type", &pb.StreamEventsRequest{Types: []pb.EventType{pb.EventType_EVENT_TYPE_UNSPECIFIED}}, codes.InvalidArgument},
		{"unknown type", &pb.StreamEventsRequest{Types: []pb.EventType{99}}, codes.InvalidArgument},
		{"star in the middle", &pb.StreamEventsRequest{RoomPattern: "chat:*:x"}, codes.InvalidArgument},
		{"two stars", &pb.StreamEventsRequest{RoomPattern: "**"}, codes.InvalidArgument},
		{"buffer too large", &pb.StreamEventsRequest{Buffer: MaxEventBuffer + 1}, codes.InvalidArgument},
		{"subscribe fails", &pb.StreamEventsRequest{Group: "full"}, codes.ResourceExhausted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := c.StreamEvents(testCtx(t), tc.req)
			if err == nil {
				_, err = stream.Recv()
			}
			wantCode(t, err, tc.code)
		})
	}
}

// TestGracefulStopEndsStreams checks that open streams do not hold a graceful stop
// forever: they end with Unavailable and GracefulStop returns.
func TestGracefulStopEndsStreams(t *testing.T) {
	subs := make(chan *fakeSub, 1)
	f := &fakeFabric{subscribeCh: subs}
	s, err := New(Config{Fabric: f, Tokens: []string{testToken}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(s.Stop) // in case the test fails before its GracefulStop
	c := pb.NewControlServiceClient(dial(t, l.Addr().String(), testToken, nil))
	ctx := testCtx(t)

	events, err := c.StreamEvents(ctx, &pb.StreamEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Header(); err != nil {
		t.Fatal(err)
	}
	sub := nextSub(t, subs)

	pubs, err := c.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pubs.Send(&pb.PublishStreamRequest{RequestId: 1, Room: "r", Payload: textPayload("1")}); err != nil {
		t.Fatal(err)
	}
	if ack, err := pubs.Recv(); err != nil || ack.GetRequestId() != 1 {
		t.Fatalf("ack = %v, %v", ack, err)
	}

	stopped := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(stopped)
	}()
	if _, err := events.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("event stream ended with %v, want Unavailable", err)
	}
	if _, err := pubs.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("publish stream ended with %v, want Unavailable", err)
	}
	waitClosed(t, stopped, "GracefulStop to return")
	waitClosed(t, sub.closed, "the subscription to close")
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestPublishStreamClientCancel checks that a client going away cancels the publish in
// flight and ends the call.
func TestPublishStreamClientCancel(t *testing.T) {
	entered := make(chan struct{})
	left := make(chan struct{})
	f := &fakeFabric{publish: func(ctx context.Context, p fabric.Publication) (fabric.Position, error) {
		close(entered)
		<-ctx.Done()
		close(left)
		return fabric.Position{}, ctx.Err()
	}}
	c := newClient(t, f)
	ctx, cancel := context.WithCancel(testCtx(t))
	stream, err := c.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.PublishStreamRequest{RequestId: 1, Room: "r", Payload: textPayload("1")}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, entered, "the publish to reach the fabric")
	cancel()
	waitClosed(t, left, "the publish to see the cancellation")
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("Recv after cancel = %v, want Canceled", err)
	}
}
