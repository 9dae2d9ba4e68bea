package mesh

import (
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/roomcast/roomcast/fabric"
)

// userShard is one shard of the user index. users is keyed by user names hashing to
// this shard, conns by connection ids hashing to it (the two maps are independent).
type userShard struct {
	mu    sync.Mutex
	users map[string][]string // user -> conns, connect order
	conns map[string]string   // conn -> user
}

// Connect registers ci.Conn under ci.User. It fails with fabric.ErrLimitExceeded when
// the user already holds maxPerUser connections (0: no limit). Registering the same
// connection again is a no-op.
func (m *Mesh) Connect(ctx context.Context, ci fabric.ClientInfo, maxPerUser int) error {
	if m.closed.Load() {
		return m.errClosed()
	}
	if ci.Conn == "" || ci.User == "" {
		return fabric.Errorf(fabric.CodeBadRequest, "connect needs a user and a connection")
	}
	us := m.users[m.shardIndex(ci.User)]
	us.mu.Lock()
	list := us.users[ci.User]
	switch {
	case slices.Contains(list, ci.Conn):
		us.mu.Unlock()
		return nil
	case maxPerUser > 0 && len(list) >= maxPerUser:
		us.mu.Unlock()
		return fabric.Errorf(fabric.CodeLimitExceeded, "user %q already holds %d connections", ci.User, maxPerUser)
	}
	us.users[ci.User] = append(list, ci.Conn)
	us.mu.Unlock()

	cs := m.users[m.shardIndex(ci.Conn)]
	cs.mu.Lock()
	cs.conns[ci.Conn] = ci.User
	cs.mu.Unlock()
	return nil
}

// Disconnect leaves every room in rooms (as Leave, firing leave events and
// member_left pushes where ci was the user's last connection) and removes ci from the
// user index. It runs to the end even when ctx is done: a closed connection must not
// stay a member.
func (m *Mesh) Disconnect(ctx context.Context, ci fabric.ClientInfo, rooms []string) {
	for _, name := range rooms {
		if err := m.Leave(context.WithoutCancel(ctx), name, ci); err != nil && !errors.Is(err, fabric.ErrNotJoined) {
			m.log.Warn("leave on disconnect failed", "conn", ci.Conn, "room", name, "err", err)
		}
	}
	us := m.users[m.shardIndex(ci.User)]
	us.mu.Lock()
	if list := us.users[ci.User]; list != nil {
		if i := slices.Index(list, ci.Conn); i >= 0 {
			list = slices.Delete(list, i, i+1)
		}
		if len(list) == 0 {
			delete(us.users, ci.User)
		} else {
			us.users[ci.User] = list
		}
	}
	us.mu.Unlock()

	cs := m.users[m.shardIndex(ci.Conn)]
	cs.mu.Lock()
	if cs.conns[ci.Conn] == ci.User {
		delete(cs.conns, ci.Conn)
	}
	cs.mu.Unlock()
}

// userConns returns a copy of the user's connections, oldest first.
func (m *Mesh) userConns(user string) []string {
	us := m.users[m.shardIndex(user)]
	us.mu.Lock()
	defer us.mu.Unlock()
	return slices.Clone(us.users[user])
}

// userOfConn returns the user holding conn, or "" when the index does not know it.
func (m *Mesh) userOfConn(conn string) string {
	cs := m.users[m.shardIndex(conn)]
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.conns[conn]
}

// localConn checks that conn names this node: in a mesh of one every other
// connection id is unknown.
func (m *Mesh) localConn(conn string) error {
	if conn == "" || fabric.NodeOfConn(conn) != m.cfg.Node {
		return fabric.Errorf(fabric.CodeNotFound, "connection %q not found", conn)
	}
	return nil
}

func validateTarget(t fabric.Target) error {
	if (t.User == "") == (t.Conn == "") {
		return fabric.Errorf(fabric.CodeBadRequest, "target needs exactly one of user and connection")
	}
	return nil
}

