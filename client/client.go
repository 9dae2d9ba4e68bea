package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// State is the connection state of a Client.
type State int32

// States of a Client.
const (
	// StateDisconnected: no connection; the client waits to reconnect, or was never
	// started.
	StateDisconnected State = iota
	// StateConnecting: a connect attempt is under way.
	StateConnecting
	// StateConnected: connected and authenticated; rooms re-joined.
	StateConnected
	// StateClosed: closed by Close or by a close code that forbids reconnecting.
	// Final.
	StateClosed
)

// String names the state.
func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}

// ConnInfo describes the current (or last) connection.
type ConnInfo struct {
	// Conn is the connection id.
	Conn string
	// Node is the name of the node holding the connection.
	Node string
	// User is the authenticated user.
	User string
	// PingInterval is how often the server pings.
	PingInterval time.Duration
	// Expires is when the token expires; zero when it never does.
	Expires time.Time
	// Limits are the connection's limits.
	Limits *pb.Limits
}

// Client is a roomcast WebSocket client. Create it with New, start it with Connect,
// stop it with Close.
//
// Lock order: Client.mu, then a pump's lock. No handler and no socket I/O runs under
// Client.mu.
type Client struct {
	url    string
	o      options
	log    *slog.Logger
	done   chan struct{} // closed by Close
	life   context.Context
	cancel context.CancelFunc
	events *pump // client-level handlers
	wg     sync.WaitGroup

	closeOnce sync.Once

	mu        sync.Mutex
	state     State
	stateCh   chan struct{} // closed and replaced at every state change
	lastErr   error         // why the last attempt or connection failed
	closeErr  error         // why the client is closed
	notified  bool          // StateClosed was reported to the state handler
	started   bool
	sess      *session // the live session, from handshake to teardown
	queue     []*call  // commands waiting for a connection, in order
	nextID    uint32
	subs      map[string]*Subscription
	info      ConnInfo
	refreshes int // refresh commands acknowledged, for tests and diagnostics
}

// call is one command waiting for its reply. done runs exactly once, outside c.mu,
// called by whoever removed the call from the queue or a session's pending set.
type call struct {
	id   uint32
	cmd  *pb.ClientCommand
	sess *session // c.mu: where it is pending; nil while queued
	done func(*pb.ServerMessage, error)
}

// New returns a Client for the WebSocket URL (ws:// or wss://). It does not connect;
// call Connect.
func New(rawURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("client: bad url: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("client: url scheme must be ws or wss, not %q", u.Scheme)
	}
	c := &Client{url: rawURL, stateCh: make(chan struct{}), subs: map[string]*Subscription{}, done: make(chan struct{})}
	for _, opt := range opts {
		opt(&c.o)
	}
	if err := c.o.fill(); err != nil {
		return nil, err
	}
	c.log = c.o.log.With("component", "roomcast-client", "url", rawURL)
	c.life, c.cancel = context.WithCancel(context.Background())
	c.events = newPump(c.done, nil)
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.events.run() }()
	return c, nil
}

// State returns the current state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Info returns what the server said about the current or last connection.
func (c *Client) Info() ConnInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// Err returns why the client is closed, or nil while it is not.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// Connect starts the client and waits until it is connected. If ctx ends first,
// Connect returns its error and the client keeps trying in the background until
// Close. It returns an error matching ErrClosed when the client is or becomes closed,
// e.g. because the server rejected the token (a *CloseError or *Error says why).
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if c.state != StateClosed && !c.started {
		c.started = true
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.run() }()
	}
	for {
		switch c.state {
		case StateConnected:
			c.mu.Unlock()
			return nil
		case StateClosed:
			err := c.closeErr
			c.mu.Unlock()
			return err
		}
		ch, last := c.stateCh, c.lastErr
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		}
		c.mu.Lock()
	}
}

