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
//
// In cluster mode users is owner state (like rooms: reset when the shard's epoch
// advances, rebuilt from every node's local connections), while conns only ever holds
// this node's own connections: it is the node's ledger of local connections.
type userShard struct {
	mu     sync.Mutex
	users  map[string][]string // user -> conns, connect order
	conns  map[string]string   // conn -> user
	epochN int64               // shard-map epoch of users (0 in a mesh of one)
}

// lockUsers locks the user shard of user as owner state of epoch e, resetting it
// when e is newer; an older e fails with errNotOwner.
func (m *Mesh) lockUsers(user string, e ep) (*userShard, error) {
	us := m.users[m.shardIndex(user)]
	us.mu.Lock()
	if e.n != us.epochN {
		if e.n < us.epochN {
			us.mu.Unlock()
			return nil, errNotOwner
		}
		us.users = make(map[string][]string)
		us.epochN = e.n
	}
	return us, nil
}

// userAddLocal adds conn to user's entry at the owner of the user's shard.
func (m *Mesh) userAddLocal(user, conn string, maxPerUser int, e ep) error {
	us, err := m.lockUsers(user, e)
	if err != nil {
		return err
	}
	defer us.mu.Unlock()
	list := us.users[user]
	switch {
	case slices.Contains(list, conn):
		return nil
	case maxPerUser > 0 && len(list) >= maxPerUser:
		return fabric.Errorf(fabric.CodeLimitExceeded, "user %q already holds %d connections", user, maxPerUser)
	}
	us.users[user] = append(list, conn)
	return nil
}

// userRemoveLocal removes conn from user's entry at the owner of the user's shard.
func (m *Mesh) userRemoveLocal(user, conn string, e ep) error {
	us, err := m.lockUsers(user, e)
	if err != nil {
		return err
	}
	defer us.mu.Unlock()
	if list := us.users[user]; list != nil {
		if i := slices.Index(list, conn); i >= 0 {
			list = slices.Delete(list, i, i+1)
		}
		if len(list) == 0 {
			delete(us.users, user)
		} else {
			us.users[user] = list
		}
	}
	return nil
}

// userConnsLocal returns a copy of the user's connections, oldest first, at the owner
// of the user's shard.
func (m *Mesh) userConnsLocal(user string, e ep) ([]string, error) {
	us, err := m.lockUsers(user, e)
	if err != nil {
		return nil, err
	}
	defer us.mu.Unlock()
	return slices.Clone(us.users[user]), nil
}

// connIndexAdd records which user holds conn.
func (m *Mesh) connIndexAdd(conn, user string) {
	cs := m.users[m.shardIndex(conn)]
	cs.mu.Lock()
	cs.conns[conn] = user
	cs.mu.Unlock()
}

// connIndexRemove forgets conn if user holds it.
func (m *Mesh) connIndexRemove(conn, user string) {
	cs := m.users[m.shardIndex(conn)]
	cs.mu.Lock()
	if cs.conns[conn] == user {
		delete(cs.conns, conn)
	}
	cs.mu.Unlock()
}

// Connect registers ci.Conn under ci.User. It fails with fabric.ErrLimitExceeded when
// the user already holds maxPerUser connections (0: no limit). Registering the same
// connection again is a no-op. In cluster mode the user's entry lives at the owner of
// the user's shard.
func (m *Mesh) Connect(ctx context.Context, ci fabric.ClientInfo, maxPerUser int) error {
	if m.closed.Load() {
		return m.errClosed()
	}
	if ci.Conn == "" || ci.User == "" {
		return fabric.Errorf(fabric.CodeBadRequest, "connect needs a user and a connection")
	}
	if m.cl != nil {
		if err := m.cl.userIndex(ctx, ci.User, ci.Conn, true, maxPerUser); err != nil {
			return err
		}
	} else if err := m.userAddLocal(ci.User, ci.Conn, maxPerUser, ep{s: m.epoch}); err != nil {
		return err
	}
	m.connIndexAdd(ci.Conn, ci.User)
	return nil
}

// Disconnect leaves every room in rooms (as Leave, firing leave events and
// member_left pushes where ci was the user's last connection) and removes ci from the
// user index. It runs to the end even when ctx is done: a closed connection must not
// stay a member.
func (m *Mesh) Disconnect(ctx context.Context, ci fabric.ClientInfo, rooms []string) {
	ctx = context.WithoutCancel(ctx)
	for _, name := range rooms {
		if err := m.Leave(ctx, name, ci); err != nil && !errors.Is(err, fabric.ErrNotJoined) {
			m.log.Warn("leave on disconnect failed", "conn", ci.Conn, "room", name, "err", err)
		}
	}
	m.connIndexRemove(ci.Conn, ci.User)
	if m.cl != nil {
		if err := m.cl.userIndex(ctx, ci.User, ci.Conn, false, 0); err != nil {
			m.log.Debug("user index remove failed", "conn", ci.Conn, "err", err)
		}
		return
	}
	_ = m.userRemoveLocal(ci.User, ci.Conn, ep{s: m.epoch})
}

