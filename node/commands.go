package node

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
)

// commandName names a command for metrics.
func commandName(cmd *pb.ClientCommand) string {
	switch cmd.Command.(type) {
	case *pb.ClientCommand_Connect:
		return "connect"
	case *pb.ClientCommand_Join:
		return "join"
	case *pb.ClientCommand_Leave:
		return "leave"
	case *pb.ClientCommand_Publish:
		return "publish"
	case *pb.ClientCommand_Presence:
		return "presence"
	case *pb.ClientCommand_PresenceStats:
		return "presence_stats"
	case *pb.ClientCommand_History:
		return "history"
	case *pb.ClientCommand_Send:
		return "send"
	case *pb.ClientCommand_Pong:
		return "pong"
	case *pb.ClientCommand_Refresh:
		return "refresh"
	}
	return "unknown"
}

// handle runs one command on the connection's command goroutine.
func (c *conn) handle(cmd *pb.ClientCommand) {
	if k, ok := cmd.Command.(*pb.ClientCommand_Connect); ok {
		c.handleConnect(cmd.Id, k.Connect)
		return
	}
	if !c.isConnected() {
		return // closed while the command waited
	}
	ctx, cancel := c.n.commandCtx()
	defer cancel()
	var (
		reply *pb.ServerMessage
		err   error
	)
	switch k := cmd.Command.(type) {
	case *pb.ClientCommand_Join:
		err = c.cmdJoin(ctx, cmd.Id, k.Join)
	case *pb.ClientCommand_Leave:
		if err = c.leave(ctx, k.Leave.GetRoom()); err == nil {
			reply = &pb.ServerMessage{Body: &pb.ServerMessage_Leave{Leave: &pb.LeaveResult{}}}
		}
	case *pb.ClientCommand_Publish:
		reply, err = c.cmdPublish(ctx, k.Publish)
	case *pb.ClientCommand_Presence:
		reply, err = c.cmdPresence(ctx, k.Presence.GetRoom())
	case *pb.ClientCommand_PresenceStats:
		reply, err = c.cmdPresenceStats(ctx, k.PresenceStats.GetRoom())
	case *pb.ClientCommand_History:
		reply, err = c.cmdHistory(ctx, k.History)
	case *pb.ClientCommand_Send:
		reply, err = c.cmdSend(k.Send)
	case *pb.ClientCommand_Refresh:
		reply, err = c.cmdRefresh(k.Refresh)
	default:
		err = fabric.Errorf(fabric.CodeUnknownCommand, "unknown command")
	}
	c.n.met.commands.WithLabelValues(commandName(cmd), resultLabel(err)).Inc()
	switch {
	case err != nil:
		if fabric.CodeOf(err) == fabric.CodeInternal {
			c.n.log.Warn("command failed", "conn", c.id, "command", commandName(cmd), "err", err)
		}
		c.replyErr(cmd.Id, err)
	case reply != nil:
		c.reply(cmd.Id, reply)
	}
}

// verify checks a token, mapping failures to coded errors.
func (c *conn) verify(token string) (*jwtauth.Claims, error) {
	if token == "" {
		return nil, fabric.Errorf(fabric.CodePermissionDenied, "token is missing")
	}
	claims, err := c.n.cfg.Verifier.Verify(token)
	switch {
	case errors.Is(err, jwtauth.ErrExpired):
		return nil, fabric.Errorf(fabric.CodeTokenExpired, "token expired")
	case err != nil:
		c.n.log.Debug("token rejected", "conn", c.id, "err", err)
		return nil, fabric.Errorf(fabric.CodePermissionDenied, "invalid token")
	case !claims.ExpiresAt.IsZero() && !c.n.now().Before(claims.ExpiresAt):
		return nil, fabric.Errorf(fabric.CodeTokenExpired, "token expired")
	}
	return claims, nil
}

// autoJoin is a join made at connect, finished after the connect reply.
type autoJoin struct {
	m   *member
	pos fabric.Position
}