// Close closes the connection and stops the client for good. Commands waiting for a
// result fail with ErrClosed; subscriptions end. Close waits until every goroutine of
// the client has exited, so it must not be called from a handler. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		prev := c.state
		c.state = StateClosed
		if c.closeErr == nil {
			c.closeErr = ErrClosed
		}
		queued := c.queue
		c.queue = nil
		for _, s := range c.sortedSubsLocked() {
			c.endLocked(s, ErrClosed)
		}
		c.broadcastLocked()
		notify := !c.notified && c.o.onState != nil
		c.notified = true
		c.mu.Unlock()
		for _, cl := range queued {
			cl.done(nil, ErrClosed)
		}
		close(c.done)
		c.cancel()
		c.wg.Wait()
		// Every goroutine is gone: report the final state synchronously, so that no
		// handler runs after Close returns.
		if notify && prev != StateClosed {
			c.o.onState(StateChange{From: prev, To: StateClosed})
		}
	})
	c.wg.Wait()
	return nil
}

func (c *Client) broadcastLocked() {
	close(c.stateCh)
	c.stateCh = make(chan struct{})
}

// setState moves to state to (unless closed) and reports the change.
func (c *Client) setState(to State, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setStateLocked(to, err)
}

func (c *Client) setStateLocked(to State, err error) {
	from := c.state
	if from == StateClosed || from == to {
		return
	}
	c.state = to
	if err != nil {
		c.lastErr = err
	}
	c.broadcastLocked()
	if f := c.o.onState; f != nil {
		ch := StateChange{From: from, To: to, Err: err}
		c.events.push(func() { f(ch) })
	}
}

// stop closes the client because the server said not to come back.
func (c *Client) stop(err error) {
	c.mu.Lock()
	if c.state == StateClosed {
		c.mu.Unlock()
		return
	}
	if !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.log.Warn("stopped, not reconnecting", "err", err)
	c.closeErr = err
	queued := c.queue
	c.queue = nil
	for _, s := range c.sortedSubsLocked() {
		c.endLocked(s, err)
	}
	c.setStateLocked(StateClosed, err)
	c.notified = true
	c.events.finish()
	c.mu.Unlock()
	for _, cl := range queued {
		cl.done(nil, err)
	}
}

func (c *Client) sortedSubsLocked() []*Subscription {
	out := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *Subscription) int {
		if a.room < b.room {
			return -1
		}
		if a.room > b.room {
			return 1
		}
		return 0
	})
	return out
}

// sleep waits d on the client's clock; it reports false when the client closed.
func (c *Client) sleep(d time.Duration) bool {
	t := c.o.clock.NewTimer(d)
	select {
	case <-t.C():
		return true
	case <-c.done:
		t.Stop()
		return false
	}
}

func (c *Client) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// run is the supervisor: it owns the connect / serve / back off cycle.
func (c *Client) run() {
	attempt := 0
	for !c.closed() {
		c.setState(StateConnecting, nil)
		s, cr, err := c.handshake()
		if err != nil {
			if c.closed() {
				return
			}
			if isStop(err, c.o.tokenFunc != nil) {
				c.stop(err)
				return
			}
			c.log.Debug("connect failed", "attempt", attempt, "err", err)
			c.setState(StateDisconnected, err)
			if !c.sleep(c.o.backoff.Delay(attempt, c.o.rand())) {
				return
			}
			attempt++
			continue
		}
		attempt = 0
		err = c.serve(s, cr)
		if c.closed() {
			return
		}
		if isStop(err, c.o.tokenFunc != nil) {
			c.stop(err)
			return
		}
		c.log.Info("disconnected, reconnecting", "err", err)
		c.setState(StateDisconnected, err)
		var d time.Duration
		var ce *CloseError
		if errors.As(err, &ce) && ce.Code.Immediate() {
			d = c.o.backoff.Delay(0, c.o.rand())
		} else {
			d = c.o.backoff.Delay(attempt, c.o.rand())
			attempt++
		}
		if !c.sleep(d) {
			return
		}
	}
}

