package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/wsio"
)

// connState is a connection's place in its state machine.
type connState uint8

const (
	// stateNew: upgraded, waiting for connect (or, with a header token, for the
	// implicit connect queued at upgrade).
	stateNew connState = iota
	// stateConnecting: a connect command is queued or running.
	stateConnecting
	// stateConnected: authenticated and registered with the fabric.
	stateConnected
	// stateClosed: closed; terminal.
	stateClosed
)

// closeMode says how closeWith ends the transport.
type closeMode uint8

const (
	// closePush pushes disconnect, then closes after everything queued is written.
	closePush closeMode = iota
	// closeDrop discards the queue and closes at once (slow consumers).
	closeDrop
	// closeQuiet closes after everything queued is written, without a push (the
	// caller queued its own disconnect).
	closeQuiet
	// closePeer: the transport has already ended; only the bookkeeping is left.
	closePeer
)

// implicitConnect is queued for connections authenticated by an Authorization
// header; its reply (the ConnectResult) goes out as a push.
var implicitConnect = &pb.ClientCommand{Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{}}}

// conn is one client connection. Fields above mu never change after newConn; mu
// guards the rest.
type conn struct {
	n       *Node
	ws      *wsio.Conn
	id      string
	binary  bool // roomcast.v1.proto subprotocol
	created time.Time
	lim     *rate.Limiter // used only on the transport worker (OnMessage calls never overlap)
	refused int           // rate-limited commands in a row; transport worker only
	ended   atomic.Bool   // the transport's end was accounted for

	mu          sync.Mutex
	state       connState
	claims      *jwtauth.Claims // header claims before connect; the token's claims after
	clientHello bool            // the client's own connect command was seen
	ci          fabric.ClientInfo
	expires     time.Time
	lastPing    time.Time
	rooms       map[string]*member
	queue       []*pb.ClientCommand
	running     bool // a goroutine is draining queue
}

func (n *Node) newConn(ws *wsio.Conn, claims *jwtauth.Claims) *conn {
	c := &conn{
		n:       n,
		ws:      ws,
		id:      fabric.ConnID(n.cfg.Name, n.seq.Add(1)),
		binary:  ws.Subprotocol() == SubprotocolProto,
		created: n.now(),
		lim:     rate.NewLimiter(rate.Limit(n.cfg.CommandRate), n.cfg.CommandBurst),
		claims:  claims,
	}
	if claims != nil {
		c.state = stateConnecting
	}
	return c
}

func (c *conn) isConnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateConnected
}

// OnMessage decodes one client frame and queues the command (wsio.Handler). It runs
// on a transport worker, so it never blocks: commands run on the connection's own
// short-lived goroutine.
func (c *conn) OnMessage(_ *wsio.Conn, binary bool, data []byte) {
	n := c.n
	n.met.msgsIn.Inc()
	n.met.bytesIn.Add(float64(len(data)))
	if binary != c.binary {
		n.log.Info("wrong frame type for subprotocol", "conn", c.id, "binary", binary)
		c.closeWith(fabric.CloseBadFrame, "wrong frame type", closePush)
		return
	}
	cmd := &pb.ClientCommand{}
	var err error
	if binary {
		err = proto.Unmarshal(data, cmd)
	} else {
		err = protojson.Unmarshal(data, cmd)
	}
	if err != nil {
		n.log.Info("undecodable frame", "conn", c.id, "err", err)
		c.closeWith(fabric.CloseBadFrame, "bad frame", closePush)
		return
	}
	_, isConnect := cmd.Command.(*pb.ClientCommand_Connect)
	c.mu.Lock()
	switch c.state {
	case stateClosed:
		c.mu.Unlock()
		return
	case stateNew:
		if !isConnect {
			c.mu.Unlock()
			c.closeWith(fabric.CloseConnectExpected, "connect expected", closePush)
			return
		}
		c.state = stateConnecting
		c.clientHello = true
	default:
		if isConnect {
			if c.clientHello {
				c.mu.Unlock()
				c.closeWith(fabric.CloseConnectExpected, "connect sent twice", closePush)
				return
			}
			c.clientHello = true
		}
	}
	c.mu.Unlock()
	if _, ok := cmd.Command.(*pb.ClientCommand_Pong); ok {
		return // activity is all a pong means; wsio has recorded it
	}
	if !c.lim.Allow() {
		c.refuseRate(cmd)
		return
	}
	if !c.enqueue(cmd) {
		c.refuseRate(cmd)
		return
	}
	// A flood keeps the bucket empty, and a token that trickles in must not forgive
	// it (else a client sending far over its rate is never closed when the node reads
	// slower than the flood arrives): only a client back under its rate is forgiven.
	if c.lim.Tokens() >= 1 {
		c.refused = 0
	}
}