// handleConnect authenticates the connection, registers it with the fabric, joins
// the token's rooms and replies with the ConnectResult.
func (c *conn) handleConnect(id uint32, cc *pb.ConnectCommand) {
	n := c.n
	c.mu.Lock()
	state, claims := c.state, c.claims
	c.mu.Unlock()
	switch state {
	case stateClosed:
		return
	case stateConnected:
		// The client's own connect on a connection the Authorization header already
		// established: answer it (a token in it must name the same user).
		if tok := cc.GetToken(); tok != "" {
			nc, err := c.verify(tok)
			if err != nil || nc.User != claims.User {
				n.met.commands.WithLabelValues("connect", "unauthorized").Inc()
				c.closeWith(fabric.CloseUnauthorized, "invalid token", closePush)
				return
			}
			c.setClaims(nc)
			claims = nc
		}
		n.met.commands.WithLabelValues("connect", "ok").Inc()
		_ = c.push(&pb.ServerMessage{Id: id, Body: &pb.ServerMessage_Connect{Connect: c.connectResult(claims, nil)}})
		return
	}
	if tok := cc.GetToken(); tok != "" || claims == nil {
		var err error
		if claims, err = c.verify(tok); err != nil {
			n.met.commands.WithLabelValues("connect", "unauthorized").Inc()
			reason := "invalid token"
			if fabric.CodeOf(err) == fabric.CodeTokenExpired {
				reason = "token expired"
			}
			c.closeWith(fabric.CloseUnauthorized, reason, closePush)
			return
		}
	}
	ci := fabric.ClientInfo{User: claims.User, Conn: c.id, Info: claims.Info}
	ctx, cancel := n.commandCtx()
	defer cancel()
	if err := n.fab.Connect(ctx, ci, n.cfg.MaxConnsPerUser); err != nil {
		if errors.Is(err, fabric.ErrLimitExceeded) {
			n.met.commands.WithLabelValues("connect", "limit_exceeded").Inc()
			c.closeWith(fabric.CloseTooManyConnections, "too many connections", closePush)
			return
		}
		n.met.commands.WithLabelValues("connect", resultLabel(err)).Inc()
		n.log.Warn("fabric connect failed", "conn", c.id, "err", err)
		c.closeWith(fabric.CloseInternalError, "internal error", closePush)
		return
	}
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		n.spawn(func() {
			ctx, cancel := n.fabricCtx()
			defer cancel()
			n.fab.Disconnect(ctx, ci, nil)
		})
		return
	}
	c.state = stateConnected
	c.claims = claims
	c.ci = ci
	c.expires = claims.ExpiresAt
	c.lastPing = n.now()
	c.mu.Unlock()
	n.met.connects.Inc()
	n.met.commands.WithLabelValues("connect", "ok").Inc()
	n.fab.Emit(fabric.Event{Type: fabric.EventConnect, Time: n.now(), Node: n.cfg.Name, Conn: c.id, User: ci.User})

	// Rooms named in the token are joined like join commands, except that the token
	// naming them is the permission. Their buffered deliveries follow the reply.
	var joins []autoJoin
	var results []*pb.JoinResult
	seen := make(map[string]bool, len(claims.Rooms))
	for _, r := range claims.Rooms {
		if seen[r] {
			continue
		}
		seen[r] = true
		res, m, err := c.startJoin(ctx, r, nil)
		if err != nil {
			n.log.Info("auto-join failed", "conn", c.id, "room", r, "err", err)
			continue
		}
		joins = append(joins, autoJoin{m: m, pos: res.Pos})
		results = append(results, joinResultToPB(r, res))
	}
	_ = c.push(&pb.ServerMessage{Id: id, Body: &pb.ServerMessage_Connect{Connect: c.connectResult(claims, results)}})
	for _, j := range joins {
		c.finishJoin(j.m, j.pos, nil)
	}
}

