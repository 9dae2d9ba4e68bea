package mesh

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/roomcast/roomcast/fabric"
)

func TestUserIndexLimit(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	c := func(seq uint64) fabric.ClientInfo {
		return fabric.ClientInfo{User: "u", Conn: fabric.ConnID(testNode, seq)}
	}
	for seq := uint64(1); seq <= 2; seq++ {
		if err := env.m.Connect(ctx, c(seq), 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.m.Connect(ctx, c(3), 2); !errors.Is(err, fabric.ErrLimitExceeded) {
		t.Fatalf("third conn: %v", err)
	}
	if err := env.m.Connect(ctx, c(3), 0); err != nil {
		t.Fatalf("no limit: %v", err)
	}
	env.m.Disconnect(ctx, c(1), nil)
	env.m.Disconnect(ctx, c(3), nil)
	if err := env.m.Connect(ctx, c(4), 2); err != nil {
		t.Fatalf("after disconnect: %v", err)
	}
	if got, _ := env.m.userConns(context.Background(), "u"); !reflect.DeepEqual(got, []string{c(2).Conn, c(4).Conn}) {
		t.Fatalf("conns %v", got)
	}
	env.m.Disconnect(ctx, c(2), nil)
	env.m.Disconnect(ctx, c(4), nil)
	for _, us := range env.m.users {
		if len(us.users) != 0 || len(us.conns) != 0 {
			t.Fatalf("index not empty: %v %v", us.users, us.conns)
		}
	}
}

func TestSendToUserAndConn(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	a1, a2, b := env.connect(t, "alice", 1), env.connect(t, "alice", 2), env.connect(t, "bob", 3)
	n, err := env.m.SendToUser(ctx, "alice", fabric.Payload{Data: []byte(`"hi"`)})
	if err != nil || n != 2 {
		t.Fatalf("SendToUser = %d, %v", n, err)
	}
	if n, err := env.m.SendToUser(ctx, "nobody", fabric.Payload{Data: []byte(`1`)}); err != nil || n != 0 {
		t.Fatalf("unknown user = %d, %v", n, err)
	}
	if err := env.m.SendToConn(ctx, b.Conn, fabric.Payload{Data: []byte(`"b"`)}); err != nil {
		t.Fatal(err)
	}
	want := []sent{{a1.Conn, `"hi"`}, {a2.Conn, `"hi"`}, {b.Conn, `"b"`}}
	if got := env.edge.sends(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %v", got)
	}
	for _, tc := range []struct {
		name string
		conn string
		p    fabric.Payload
		want error
	}{
		{"other node", fabric.ConnID("n2", 1), fabric.Payload{Data: []byte(`1`)}, fabric.ErrNotFound},
		{"malformed id", "xyz", fabric.Payload{Data: []byte(`1`)}, fabric.ErrNotFound},
		{"unknown local", fabric.ConnID(testNode, 99), fabric.Payload{Data: []byte(`1`)}, fabric.ErrNotFound},
		{"bad json", b.Conn, fabric.Payload{Data: []byte(`{`)}, fabric.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := env.m.SendToConn(ctx, tc.conn, tc.p); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func TestJoinLeaveRoomByTarget(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	a1, a2, b := env.connect(t, "alice", 1), env.connect(t, "alice", 2), env.connect(t, "bob", 3)
	env.join(t, "chat:t", a1, nil)

	n, err := env.m.JoinRoom(ctx, "chat:t", fabric.Target{User: "alice"})
	if err != nil || n != 1 { // a1 was already in
		t.Fatalf("JoinRoom(user) = %d, %v", n, err)
	}
	if n, err := env.m.JoinRoom(ctx, "chat:t", fabric.Target{Conn: b.Conn}); err != nil || n != 1 {
		t.Fatalf("JoinRoom(conn) = %d, %v", n, err)
	}
	if _, err := env.m.JoinRoom(ctx, "chat:t", fabric.Target{Conn: b.Conn}); !errors.Is(err, fabric.ErrAlreadyJoined) {
		t.Fatalf("JoinRoom(conn) again: %v", err)
	}
	members, _ := env.m.Presence(ctx, "chat:t")
	if len(members) != 2 || !slices.Equal(members[0].Conns, []string{a1.Conn, a2.Conn}) {
		t.Fatalf("presence %+v", members)
	}
	for _, tc := range []struct {
		name string
		t    fabric.Target
		want error
	}{
		{"unknown conn", fabric.Target{Conn: fabric.ConnID(testNode, 99)}, fabric.ErrNotFound},
		{"conn of other node", fabric.Target{Conn: fabric.ConnID("n2", 1)}, fabric.ErrNotFound},
		{"empty target", fabric.Target{}, fabric.ErrBadRequest},
		{"both set", fabric.Target{User: "alice", Conn: a1.Conn}, fabric.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := env.m.JoinRoom(ctx, "chat:t", tc.t); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	if n, err := env.m.JoinRoom(ctx, "chat:t", fabric.Target{User: "nobody"}); n != 0 || err != nil {
		t.Fatalf("unknown user = %d, %v", n, err)
	}
	if _, err := env.m.JoinRoom(ctx, "nope:t", fabric.Target{User: "alice"}); !errors.Is(err, fabric.ErrUnknownNamespace) {
		t.Fatalf("unknown namespace: %v", err)
	}

	if n, err := env.m.LeaveRoom(ctx, "chat:t", fabric.Target{Conn: a1.Conn}); n != 1 || err != nil {
		t.Fatalf("LeaveRoom(conn) = %d, %v", n, err)
	}
	if n, err := env.m.LeaveRoom(ctx, "chat:t", fabric.Target{User: "alice"}); n != 1 || err != nil {
		t.Fatalf("LeaveRoom(user) = %d, %v", n, err)
	}
	if _, err := env.m.LeaveRoom(ctx, "chat:t", fabric.Target{Conn: a1.Conn}); !errors.Is(err, fabric.ErrNotJoined) {
		t.Fatalf("LeaveRoom(conn) again: %v", err)
	}
	if st, _ := env.m.PresenceStats(ctx, "chat:t"); st != (fabric.Stats{Users: 1, Conns: 1}) {
		t.Fatalf("stats %+v", st)
	}
}

func TestJoinRoomByUserReportsRoomFull(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	env.join(t, "small:f", env.connect(t, "a", 1), nil)
	env.join(t, "small:f", env.connect(t, "b", 2), nil)
	env.connect(t, "c", 3)
	if n, err := env.m.JoinRoom(ctx, "small:f", fabric.Target{User: "c"}); n != 0 || !errors.Is(err, fabric.ErrRoomFull) {
		t.Fatalf("JoinRoom = %d, %v", n, err)
	}
}

func TestKick(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	events, err := env.m.Subscribe(fabric.EventFilter{Types: []fabric.EventType{fabric.EventKick}}, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(events.Close)
	a1, a2, b := env.connect(t, "alice", 1), env.connect(t, "alice", 2), env.connect(t, "bob", 3)
	n, err := env.m.Kick(ctx, fabric.Target{User: "alice"}, fabric.Kick{Reason: "bye"})
	if err != nil || n != 2 {
		t.Fatalf("Kick(user) = %d, %v", n, err)
	}
	if n, err := env.m.Kick(ctx, fabric.Target{Conn: b.Conn}, fabric.Kick{Code: fabric.CloseForbidden}); err != nil || n != 1 {
		t.Fatalf("Kick(conn) = %d, %v", n, err)
	}
	if _, err := env.m.Kick(ctx, fabric.Target{Conn: fabric.ConnID(testNode, 42)}, fabric.Kick{}); !errors.Is(err, fabric.ErrNotFound) {
		t.Fatalf("Kick(unknown) = %v", err)
	}
	if got := env.edge.kicks(); !reflect.DeepEqual(got, []string{a1.Conn, a2.Conn, b.Conn}) {
		t.Fatalf("kicked %v", got)
	}
	want := []fabric.Event{
		{Type: fabric.EventKick, Conn: a1.Conn, User: "alice", Code: fabric.CloseKicked, Reason: "bye"},
		{Type: fabric.EventKick, Conn: a2.Conn, User: "alice", Code: fabric.CloseKicked, Reason: "bye"},
		{Type: fabric.EventKick, Conn: b.Conn, User: "bob", Code: fabric.CloseForbidden},
	}
	for _, w := range want {
		ev, err := events.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w.Node, w.Time = testNode, env.clock.Now()
		if !reflect.DeepEqual(ev, w) {
			t.Fatalf("event %+v\nwant  %+v", ev, w)
		}
	}
}