// isStop reports whether err forbids reconnecting.
func isStop(err error, haveTokenFunc bool) bool {
	var ce *CloseError
	if errors.As(err, &ce) {
		return !ce.Reconnect
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Temporary {
			return false
		}
		if e.Code == pb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED {
			return !haveTokenFunc // a token function may give a fresh one
		}
		return true
	}
	return false
}

// handshake dials, sends connect and reads its reply.
func (c *Client) handshake() (*session, *pb.ConnectResult, error) {
	ctx, cancel := context.WithTimeout(c.life, c.o.connectTimeout)
	defer cancel()
	token := c.o.token
	if c.o.tokenFunc != nil {
		t, err := c.o.tokenFunc(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("client: token function: %w", err)
		}
		token = t
	}
	d := *c.o.dialer
	d.Subprotocols = []string{c.o.subprotocol}
	ws, resp, err := d.DialContext(ctx, c.url, c.o.header)
	if err != nil {
		if resp != nil {
			return nil, nil, fmt.Errorf("client: dial: %w (http %d)", err, resp.StatusCode)
		}
		return nil, nil, fmt.Errorf("client: dial: %w", err)
	}
	if ws.Subprotocol() != c.o.subprotocol {
		_ = ws.Close()
		return nil, nil, fmt.Errorf("client: server chose subprotocol %q, want %q", ws.Subprotocol(), c.o.subprotocol)
	}
	ws.SetReadLimit(c.o.maxMessage)
	// Close (or the connect timeout) must be able to interrupt the blocking read.
	stopWatch := context.AfterFunc(ctx, func() { _ = ws.Close() })
	defer stopWatch()
	s := newSession(c, ws)
	c.mu.Lock()
	id := c.newIDLocked()
	c.mu.Unlock()
	cmd := &pb.ClientCommand{Id: id, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: token, Client: Name}}}
	if err := s.write(cmd); err != nil {
		return nil, nil, err
	}
	var disc *pb.Disconnect
	for {
		m, err := s.read()
		if err != nil {
			_ = ws.Close()
			if ctx.Err() != nil && c.life.Err() == nil {
				return nil, nil, fmt.Errorf("client: connect: %w", ctx.Err())
			}
			return nil, nil, closeReason(err, disc)
		}
		if d := m.GetDisconnect(); d != nil {
			disc = d
			continue
		}
		if m.GetId() != id {
			continue // nothing else is expected before the connect reply
		}
		if pe := m.GetError(); pe != nil {
			s.closeWith(websocket.CloseNormalClosure)
			return nil, nil, errorFromPB(pe)
		}
		cr := m.GetConnect()
		if cr == nil {
			s.closeWith(websocket.CloseProtocolError)
			return nil, nil, errors.New("client: connect reply without a result")
		}
		if !stopWatch() {
			_ = ws.Close()
			return nil, nil, fmt.Errorf("client: connect: %w", ctx.Err())
		}
		return s, cr, nil
	}
}

func (c *Client) newIDLocked() uint32 {
	c.nextID++
	if c.nextID == 0 {
		c.nextID = 1
	}
	return c.nextID
}