// refuseRate answers a command over the rate or queue limit, and closes a client that
// keeps going.
func (c *conn) refuseRate(cmd *pb.ClientCommand) {
	c.refused++
	c.n.met.commands.WithLabelValues(commandName(cmd), "rate_limited").Inc()
	if c.refused >= 2*c.n.cfg.CommandBurst {
		c.n.log.Info("closing rate-limited connection", "conn", c.id)
		c.closeWith(fabric.CloseRateLimited, "too many commands", closePush)
		return
	}
	c.replyErr(cmd.Id, fabric.Errorf(fabric.CodeRateLimited, "too many commands"))
}

// enqueue appends cmd to the command queue and starts the queue's goroutine when it
// is not running. It reports false when the queue is full.
func (c *conn) enqueue(cmd *pb.ClientCommand) bool {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return true
	}
	if len(c.queue) >= maxPendingCommands {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, cmd)
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start && !c.n.spawn(c.runCommands) {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}
	return true
}

// runCommands runs queued commands in order and returns when the queue is empty, so
// an idle connection holds no goroutine.
func (c *conn) runCommands() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.state == stateClosed {
			c.queue = nil
			c.running = false
			c.mu.Unlock()
			return
		}
		cmd := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.mu.Unlock()
		c.handle(cmd)
	}
}

// OnClose reports the end of the transport (wsio.Handler).
func (c *conn) OnClose(_ *wsio.Conn, err error) {
	code, reason := fabric.CloseCode(websocket.CloseAbnormalClosure), "transport closed"
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		code, reason = fabric.CloseCode(ce.Code), "closed by client"
		if ce.Text != "" {
			reason = ce.Text
		}
	}
	c.closeWith(code, reason, closePeer)
	c.gone()
}

// sendRaw queues an encoded frame and counts it; it leaves a full queue to the
// caller (which may hold locks that closing needs).
func (c *conn) sendRaw(m *wsio.Message) error {
	err := c.ws.Send(m)
	if err == nil {
		c.n.met.msgsOut.Inc()
		c.n.met.bytesOut.Add(float64(m.Len()))
	}
	return err
}

// send queues an encoded frame; a full queue closes the connection as a slow
// consumer. The caller must hold no room or member lock.
func (c *conn) send(m *wsio.Message) error {
	err := c.sendRaw(m)
	if errors.Is(err, wsio.ErrQueueFull) {
		c.slow()
	}
	return err
}

// slow closes a connection whose send queue overflowed.
func (c *conn) slow() {
	c.n.log.Info("closing slow consumer", "conn", c.id)
	c.n.met.slow.Inc()
	c.closeWith(fabric.CloseSlow, "slow", closeDrop)
}

// encode encodes a server message for this connection's subprotocol; nil when it
// cannot be encoded (logged).
func (c *conn) encode(m *pb.ServerMessage) *wsio.Message {
	data, err := marshalServerMessage(m, c.binary)
	if err == nil {
		var wm *wsio.Message
		if wm, err = wsio.NewMessage(c.binary, data); err == nil {
			return wm
		}
	}
	c.n.log.Error("encoding server message", "conn", c.id, "err", err)
	return nil
}