// SendToUser pushes p to every connection of user and returns how many connections
// it was queued to (0 for a user with no connections).
func (m *Mesh) SendToUser(ctx context.Context, user string, p fabric.Payload) (int, error) {
	if m.closed.Load() {
		return 0, m.errClosed()
	}
	if user == "" {
		return 0, fabric.Errorf(fabric.CodeBadRequest, "user is empty")
	}
	if err := validatePayload(p); err != nil {
		return 0, err
	}
	n := 0
	for _, conn := range m.userConns(user) {
		if err := m.edge().SendToConn(conn, p); err == nil {
			n++
		}
	}
	return n, nil
}

// SendToConn pushes p to one connection. It fails with fabric.ErrNotFound when there
// is no such connection.
func (m *Mesh) SendToConn(ctx context.Context, conn string, p fabric.Payload) error {
	if m.closed.Load() {
		return m.errClosed()
	}
	if err := validatePayload(p); err != nil {
		return err
	}
	if err := m.localConn(conn); err != nil {
		return err
	}
	return m.edge().SendToConn(conn, p)
}

// JoinRoom joins the target's connections to room through the edge (which runs the
// ordinary join flow) and returns how many joined. For a user target, connections
// already in the room or gone meanwhile are skipped; when none joined and some join
// failed otherwise (room full, say), that error is returned. For a connection target
// its error is returned as is (fabric.ErrAlreadyJoined, fabric.ErrNotFound, ...).
func (m *Mesh) JoinRoom(ctx context.Context, room string, t fabric.Target) (int, error) {
	if _, err := m.lookupRoom(room); err != nil {
		return 0, err
	}
	return m.forTarget(t, fabric.ErrAlreadyJoined, func(conn string) error {
		return m.edge().JoinConn(ctx, conn, room)
	})
}

// LeaveRoom removes the target's connections from room through the edge and returns
// how many left, with the same error rules as JoinRoom (fabric.ErrNotJoined is the
// skipped error for user targets).
func (m *Mesh) LeaveRoom(ctx context.Context, room string, t fabric.Target) (int, error) {
	if _, err := m.lookupRoom(room); err != nil {
		return 0, err
	}
	return m.forTarget(t, fabric.ErrNotJoined, func(conn string) error {
		return m.edge().LeaveConn(ctx, conn, room)
	})
}

// Kick disconnects the target's connections with k, emits a kick event per closed
// connection and returns how many were closed. A zero k.Code means CloseKicked.
func (m *Mesh) Kick(ctx context.Context, t fabric.Target, k fabric.Kick) (int, error) {
	if m.closed.Load() {
		return 0, m.errClosed()
	}
	if k.Code == 0 {
		k.Code = fabric.CloseKicked
	}
	return m.forTarget(t, nil, func(conn string) error {
		user := m.userOfConn(conn)
		if err := m.edge().KickConn(conn, k); err != nil {
			return err
		}
		m.hub.emit(fabric.Event{Type: fabric.EventKick, Conn: conn, User: user, Code: k.Code, Reason: k.Reason})
		return nil
	})
}

// forTarget runs do for each connection of t without any mesh lock held and counts
// successes. For a user target, skip errors and fabric.ErrNotFound (a connection that
// closed meanwhile) are not failures.
func (m *Mesh) forTarget(t fabric.Target, skip error, do func(conn string) error) (int, error) {
	if m.closed.Load() {
		return 0, m.errClosed()
	}
	if err := validateTarget(t); err != nil {
		return 0, err
	}
	if t.Conn != "" {
		if err := m.localConn(t.Conn); err != nil {
			return 0, err
		}
		if err := do(t.Conn); err != nil {
			return 0, err
		}
		return 1, nil
	}
	n := 0
	var firstErr error
	for _, conn := range m.userConns(t.User) {
		err := do(conn)
		switch {
		case err == nil:
			n++
		case errors.Is(err, fabric.ErrNotFound), skip != nil && errors.Is(err, skip):
		default:
			if firstErr == nil {
				firstErr = err
			}
			m.log.Debug("target connection failed", "user", t.User, "conn", conn, "err", err)
		}
	}
	if n == 0 && firstErr != nil {
		return 0, firstErr
	}
	return n, nil
}
