package fabric

import (
	"context"
	"time"
)

// EventType is the kind of an Event (roomcast.v1.EventType).
type EventType int

// Event types.
const (
	EventConnect       EventType = 1
	EventDisconnect    EventType = 2
	EventJoin          EventType = 3
	EventLeave         EventType = 4
	EventClientMessage EventType = 5
	EventKick          EventType = 6
	EventGap           EventType = 7
)

// String names the type for logs and metrics.
func (t EventType) String() string {
	switch t {
	case EventConnect:
		return "connect"
	case EventDisconnect:
		return "disconnect"
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventClientMessage:
		return "client_message"
	case EventKick:
		return "kick"
	case EventGap:
		return "gap"
	}
	return "unknown"
}

// Event is something that happened on the fabric, for backends following
// StreamEvents. Fields that do not apply to the type are zero.
type Event struct {
	Type    EventType
	Time    time.Time
	Node    string
	Conn    string
	User    string
	Room    string
	Payload *Payload // client messages
	Code    CloseCode
	Reason  string
	Missed  uint64 // EventGap only
}

// EventFilter selects events. Zero fields match everything.
type EventFilter struct {
	Types       []EventType
	RoomPattern string // see MatchPattern; events without a room match only when empty
	User        string
}

// Match reports whether ev passes the filter.
func (f EventFilter) Match(ev *Event) bool {
	if len(f.Types) > 0 {
		ok := false
		for _, t := range f.Types {
			if t == ev.Type {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if f.User != "" && f.User != ev.User {
		return false
	}
	if f.RoomPattern != "" && (ev.Room == "" || !MatchPattern(f.RoomPattern, ev.Room)) {
		return false
	}
	return true
}

// EventStream is one subscription to events.
type EventStream interface {
	// Next blocks until the next event (possibly an EventGap) or until ctx is done.
	Next(ctx context.Context) (Event, error)
	// Close ends the subscription; it is idempotent.
	Close()
}