// push encodes and queues a server message for this connection.
func (c *conn) push(m *pb.ServerMessage) error {
	wm := c.encode(m)
	if wm == nil {
		return fabric.Errorf(fabric.CodeInternal, "cannot encode server message")
	}
	return c.send(wm)
}

// reply answers command id (nothing for id 0).
func (c *conn) reply(id uint32, m *pb.ServerMessage) {
	if id == 0 {
		return
	}
	m.Id = id
	_ = c.push(m)
}

// replyErr answers command id with an error.
func (c *conn) replyErr(id uint32, err error) {
	if id == 0 {
		return
	}
	code := fabric.CodeOf(err)
	msg := err.Error()
	if code == fabric.CodeInternal {
		msg = "internal error" // details are for the log, not the client
	}
	_ = c.push(&pb.ServerMessage{Id: id, Error: &pb.Error{
		Code: pb.ErrorCode(code), Message: msg, Temporary: code.Temporary(),
	}})
}

// closeWith is the connection's one closing path; it is idempotent and safe from any
// goroutine that holds no node, room or member lock. It leaves every room locally,
// ends the transport as mode says, then (in the background) unregisters the
// connection from the fabric and emits the disconnect event.
func (c *conn) closeWith(code fabric.CloseCode, reason string, mode closeMode) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	wasConnected := c.state == stateConnected
	c.state = stateClosed
	rooms := c.rooms
	c.rooms = nil
	c.queue = nil
	ci := c.ci
	c.mu.Unlock()

	n := c.n
	names := make([]string, 0, len(rooms))
	for name, m := range rooms {
		n.removeMember(m)
		names = append(names, name)
	}
	n.mu.Lock()
	delete(n.conns, c.id)
	n.mu.Unlock()

	switch mode {
	case closePush:
		if m := disconnectMessage(c.binary, code, reason); m != nil {
			_ = c.ws.Send(m)
		}
		c.ws.Close(int(code), reason)
	case closeQuiet:
		c.ws.Close(int(code), reason)
	case closeDrop:
		c.ws.CloseNow(int(code), reason)
	}
	label := code.String()
	if mode == closePeer {
		label = "client_" + label
		if code == websocket.CloseAbnormalClosure {
			label = "transport_error"
		}
	}
	n.met.disconnects.WithLabelValues(label).Inc()
	if !wasConnected {
		return
	}
	n.fab.Emit(fabric.Event{
		Type: fabric.EventDisconnect, Time: n.now(), Node: n.cfg.Name,
		Conn: ci.Conn, User: ci.User, Code: code, Reason: reason,
	})
	if !n.spawn(func() {
		ctx, cancel := n.fabricCtx()
		defer cancel()
		n.fab.Disconnect(ctx, ci, names)
	}) {
		n.log.Debug("node stopped; fabric not told of disconnect", "conn", c.id)
	}
}

// disconnectMessage encodes the disconnect push that precedes a server close.
func disconnectMessage(binary bool, code fabric.CloseCode, reason string) *wsio.Message {
	data, _ := marshalServerMessage(&pb.ServerMessage{Body: &pb.ServerMessage_Disconnect{Disconnect: &pb.Disconnect{
		Code: uint32(code), Reason: reason, Reconnect: code.Reconnect(),
	}}}, binary)
	m, err := wsio.NewMessage(binary, data)
	if err != nil {
		return nil
	}
	return m
}

// commandCtx bounds one command's fabric calls; Close cancels it.
func (n *Node) commandCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(n.ctx, commandTimeout)
}

// fabricCtx bounds clean-up calls (disconnect, leave) that must complete even while
// the node closes.
func (n *Node) fabricCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(n.ctx), commandTimeout)
}
