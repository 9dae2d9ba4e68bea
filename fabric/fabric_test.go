package fabric

import (
	"errors"
	"fmt"
	"testing"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// The fabric's codes are the public contract's numbers: edges convert by cast.
func TestCodesMatchContract(t *testing.T) {
	for name, v := range pb.ErrorCode_value {
		if v == 0 {
			continue
		}
		e := &Error{Code: Code(v)}
		if !errors.Is(e, sentinelFor(t, Code(v))) {
			t.Errorf("%s (%d) has no fabric sentinel", name, v)
		}
	}
	for name, v := range pb.CloseCode_value {
		if v == 0 {
			continue
		}
		if CloseCode(v).String() == "other" {
			t.Errorf("%s (%d) has no fabric close code", name, v)
		}
	}
	for name, v := range pb.EventType_value {
		if v != 0 && EventType(v).String() == "unknown" {
			t.Errorf("%s (%d) has no fabric event type", name, v)
		}
	}
}

func sentinelFor(t *testing.T, c Code) error {
	for _, s := range []*Error{ErrInternal, ErrBadRequest, ErrUnknownCommand, ErrUnknownNamespace,
		ErrPermissionDenied, ErrNotJoined, ErrAlreadyJoined, ErrLimitExceeded, ErrRoomFull,
		ErrRateLimited, ErrNotAvailable, ErrNotFound, ErrTokenExpired, ErrUnavailable, ErrTooLarge} {
		if s.Code == c {
			return s
		}
	}
	t.Fatalf("no sentinel for code %d", c)
	return nil
}

func TestErrorsMatchByCode(t *testing.T) {
	err := fmt.Errorf("join: %w", Errorf(CodeRoomFull, "room %q is full", "chat:x"))
	if !errors.Is(err, ErrRoomFull) || errors.Is(err, ErrNotFound) {
		t.Fatalf("errors.Is by code failed for %v", err)
	}
	if CodeOf(err) != CodeRoomFull || CodeOf(errors.New("x")) != CodeInternal {
		t.Fatal("CodeOf")
	}
}

func TestCloseCodeAdvice(t *testing.T) {
	for _, tc := range []struct {
		code                 CloseCode
		reconnect, immediate bool
	}{
		{CloseShutdown, true, true},
		{CloseSlow, true, false},
		{CloseKicked, true, false},
		{CloseMessageTooBig, true, false},
		{CloseUnauthorized, false, false},
		{CloseForbidden, false, false},
		{CloseConnectExpected, false, false},
	} {
		if tc.code.Reconnect() != tc.reconnect || tc.code.Immediate() != tc.immediate {
			t.Errorf("%v: reconnect=%v immediate=%v", tc.code, tc.code.Reconnect(), tc.code.Immediate())
		}
	}
}

func TestMatchPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"chat:*", "chat:lobby", true},
		{"chat:*", "chat:", true},
		{"chat:*", "chatty:x", false},
		{"chat:lobby", "chat:lobby", true},
		{"chat:lobby", "chat:lobby2", false},
		{"*", "anything", true},
		{"ch*t", "chat", false}, // only a trailing '*' is a wildcard
		{"", "x", false},
	} {
		if got := MatchPattern(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchPattern(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
}

func TestValidateRoom(t *testing.T) {
	for _, bad := range []string{"", "a b", "chat:*", "x\x00", string(make([]byte, MaxRoomLen+1)), "\xff"} {
		if ValidateRoom(bad) == nil {
			t.Errorf("ValidateRoom(%q) accepted", bad)
		}
	}
	for _, good := range []string{"chat:lobby", "lobby", "doc:42/cursor", "chat:ünïcode"} {
		if err := ValidateRoom(good); err != nil {
			t.Errorf("ValidateRoom(%q): %v", good, err)
		}
	}
}

func TestConnID(t *testing.T) {
	id := ConnID("node-1", 12345)
	if NodeOfConn(id) != "node-1" {
		t.Fatalf("NodeOfConn(%q) = %q", id, NodeOfConn(id))
	}
	for _, bad := range []string{"", "abc", "abc@", "@node"} {
		if NodeOfConn(bad) != "" {
			t.Errorf("NodeOfConn(%q) should be empty", bad)
		}
	}
}

func TestNamespacesReplaceIsAllOrNothing(t *testing.T) {
	ns, err := NewNamespaces([]Namespace{{Name: "chat", Presence: true}})
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Replace([]Namespace{{Name: "ok"}, {Name: "bad name"}}); err == nil {
		t.Fatal("invalid namespace accepted")
	}
	if _, err := ns.Lookup("chat:x"); err != nil {
		t.Fatalf("old table lost after a refused replace: %v", err)
	}
	if _, err := ns.Lookup("ok:x"); !errors.Is(err, ErrUnknownNamespace) {
		t.Fatalf("half-applied replace: %v", err)
	}
	if err := ns.Replace([]Namespace{{Name: "a"}, {Name: "a"}}); err == nil {
		t.Fatal("duplicate namespace accepted")
	}
}

func TestEventFilter(t *testing.T) {
	ev := &Event{Type: EventJoin, User: "u1", Room: "chat:a"}
	for _, tc := range []struct {
		f    EventFilter
		want bool
	}{
		{EventFilter{}, true},
		{EventFilter{Types: []EventType{EventLeave}}, false},
		{EventFilter{Types: []EventType{EventLeave, EventJoin}}, true},
		{EventFilter{User: "u2"}, false},
		{EventFilter{RoomPattern: "chat:*"}, true},
		{EventFilter{RoomPattern: "news:*"}, false},
	} {
		if got := tc.f.Match(ev); got != tc.want {
			t.Errorf("%+v.Match = %v", tc.f, got)
		}
	}
	if (EventFilter{RoomPattern: "*"}).Match(&Event{Type: EventConnect}) {
		t.Error("a room filter must not match events without a room")
	}
}