func (c *conn) setClaims(claims *jwtauth.Claims) {
	c.mu.Lock()
	c.claims = claims
	c.expires = claims.ExpiresAt
	c.mu.Unlock()
}

func (c *conn) getClaims() *jwtauth.Claims {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.claims
}

func (c *conn) connectResult(claims *jwtauth.Claims, rooms []*pb.JoinResult) *pb.ConnectResult {
	cfg := &c.n.cfg
	res := &pb.ConnectResult{
		Connection:   c.id,
		Node:         cfg.Name,
		User:         claims.User,
		PingInterval: durationpb.New(cfg.PingInterval),
		Limits: &pb.Limits{
			MaxFrameBytes:     uint32(cfg.Transport.MaxMessageBytes),
			MaxRooms:          uint32(cfg.MaxRoomsPerConn),
			CommandsPerSecond: uint32(cfg.CommandRate),
			CommandBurst:      uint32(cfg.CommandBurst),
		},
		Rooms: rooms,
	}
	if !claims.ExpiresAt.IsZero() {
		res.Expires = timestamppb.New(claims.ExpiresAt)
	}
	return res
}

// roomOptions validates room and returns its namespace.
func (c *conn) roomOptions(roomName string) (*fabric.Namespace, error) {
	if err := fabric.ValidateRoom(roomName); err != nil {
		return nil, err
	}
	return c.n.cfg.Namespaces.Lookup(roomName)
}

// canRead reports whether the connection may read room's presence and history: a
// read right in its token, or membership.
func (c *conn) canRead(roomName string) error {
	if fabric.MatchAny(c.getClaims().Read, roomName) || c.isMember(roomName) {
		return nil
	}
	return fabric.Errorf(fabric.CodePermissionDenied, "no read right for %q", roomName)
}

func (c *conn) cmdJoin(ctx context.Context, id uint32, j *pb.JoinCommand) error {
	roomName := j.GetRoom()
	if _, err := c.roomOptions(roomName); err != nil {
		return err
	}
	if !fabric.MatchAny(c.getClaims().Join, roomName) {
		return fabric.Errorf(fabric.CodePermissionDenied, "no join right for %q", roomName)
	}
	res, m, err := c.startJoin(ctx, roomName, positionFromPB(j.GetRecoverFrom()))
	if err != nil {
		return err
	}
	var reply *pb.ServerMessage
	if id != 0 {
		reply = &pb.ServerMessage{Id: id, Body: &pb.ServerMessage_Join{Join: joinResultToPB(roomName, res)}}
	}
	c.finishJoin(m, res.Pos, reply)
	return nil
}

func (c *conn) cmdPublish(ctx context.Context, p *pb.PublishCommand) (*pb.ServerMessage, error) {
	roomName := p.GetRoom()
	ns, err := c.roomOptions(roomName)
	if err != nil {
		return nil, err
	}
	if !ns.ClientPublish {
		return nil, fabric.Errorf(fabric.CodeNotAvailable, "namespace %q does not accept client publishes", ns.Name)
	}
	if !fabric.MatchAny(c.getClaims().Publish, roomName) {
		return nil, fabric.Errorf(fabric.CodePermissionDenied, "no publish right for %q", roomName)
	}
	if !c.isMember(roomName) {
		return nil, fabric.Errorf(fabric.CodeNotJoined, "not joined to %q", roomName)
	}
	payload, err := payloadFromPB(p.GetPayload())
	if err != nil {
		return nil, err
	}
	pos, err := c.n.fab.Publish(ctx, fabric.Publication{
		Room: roomName, Payload: payload, Publisher: c.info(), IdempotencyKey: p.GetIdempotencyKey(),
	})
	if err != nil {
		return nil, err
	}
	return &pb.ServerMessage{Body: &pb.ServerMessage_Publish{Publish: &pb.PublishResult{Position: positionToPB(pos)}}}, nil
}