// serve runs one established connection until it ends and returns why.
func (c *Client) serve(s *session, cr *pb.ConnectResult) error {
	c.mu.Lock()
	info := ConnInfo{
		Conn: cr.GetConnection(), Node: cr.GetNode(), User: cr.GetUser(),
		PingInterval: cr.GetPingInterval().AsDuration(), Limits: cr.GetLimits(),
	}
	if cr.GetExpires() != nil {
		info.Expires = cr.GetExpires().AsTime()
	}
	c.info = info
	c.sess = s
	// Rooms the server joined us to at connect come first, before any push. Those we
	// were in already are recovered from history when possible.
	auto := map[string]bool{}
	var created []*Subscription
	var rejoins []*call
	for _, jr := range cr.GetRooms() {
		auto[jr.GetRoom()] = true
		if sub := c.subs[jr.GetRoom()]; sub != nil && sub.status == subEstablished && sub.recoverable && sub.pos.Epoch != "" {
			if cl := c.catchUpCallLocked(sub, jr); cl != nil {
				rejoins = append(rejoins, cl)
			}
			continue
		}
		if sub := c.serverJoinLocked(jr); sub != nil {
			created = append(created, sub)
		}
	}
	// Re-join every room we were in, recovering from the last position received.
	for _, sub := range c.sortedSubsLocked() {
		if sub.status != subEstablished || auto[sub.room] {
			continue
		}
		rejoins = append(rejoins, c.rejoinCallLocked(sub, false))
	}
	c.queue = append(rejoins, c.queue...)
	c.mu.Unlock()
	c.notifyServerJoins(created)

	go s.readLoop()
	c.flush(s)

	var wg sync.WaitGroup
	sctx, scancel := context.WithCancel(c.life)
	if c.o.tokenFunc != nil && !info.Expires.IsZero() {
		wg.Add(1)
		go func() { defer wg.Done(); c.refreshLoop(sctx, info.Expires) }()
	}
	reason := c.watch(s, info.PingInterval)
	scancel()
	wg.Wait()
	c.teardown(s, reason)
	return reason
}

// flush sends the queued commands in order, then declares the client connected.
// Commands issued meanwhile join the queue, so nothing overtakes a queued command.
func (c *Client) flush(s *session) {
	for {
		select {
		case <-s.kill:
			return // watch tears the connection down; the queue waits for the next
		case <-s.readDone:
			return
		default:
		}
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.setStateLocked(StateConnected, nil)
			c.mu.Unlock()
			return
		}
		batch := c.queue
		c.queue = nil
		for _, cl := range batch {
			cl.sess = s
			s.pending[cl.id] = cl
		}
		c.mu.Unlock()
		for _, cl := range batch {
			if err := s.write(cl.cmd); err != nil {
				s.drop(err)
				break // the teardown fails what is pending
			}
		}
	}
}

// watch waits for the connection to end: the reader fails, the server goes silent
// for longer than its ping interval plus the grace, something asks to drop it, or the
// client closes.
func (c *Client) watch(s *session, interval time.Duration) error {
	var hb <-chan time.Time
	limit := interval + c.o.heartbeatGrace
	arm := func(d time.Duration) func() bool {
		t := c.o.clock.NewTimer(d)
		hb = t.C()
		return t.Stop
	}
	stopTimer := func() bool { return false }
	if interval > 0 {
		stopTimer = arm(limit)
	}
	defer func() { stopTimer() }()
	for {
		select {
		case <-s.readDone:
			return s.endReason(s.readErr)
		case <-c.done:
			s.closeWith(websocket.CloseNormalClosure)
			<-s.readDone
			return ErrClosed
		case <-s.kill:
			s.closeWith(websocket.CloseNormalClosure)
			<-s.readDone
			return s.killWhy
		case <-hb:
			idle := c.o.clock.Now().Sub(time.Unix(0, s.lastRecv.Load()))
			if idle >= limit {
				_ = s.ws.Close()
				<-s.readDone
				return fmt.Errorf("client: server silent for %v (ping interval %v)", idle.Round(time.Millisecond), interval)
			}
			stopTimer = arm(limit - idle)
		}
	}
}

// teardown fails every command still waiting on s.
func (c *Client) teardown(s *session, reason error) {
	c.mu.Lock()
	s.dead = true
	if c.sess == s {
		c.sess = nil
	}
	pending := make([]*call, 0, len(s.pending))
	for _, cl := range s.pending {
		pending = append(pending, cl)
	}
	s.pending = nil
	// Subscriptions that were being re-joined stay to be re-joined next time.
	for _, sub := range c.subs {
		if sub.status == subRejoining {
			sub.status = subEstablished
			sub.early = nil
		}
	}
	c.mu.Unlock()
	slices.SortFunc(pending, func(a, b *call) int { return int(a.id) - int(b.id) })
	err := fmt.Errorf("%w: %w", ErrConnectionLost, reason)
	if errors.Is(reason, ErrClosed) {
		err = ErrClosed
	}
	for _, cl := range pending {
		cl.done(nil, err)
	}
}