// userConns returns the user's connections (across the cluster), oldest first.
func (m *Mesh) userConns(ctx context.Context, user string) ([]string, error) {
	if m.cl != nil {
		return m.cl.userConns(ctx, user)
	}
	return m.userConnsLocal(user, ep{s: m.epoch})
}

// userOfConn returns the user holding a local conn, or "" when the index does not
// know it.
func (m *Mesh) userOfConn(conn string) string {
	cs := m.users[m.shardIndex(conn)]
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.conns[conn]
}

// connNode checks that conn names a node of the fabric and tells whether it is this
// one. In a mesh of one every other connection id is unknown.
func (m *Mesh) connNode(conn string) (node string, local bool, err error) {
	node = fabric.NodeOfConn(conn)
	switch {
	case conn == "" || node == "":
	case node == m.cfg.Node:
		return node, true, nil
	case m.cl != nil && m.cl.idOf(node) != "":
		return node, false, nil
	}
	return "", false, fabric.Errorf(fabric.CodeNotFound, "connection %q not found", conn)
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
	conns, err := m.userConns(ctx, user)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, conn := range conns {
		if m.sendConn(ctx, conn, p) == nil {
			n++
		}
	}
	return n, nil
}

// sendConn pushes p to a connection on whichever node holds it.
func (m *Mesh) sendConn(ctx context.Context, conn string, p fabric.Payload) error {
	node, local, err := m.connNode(conn)
	if err != nil {
		return err
	}
	if local {
		return m.edge().SendToConn(conn, p)
	}
	return m.cl.sendConn(ctx, node, conn, p)
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
	return m.sendConn(ctx, conn, p)
}

// JoinRoom joins the target's connections to room through their edge (which runs the
// ordinary join flow) and returns how many joined. For a user target, connections
// already in the room or gone meanwhile are skipped; when none joined and some join
// failed otherwise (room full, say), that error is returned. For a connection target
// its error is returned as is (fabric.ErrAlreadyJoined, fabric.ErrNotFound, ...).
func (m *Mesh) JoinRoom(ctx context.Context, room string, t fabric.Target) (int, error) {
	if _, err := m.lookupRoom(room); err != nil {
		return 0, err
	}
	return m.forTarget(ctx, t, fabric.ErrAlreadyJoined, func(conn string) error {
		return m.moveConn(ctx, conn, room, true)
	})
}

// LeaveRoom removes the target's connections from room through their edge and returns
// how many left, with the same error rules as JoinRoom (fabric.ErrNotJoined is the
// skipped error for user targets).
func (m *Mesh) LeaveRoom(ctx context.Context, room string, t fabric.Target) (int, error) {
	if _, err := m.lookupRoom(room); err != nil {
		return 0, err
	}
	return m.forTarget(ctx, t, fabric.ErrNotJoined, func(conn string) error {
		return m.moveConn(ctx, conn, room, false)
	})
}

// moveConn makes a connection join or leave a room on whichever node holds it.
func (m *Mesh) moveConn(ctx context.Context, conn, room string, join bool) error {
	node, local, err := m.connNode(conn)
	if err != nil {
		return err
	}
	switch {
	case !local:
		return m.cl.moveConn(ctx, node, conn, room, join)
	case join:
		return m.edge().JoinConn(ctx, conn, room)
	default:
		return m.edge().LeaveConn(ctx, conn, room)
	}
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
	return m.forTarget(ctx, t, nil, func(conn string) error {
		node, local, err := m.connNode(conn)
		if err != nil {
			return err
		}
		if !local {
			return m.cl.kickConn(ctx, node, conn, k)
		}
		return m.kickLocal(conn, k)
	})
}

// kickLocal closes a local connection and emits its kick event.
func (m *Mesh) kickLocal(conn string, k fabric.Kick) error {
	user := m.userOfConn(conn)
	if err := m.edge().KickConn(conn, k); err != nil {
		return err
	}
	m.emit(fabric.Event{Type: fabric.EventKick, Conn: conn, User: user, Code: k.Code, Reason: k.Reason})
	return nil
}

// forTarget runs do for each connection of t without any mesh lock held and counts
// successes. For a user target, skip errors and fabric.ErrNotFound (a connection that
// closed meanwhile) are not failures.
func (m *Mesh) forTarget(ctx context.Context, t fabric.Target, skip error, do func(conn string) error) (int, error) {
	if m.closed.Load() {
		return 0, m.errClosed()
	}
	if err := validateTarget(t); err != nil {
		return 0, err
	}
	if t.Conn != "" {
		if _, _, err := m.connNode(t.Conn); err != nil {
			return 0, err
		}
		if err := do(t.Conn); err != nil {
			return 0, err
		}
		return 1, nil
	}
	conns, err := m.userConns(ctx, t.User)
	if err != nil {
		return 0, err
	}
	n := 0
	var firstErr error
	for _, conn := range conns {
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
