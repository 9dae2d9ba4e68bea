package fabric

import "time"

// Payload is application data. When Binary is false, Data holds one JSON value as UTF-8
// text (validated where it enters the fabric) and JSON-frame clients see it verbatim.
type Payload struct {
	Data   []byte
	Binary bool
}

// Position is a point in a room's stream: the epoch names the stream, the offset
// counts its messages (the offset of the last message; 0 before the first).
type Position struct {
	Epoch  string
	Offset uint64
}

// IsZero reports whether p names no position.
func (p Position) IsZero() bool { return p.Epoch == "" && p.Offset == 0 }

// ClientInfo identifies a connection: its user, its id and its public info (raw JSON,
// may be nil).
type ClientInfo struct {
	User string
	Conn string
	Info []byte
}

// Message is one message of a room's stream, as assigned by the room's owner. A
// *Message is immutable once published: receivers share it and must not modify it.
type Message struct {
	Room      string
	Pos       Position
	Payload   Payload
	Publisher ClientInfo // zero when a backend published it
	Time      time.Time
}

// Publication is a request to publish to a room.
type Publication struct {
	Room           string
	Payload        Payload
	Publisher      ClientInfo // zero for backend publishes
	IdempotencyKey string
}

// Member is one user present in a room with their connections there (join order) and
// the public info of their first connection.
type Member struct {
	User  string
	Conns []string
	Info  []byte
}

// Stats counts a room's presence.
type Stats struct {
	Users int
	Conns int
}

// JoinResult is the owner's answer to a join.
type JoinResult struct {
	// Pos is the room's position at the moment of the join: the connection receives
	// every message after it.
	Pos Position
	// Recoverable is true when the namespace keeps history.
	Recoverable bool
	// Recovered is true when a recovery position was given and Missed holds every
	// message after it.
	Recovered bool
	// Missed holds the messages after the recovery position, oldest first.
	Missed []*Message
}

// HistoryQuery selects retained messages.
type HistoryQuery struct {
	Since   *Position // nil: from the oldest retained
	Limit   int       // <= 0: the server's maximum
	Reverse bool      // newest first
}

// History is an answer to a HistoryQuery.
type History struct {
	Messages []*Message
	Pos      Position // the room's current position
}

// RoomSummary describes a room for listings.
type RoomSummary struct {
	Name  string
	Stats Stats
	Pos   Position
	Owner string
}

// NodeState is a node's lifecycle state (roomcast.v1.NodeState).
type NodeState int

// Node states.
const (
	NodeActive   NodeState = 1
	NodeDraining NodeState = 2
	NodeSuspect  NodeState = 3
)

// NodeInfo describes a node for listings.
type NodeInfo struct {
	Name        string
	State       NodeState
	ClientAddr  string
	ControlAddr string
	Version     string
	Conns       int
	Rooms       int
	Shards      int
	StartedAt   time.Time
}

// Target selects connections: every connection of User, or the one connection Conn.
// Exactly one is set.
type Target struct {
	User string
	Conn string
}

// Kick describes a server-initiated disconnect.
type Kick struct {
	Code      CloseCode
	Reason    string
	Reconnect bool
}