// refreshLoop refreshes the token before it expires, for as long as the connection
// lasts.
func (c *Client) refreshLoop(ctx context.Context, expires time.Time) {
	attempt := 0
	wait := c.refreshWait(expires)
	for {
		t := c.o.clock.NewTimer(wait)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return
		}
		next, err := c.refresh(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The server closes the connection with token_expired if we never
			// succeed; then the reconnect fetches a new token anyway.
			c.log.Warn("token refresh failed", "err", err)
			wait = c.o.backoff.Delay(attempt, c.o.rand())
			attempt++
			continue
		}
		attempt = 0
		if next.IsZero() {
			return
		}
		wait = c.refreshWait(next)
	}
}

func (c *Client) refresh(ctx context.Context) (time.Time, error) {
	token, err := c.o.tokenFunc(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("client: token function: %w", err)
	}
	m, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_Refresh{Refresh: &pb.RefreshCommand{Token: token}}}, nil)
	if err != nil {
		return time.Time{}, err
	}
	var next time.Time
	if e := m.GetRefresh().GetExpires(); e != nil {
		next = e.AsTime()
	}
	c.mu.Lock()
	c.info.Expires = next
	c.refreshes++
	c.mu.Unlock()
	return next, nil
}

// refreshWait is how long to wait before refreshing a token that expires at exp:
// until the refresh margin before it, but at most half its remaining life.
func (c *Client) refreshWait(exp time.Time) time.Duration {
	left := exp.Sub(c.o.clock.Now())
	margin := min(c.o.refreshMargin, left/2)
	return max(left-margin, 0)
}

// do sends cmd (or queues it while offline) and waits for its reply. hook, when not
// nil, runs on the reader goroutine with a successful reply before any later frame is
// handled.
func (c *Client) do(ctx context.Context, cmd *pb.ClientCommand, hook func(*pb.ServerMessage)) (*pb.ServerMessage, error) {
	type result struct {
		m   *pb.ServerMessage
		err error
	}
	ch := make(chan result, 1)
	cl := &call{cmd: cmd, done: func(m *pb.ServerMessage, err error) {
		if err == nil && m.GetError() == nil && hook != nil {
			hook(m)
		}
		ch <- result{m, err}
	}}
	unpack := func(r result) (*pb.ServerMessage, error) {
		if r.err != nil {
			return nil, r.err
		}
		if pe := r.m.GetError(); pe != nil {
			return nil, errorFromPB(pe)
		}
		return r.m, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := c.submit(cl)
	if err != nil {
		return nil, err
	}
	if s != nil {
		if err := s.write(cmd); err != nil {
			s.drop(err) // the teardown fails the call
		}
	}
	t := c.o.clock.NewTimer(c.o.commandTimeout)
	defer t.Stop()
	var why error
	select {
	case r := <-ch:
		return unpack(r)
	case <-ctx.Done():
		why = ctx.Err()
	case <-t.C():
		why = fmt.Errorf("%w after %v", ErrTimeout, c.o.commandTimeout)
	}
	if c.withdraw(cl) {
		return nil, why
	}
	return unpack(<-ch) // the reply won the race; its done is running
}

// submit gives cl an id and registers it with the live session (returned, to write
// to) or queues it.
func (c *Client) submit(cl *call) (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateClosed {
		return nil, c.closeErr
	}
	cl.id = c.newIDLocked()
	cl.cmd.Id = cl.id
	if c.state == StateConnected && c.sess != nil && !c.sess.dead {
		cl.sess = c.sess
		c.sess.pending[cl.id] = cl
		return c.sess, nil
	}
	if len(c.queue) >= c.o.queueSize {
		return nil, ErrQueueFull
	}
	c.queue = append(c.queue, cl)
	return nil, nil
}

// withdraw removes cl from wherever it waits; false means its done already runs.
func (c *Client) withdraw(cl *call) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl.sess != nil {
		if cl.sess.pending[cl.id] == cl {
			delete(cl.sess.pending, cl.id)
			return true
		}
		return false
	}
	if i := slices.Index(c.queue, cl); i >= 0 {
		c.queue = slices.Delete(c.queue, i, i+1)
		return true
	}
	return false
}