func (c *conn) cmdPresence(ctx context.Context, roomName string) (*pb.ServerMessage, error) {
	if err := c.canReadPresence(roomName); err != nil {
		return nil, err
	}
	members, err := c.n.fab.Presence(ctx, roomName)
	if err != nil {
		return nil, err
	}
	res := &pb.PresenceResult{Members: make([]*pb.Member, 0, len(members))}
	for _, m := range members {
		pm := &pb.Member{User: m.User, Connections: m.Conns}
		if len(m.Info) > 0 {
			pm.Info = jsonToValue(m.Info)
		}
		res.Members = append(res.Members, pm)
	}
	return &pb.ServerMessage{Body: &pb.ServerMessage_Presence{Presence: res}}, nil
}

func (c *conn) cmdPresenceStats(ctx context.Context, roomName string) (*pb.ServerMessage, error) {
	if err := c.canReadPresence(roomName); err != nil {
		return nil, err
	}
	st, err := c.n.fab.PresenceStats(ctx, roomName)
	if err != nil {
		return nil, err
	}
	return &pb.ServerMessage{Body: &pb.ServerMessage_PresenceStats{PresenceStats: &pb.PresenceStatsResult{
		Users: uint32(st.Users), Connections: uint32(st.Conns),
	}}}, nil
}

func (c *conn) cmdHistory(ctx context.Context, h *pb.HistoryCommand) (*pb.ServerMessage, error) {
	roomName := h.GetRoom()
	ns, err := c.roomOptions(roomName)
	if err != nil {
		return nil, err
	}
	if ns.HistorySize == 0 {
		return nil, fabric.Errorf(fabric.CodeNotAvailable, "namespace %q keeps no history", ns.Name)
	}
	if err := c.canRead(roomName); err != nil {
		return nil, err
	}
	hist, err := c.n.fab.History(ctx, roomName, fabric.HistoryQuery{
		Since: positionFromPB(h.GetSince()), Limit: int(h.GetLimit()), Reverse: h.GetReverse(),
	})
	if err != nil {
		return nil, err
	}
	res := &pb.HistoryResult{Position: positionToPB(hist.Pos), Messages: make([]*pb.RoomMessage, 0, len(hist.Messages))}
	for _, m := range hist.Messages {
		res.Messages = append(res.Messages, replyMessageToPB(m))
	}
	return &pb.ServerMessage{Body: &pb.ServerMessage_History{History: res}}, nil
}

func (c *conn) cmdSend(s *pb.SendCommand) (*pb.ServerMessage, error) {
	payload, err := payloadFromPB(s.GetPayload())
	if err != nil {
		return nil, err
	}
	ci := c.info()
	n := c.n
	n.fab.Emit(fabric.Event{
		Type: fabric.EventClientMessage, Time: n.now(), Node: n.cfg.Name,
		Conn: ci.Conn, User: ci.User, Payload: &payload,
	})
	return &pb.ServerMessage{Body: &pb.ServerMessage_Send{Send: &pb.SendResult{}}}, nil
}

func (c *conn) cmdRefresh(r *pb.RefreshCommand) (*pb.ServerMessage, error) {
	claims, err := c.verify(r.GetToken())
	if err != nil {
		return nil, err
	}
	if claims.User != c.getClaims().User {
		return nil, fabric.Errorf(fabric.CodePermissionDenied, "token is for another user")
	}
	c.setClaims(claims)
	res := &pb.RefreshResult{}
	if !claims.ExpiresAt.IsZero() {
		res.Expires = timestamppb.New(claims.ExpiresAt)
	}
	return &pb.ServerMessage{Body: &pb.ServerMessage_Refresh{Refresh: res}}, nil
}

// canReadPresence checks that room's namespace keeps presence and that the
// connection may read it.
func (c *conn) canReadPresence(roomName string) error {
	ns, err := c.roomOptions(roomName)
	if err != nil {
		return err
	}
	if !ns.Presence {
		return fabric.Errorf(fabric.CodeNotAvailable, "namespace %q keeps no presence", ns.Name)
	}
	return c.canRead(roomName)
}