// sendAside sends cmd on s without anyone waiting for the reply (a leave for a room
// nobody wants any more). It runs on the reader goroutine.
func (c *Client) sendAside(s *session, cmd *pb.ClientCommand) {
	c.mu.Lock()
	if s.dead {
		c.mu.Unlock()
		return
	}
	cl := &call{cmd: cmd, sess: s, done: func(*pb.ServerMessage, error) {}}
	cl.id = c.newIDLocked()
	cmd.Id = cl.id
	s.pending[cl.id] = cl
	c.mu.Unlock()
	if err := s.write(cmd); err != nil {
		s.drop(err)
	}
}

// handle dispatches one server message; it runs on the reader goroutine.
func (c *Client) handle(s *session, m *pb.ServerMessage) {
	if id := m.GetId(); id != 0 {
		c.mu.Lock()
		cl := s.pending[id]
		delete(s.pending, id)
		c.mu.Unlock()
		if cl != nil {
			cl.done(m, nil)
			return
		}
		// A reply nobody waits for: if it is a join whose caller gave up, leave
		// again unless the room is wanted after all.
		if jr := m.GetJoin(); jr != nil {
			c.mu.Lock()
			sub := c.subs[jr.GetRoom()]
			wanted := sub != nil && sub.status == subEstablished
			c.mu.Unlock()
			if !wanted {
				c.sendAside(s, leaveCmd(jr.GetRoom()))
			}
		}
		return
	}
	switch b := m.GetBody().(type) {
	case *pb.ServerMessage_Message:
		c.roomMessage(s, b.Message)
	case *pb.ServerMessage_Ping:
		if err := s.write(&pb.ClientCommand{Command: &pb.ClientCommand_Pong{Pong: &pb.PongCommand{}}}); err != nil {
			s.drop(err)
		}
	case *pb.ServerMessage_Joined:
		c.mu.Lock()
		sub := c.serverJoinLocked(b.Joined.GetJoin())
		c.mu.Unlock()
		if sub != nil {
			c.notifyServerJoins([]*Subscription{sub})
		}
	case *pb.ServerMessage_Left:
		c.mu.Lock()
		if sub := c.subs[b.Left.GetRoom()]; sub != nil {
			c.endLocked(sub, &LeftError{Room: b.Left.GetRoom(), Reason: b.Left.GetReason()})
		}
		c.mu.Unlock()
	case *pb.ServerMessage_MemberJoined:
		if f := c.o.onMemberJoined; f != nil {
			room, who := b.MemberJoined.GetRoom(), infoFromPB(b.MemberJoined.GetMember())
			c.events.push(func() { f(room, who) })
		}
	case *pb.ServerMessage_MemberLeft:
		if f := c.o.onMemberLeft; f != nil {
			room, who := b.MemberLeft.GetRoom(), infoFromPB(b.MemberLeft.GetMember())
			c.events.push(func() { f(room, who) })
		}
	case *pb.ServerMessage_Direct:
		p := payloadFromPB(b.Direct.GetPayload())
		if f := c.o.onDirect; f != nil {
			c.events.push(func() { f(p) })
		}
		if ch := c.o.directChan; ch != nil {
			c.events.push(func() {
				select {
				case ch <- p:
				case <-c.done:
				}
			})
		}
	case *pb.ServerMessage_Disconnect:
		c.mu.Lock()
		s.disc = b.Disconnect
		c.mu.Unlock()
	default:
		c.log.Debug("ignoring unknown server message", "type", fmt.Sprintf("%T", b))
	}
}

func (c *Client) notifyServerJoins(subs []*Subscription) {
	if f := c.o.onServerJoin; f != nil {
		for _, sub := range subs {
			c.events.push(func() { f(sub) })
		}
	}
}
