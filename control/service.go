package control

import (
	"context"
	"encoding/base64"
	"io"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// Limits of the public contract (control.proto) and of this server.
const (
	// MaxBroadcastRooms is the most rooms one Broadcast may name.
	MaxBroadcastRooms = 1000
	// MaxPageSize is the largest page_size of ListRooms and ListNodes.
	MaxPageSize = 1000
	// DefaultRoomsPageSize is ListRooms' page size when the request gives none.
	DefaultRoomsPageSize = 100
	// MaxHistoryLimit is the most messages one GetHistory returns; larger limits are
	// lowered to it.
	MaxHistoryLimit = 1000
	// MaxKickReason is the longest kick reason, in bytes.
	MaxKickReason = 120
	// MaxIdempotencyKey is the longest idempotency key, in bytes.
	MaxIdempotencyKey = 256
	// DefaultEventBuffer is a StreamEvents subscription's buffer when the request
	// gives none; MaxEventBuffer is the largest accepted.
	DefaultEventBuffer = 1024
	MaxEventBuffer     = 1 << 16
	// broadcastParallelism bounds the publishes one Broadcast runs at once.
	broadcastParallelism = 16
	// streamQueue bounds the requests received and acknowledgements queued per
	// PublishStream, so a stalled client or fabric applies backpressure.
	streamQueue = 256
)

// Compile-time check that every RPC is implemented by *Server itself rather than
// inherited from the embedded Unimplemented server.
var _ interface {
	Publish(context.Context, *pb.PublishRequest) (*pb.PublishResponse, error)
	Broadcast(context.Context, *pb.BroadcastRequest) (*pb.BroadcastResponse, error)
	PublishStream(grpc.BidiStreamingServer[pb.PublishStreamRequest, pb.PublishStreamResponse]) error
	SendToUser(context.Context, *pb.SendToUserRequest) (*pb.SendToUserResponse, error)
	SendToConnection(context.Context, *pb.SendToConnectionRequest) (*pb.SendToConnectionResponse, error)
	JoinRoom(context.Context, *pb.JoinRoomRequest) (*pb.JoinRoomResponse, error)
	LeaveRoom(context.Context, *pb.LeaveRoomRequest) (*pb.LeaveRoomResponse, error)
	Kick(context.Context, *pb.KickRequest) (*pb.KickResponse, error)
	GetPresence(context.Context, *pb.GetPresenceRequest) (*pb.GetPresenceResponse, error)
	GetPresenceStats(context.Context, *pb.GetPresenceStatsRequest) (*pb.GetPresenceStatsResponse, error)
	GetHistory(context.Context, *pb.GetHistoryRequest) (*pb.GetHistoryResponse, error)
	ListRooms(context.Context, *pb.ListRoomsRequest) (*pb.ListRoomsResponse, error)
	ListNodes(context.Context, *pb.ListNodesRequest) (*pb.ListNodesResponse, error)
	StreamEvents(*pb.StreamEventsRequest, grpc.ServerStreamingServer[pb.StreamEventsResponse]) error
} = (*Server)(nil)

// publication validates the parts of a publish and builds it.
func publication(room string, p *pb.Payload, key string) (fabric.Publication, error) {
	if err := fabric.ValidateRoom(room); err != nil {
		return fabric.Publication{}, err
	}
	if len(key) > MaxIdempotencyKey {
		return fabric.Publication{}, badRequest("idempotency key longer than %d bytes", MaxIdempotencyKey)
	}
	payload, err := payloadIn(p)
	if err != nil {
		return fabric.Publication{}, err
	}
	return fabric.Publication{Room: room, Payload: payload, IdempotencyKey: key}, nil
}

// Publish implements roomcast.v1.ControlService.Publish.
func (s *Server) Publish(ctx context.Context, req *pb.PublishRequest) (*pb.PublishResponse, error) {
	pub, err := publication(req.GetRoom(), req.GetPayload(), req.GetIdempotencyKey())
	if err != nil {
		return nil, s.toStatus(ctx, "Publish", err)
	}
	pos, err := s.fabric.Publish(ctx, pub)
	if err != nil {
		return nil, s.toStatus(ctx, "Publish", err)
	}
	return &pb.PublishResponse{Position: positionOut(pos)}, nil
}

// Broadcast implements roomcast.v1.ControlService.Broadcast. Rooms are published
// concurrently (bounded), and each succeeds or fails on its own; an invalid room name
// fails only its own result.
func (s *Server) Broadcast(ctx context.Context, req *pb.BroadcastRequest) (*pb.BroadcastResponse, error) {
	rooms := req.GetRooms()
	switch {
	case len(rooms) == 0:
		return nil, s.toStatus(ctx, "Broadcast", badRequest("rooms is empty"))
	case len(rooms) > MaxBroadcastRooms:
		return nil, s.toStatus(ctx, "Broadcast", badRequest("more than %d rooms", MaxBroadcastRooms))
	case len(req.GetIdempotencyKey()) > MaxIdempotencyKey:
		return nil, s.toStatus(ctx, "Broadcast", badRequest("idempotency key longer than %d bytes", MaxIdempotencyKey))
	}
	payload, err := payloadIn(req.GetPayload())
	if err != nil {
		return nil, s.toStatus(ctx, "Broadcast", err)
	}
	results := make([]*pb.BroadcastResult, len(rooms))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(broadcastParallelism, len(rooms)) {
		wg.Go(func() {
			for i := range jobs {
				results[i] = s.broadcastOne(ctx, rooms[i], payload, req.GetIdempotencyKey())
			}
		})
	}
	for i := range rooms {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, s.toStatus(ctx, "Broadcast", err)
	}
	return &pb.BroadcastResponse{Results: results}, nil
}

func (s *Server) broadcastOne(ctx context.Context, room string, payload fabric.Payload, key string) *pb.BroadcastResult {
	res := &pb.BroadcastResult{Room: room}
	if err := fabric.ValidateRoom(room); err != nil {
		res.Error = errorOut(err)
		return res
	}
	pos, err := s.fabric.Publish(ctx, fabric.Publication{Room: room, Payload: payload, IdempotencyKey: key})
	if err != nil {
		res.Error = s.itemError(ctx, "Broadcast", err)
		return res
	}
	res.Position = positionOut(pos)
	return res
}

// itemError converts the error of one item of a batch, logging internal ones.
func (s *Server) itemError(ctx context.Context, method string, err error) *pb.Error {
	if fabric.CodeOf(err) == fabric.CodeInternal {
		s.log.ErrorContext(ctx, "control: internal error", "method", method, "err", err)
	}
	return errorOut(err)
}

// PublishStream implements roomcast.v1.ControlService.PublishStream. Three stages run
// concurrently: a receiver goroutine reads requests, this goroutine publishes them one
// at a time in order, and a sender goroutine writes the acknowledgements in the same
// order. Bounded queues between them apply backpressure both ways.
func (s *Server) PublishStream(stream grpc.BidiStreamingServer[pb.PublishStreamRequest, pb.PublishStreamResponse]) error {
	ctx := stream.Context()
	done := make(chan struct{}) // closed when this handler returns
	defer close(done)

	// Receiver: owned by this call. It can outlive the handler only while blocked in
	// Recv, which returns as soon as gRPC finishes the stream after the handler.
	type received struct {
		req *pb.PublishStreamRequest
		err error
	}
	reqs := make(chan received, streamQueue)
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case reqs <- received{req, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()

	// Sender: owned by this call; the handler waits for it before returning.
	acks := make(chan *pb.PublishStreamResponse, streamQueue)
	sendErr := make(chan error, 1)
	go func() {
		for ack := range acks {
			if err := stream.Send(ack); err != nil {
				sendErr <- err
				// Drain so the publisher never blocks on a dead sender.
				for range acks {
				}
				return
			}
		}
		sendErr <- nil
	}()
	finish := func(err error) error {
		close(acks)
		if serr := <-sendErr; serr != nil && err == nil {
			err = serr
		}
		return err
	}

	for {
		var r received
		select {
		case r = <-reqs:
		case <-s.life.Done():
			return finish(status.Error(codes.Unavailable, "server is shutting down"))
		}
		if r.err != nil {
			if r.err == io.EOF {
				return finish(nil)
			}
			return finish(r.err)
		}
		// Take whatever else has arrived already (up to maxStreamBatch): the batch
		// is published at once — one owner round trip per room — and acknowledged in
		// request order. A receive error ends the batch and is handled after it.
		batch := []*pb.PublishStreamRequest{r.req}
		var pending *received
	more:
		for len(batch) < maxStreamBatch {
			select {
			case next := <-reqs:
				if next.err != nil {
					pending = &next
					break more
				}
				batch = append(batch, next.req)
			default:
				break more
			}
		}
		for _, ack := range s.publishAll(ctx, batch) {
			if ack == nil { // the stream's context ended
				return finish(s.toStatus(ctx, "PublishStream", ctx.Err()))
			}
			select {
			case acks <- ack:
			case <-s.life.Done():
				return finish(status.Error(codes.Unavailable, "server is shutting down"))
			}
		}
		if pending != nil {
			if pending.err == io.EOF {
				return finish(nil)
			}
			return finish(pending.err)
		}
	}
}

// maxStreamBatch bounds the publishes of one PublishStream taken together.
const maxStreamBatch = 256

// batchPublisher is implemented by a Fabric that publishes many publications at once,
// keeping their order per room (mesh.Mesh does).
type batchPublisher interface {
	PublishBatch(ctx context.Context, ps []fabric.Publication) ([]fabric.Position, []error)
}

// publishAll publishes a stream's batch and returns its acks in order; a nil ack
// means the stream's context ended.
func (s *Server) publishAll(ctx context.Context, reqs []*pb.PublishStreamRequest) []*pb.PublishStreamResponse {
	acks := make([]*pb.PublishStreamResponse, len(reqs))
	pubs := make([]fabric.Publication, 0, len(reqs))
	at := make([]int, 0, len(reqs)) // index in reqs of each valid publication
	for i, req := range reqs {
		acks[i] = &pb.PublishStreamResponse{RequestId: req.GetRequestId()}
		pub, err := publication(req.GetRoom(), req.GetPayload(), req.GetIdempotencyKey())
		if err != nil {
			acks[i].Error = s.itemError(ctx, "PublishStream", err)
			continue
		}
		pubs = append(pubs, pub)
		at = append(at, i)
	}
	var pos []fabric.Position
	var errs []error
	if bp, ok := s.fabric.(batchPublisher); ok && len(pubs) > 1 {
		pos, errs = bp.PublishBatch(ctx, pubs)
	} else {
		pos, errs = make([]fabric.Position, len(pubs)), make([]error, len(pubs))
		for k, p := range pubs {
			pos[k], errs[k] = s.fabric.Publish(ctx, p)
		}
	}
	for k, i := range at {
		switch {
		case errs[k] == nil:
			acks[i].Position = positionOut(pos[k])
		case ctx.Err() != nil:
			acks[i] = nil
		default:
			acks[i].Error = s.itemError(ctx, "PublishStream", errs[k])
		}
	}
	return acks
}

// SendToUser implements roomcast.v1.ControlService.SendToUser.
func (s *Server) SendToUser(ctx context.Context, req *pb.SendToUserRequest) (*pb.SendToUserResponse, error) {
	if req.GetUser() == "" {
		return nil, s.toStatus(ctx, "SendToUser", badRequest("user is empty"))
	}
	payload, err := payloadIn(req.GetPayload())
	if err != nil {
		return nil, s.toStatus(ctx, "SendToUser", err)
	}
	n, err := s.fabric.SendToUser(ctx, req.GetUser(), payload)
	if err != nil {
		return nil, s.toStatus(ctx, "SendToUser", err)
	}
	return &pb.SendToUserResponse{Connections: clampU32(n)}, nil
}

// SendToConnection implements roomcast.v1.ControlService.SendToConnection.
func (s *Server) SendToConnection(ctx context.Context, req *pb.SendToConnectionRequest) (*pb.SendToConnectionResponse, error) {
	if err := validateConn(req.GetConnection()); err != nil {
		return nil, s.toStatus(ctx, "SendToConnection", err)
	}
	payload, err := payloadIn(req.GetPayload())
	if err != nil {
		return nil, s.toStatus(ctx, "SendToConnection", err)
	}
	if err := s.fabric.SendToConn(ctx, req.GetConnection(), payload); err != nil {
		return nil, s.toStatus(ctx, "SendToConnection", err)
	}
	return &pb.SendToConnectionResponse{}, nil
}

// validateConn checks that a connection id names its node ("<seq>@<node>").
func validateConn(conn string) error {
	if conn == "" {
		return badRequest("connection is empty")
	}
	if fabric.NodeOfConn(conn) == "" {
		return badRequest("connection id %q is malformed", conn)
	}
	return nil
}

// target validates a Target and converts it.
func target(t *pb.Target) (fabric.Target, error) {
	switch k := t.GetTarget().(type) {
	case *pb.Target_User:
		if k.User == "" {
			return fabric.Target{}, badRequest("target user is empty")
		}
		return fabric.Target{User: k.User}, nil
	case *pb.Target_Connection:
		if err := validateConn(k.Connection); err != nil {
			return fabric.Target{}, badRequest("target %v", err)
		}
		return fabric.Target{Conn: k.Connection}, nil
	}
	return fabric.Target{}, badRequest("target is missing: set user or connection")
}

// JoinRoom implements roomcast.v1.ControlService.JoinRoom.
func (s *Server) JoinRoom(ctx context.Context, req *pb.JoinRoomRequest) (*pb.JoinRoomResponse, error) {
	if err := fabric.ValidateRoom(req.GetRoom()); err != nil {
		return nil, s.toStatus(ctx, "JoinRoom", err)
	}
	t, err := target(req.GetTarget())
	if err != nil {
		return nil, s.toStatus(ctx, "JoinRoom", err)
	}
	n, err := s.fabric.JoinRoom(ctx, req.GetRoom(), t)
	if err != nil {
		return nil, s.toStatus(ctx, "JoinRoom", err)
	}
	return &pb.JoinRoomResponse{Connections: clampU32(n)}, nil
}

// LeaveRoom implements roomcast.v1.ControlService.LeaveRoom.
func (s *Server) LeaveRoom(ctx context.Context, req *pb.LeaveRoomRequest) (*pb.LeaveRoomResponse, error) {
	if err := fabric.ValidateRoom(req.GetRoom()); err != nil {
		return nil, s.toStatus(ctx, "LeaveRoom", err)
	}
	t, err := target(req.GetTarget())
	if err != nil {
		return nil, s.toStatus(ctx, "LeaveRoom", err)
	}
	n, err := s.fabric.LeaveRoom(ctx, req.GetRoom(), t)
	if err != nil {
		return nil, s.toStatus(ctx, "LeaveRoom", err)
	}
	return &pb.LeaveRoomResponse{Connections: clampU32(n)}, nil
}

// kick validates a KickRequest's close code and reason (see control.proto) and
// converts them.
func kick(req *pb.KickRequest) (fabric.Kick, error) {
	code := fabric.CloseCode(req.GetCode())
	switch {
	case req.GetCode() == 0 && req.GetReconnect():
		code = fabric.CloseKicked
	case req.GetCode() == 0:
		code = fabric.CloseForbidden
	case req.GetReconnect() && (code < 4000 || code > 4499):
		return fabric.Kick{}, badRequest("code %d must be in 4000-4499 when reconnect is true", code)
	case !req.GetReconnect() && (code < 4500 || code > 4999):
		return fabric.Kick{}, badRequest("code %d must be in 4500-4999 when reconnect is false", code)
	}
	if len(req.GetReason()) > MaxKickReason {
		return fabric.Kick{}, badRequest("reason longer than %d bytes", MaxKickReason)
	}
	if !utf8.ValidString(req.GetReason()) {
		return fabric.Kick{}, badRequest("reason is not valid utf-8")
	}
	return fabric.Kick{Code: code, Reason: req.GetReason(), Reconnect: req.GetReconnect()}, nil
}

// Kick implements roomcast.v1.ControlService.Kick.
func (s *Server) Kick(ctx context.Context, req *pb.KickRequest) (*pb.KickResponse, error) {
	t, err := target(req.GetTarget())
	if err != nil {
		return nil, s.toStatus(ctx, "Kick", err)
	}
	k, err := kick(req)
	if err != nil {
		return nil, s.toStatus(ctx, "Kick", err)
	}
	n, err := s.fabric.Kick(ctx, t, k)
	if err != nil {
		return nil, s.toStatus(ctx, "Kick", err)
	}
	return &pb.KickResponse{Connections: clampU32(n)}, nil
}

// GetPresence implements roomcast.v1.ControlService.GetPresence.
func (s *Server) GetPresence(ctx context.Context, req *pb.GetPresenceRequest) (*pb.GetPresenceResponse, error) {
	if err := fabric.ValidateRoom(req.GetRoom()); err != nil {
		return nil, s.toStatus(ctx, "GetPresence", err)
	}
	members, err := s.fabric.Presence(ctx, req.GetRoom())
	if err != nil {
		return nil, s.toStatus(ctx, "GetPresence", err)
	}
	out := &pb.GetPresenceResponse{Members: make([]*pb.Member, 0, len(members))}
	for _, m := range members {
		info, err := jsonValue(m.Info)
		if err != nil {
			return nil, s.toStatus(ctx, "GetPresence", err)
		}
		out.Members = append(out.Members, &pb.Member{User: m.User, Connections: m.Conns, Info: info})
	}
	return out, nil
}

// GetPresenceStats implements roomcast.v1.ControlService.GetPresenceStats.
func (s *Server) GetPresenceStats(ctx context.Context, req *pb.GetPresenceStatsRequest) (*pb.GetPresenceStatsResponse, error) {
	if err := fabric.ValidateRoom(req.GetRoom()); err != nil {
		return nil, s.toStatus(ctx, "GetPresenceStats", err)
	}
	st, err := s.fabric.PresenceStats(ctx, req.GetRoom())
	if err != nil {
		return nil, s.toStatus(ctx, "GetPresenceStats", err)
	}
	return &pb.GetPresenceStatsResponse{Users: clampU32(st.Users), Connections: clampU32(st.Conns)}, nil
}

// GetHistory implements roomcast.v1.ControlService.GetHistory. A limit above
// MaxHistoryLimit is lowered to it; 0 asks for the maximum.
func (s *Server) GetHistory(ctx context.Context, req *pb.GetHistoryRequest) (*pb.GetHistoryResponse, error) {
	if err := fabric.ValidateRoom(req.GetRoom()); err != nil {
		return nil, s.toStatus(ctx, "GetHistory", err)
	}
	q := fabric.HistoryQuery{Limit: int(min(req.GetLimit(), MaxHistoryLimit)), Reverse: req.GetReverse()}
	if q.Limit == 0 {
		q.Limit = MaxHistoryLimit
	}
	if since := req.GetSince(); since != nil {
		q.Since = &fabric.Position{Epoch: since.GetEpoch(), Offset: since.GetOffset()}
	}
	h, err := s.fabric.History(ctx, req.GetRoom(), q)
	if err != nil {
		return nil, s.toStatus(ctx, "GetHistory", err)
	}
	out := &pb.GetHistoryResponse{Messages: make([]*pb.RoomMessage, 0, len(h.Messages)), Position: positionOut(h.Pos)}
	for _, m := range h.Messages {
		pm, err := messageOut(m)
		if err != nil {
			return nil, s.toStatus(ctx, "GetHistory", err)
		}
		out.Messages = append(out.Messages, pm)
	}
	return out, nil
}

// encodePageToken and decodePageToken make the opaque page token: the base64url of
// the last name returned.
func encodePageToken(last string) string { return base64.RawURLEncoding.EncodeToString([]byte(last)) }

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) == 0 || len(b) > fabric.MaxRoomLen || !utf8.Valid(b) {
		return "", badRequest("page_token is malformed")
	}
	return string(b), nil
}

// ListRooms implements roomcast.v1.ControlService.ListRooms.
func (s *Server) ListRooms(ctx context.Context, req *pb.ListRoomsRequest) (*pb.ListRoomsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size > MaxPageSize:
		return nil, s.toStatus(ctx, "ListRooms", badRequest("page_size must be at most %d", MaxPageSize))
	case size == 0:
		size = DefaultRoomsPageSize
	}
	if len(req.GetPrefix()) > fabric.MaxRoomLen {
		return nil, s.toStatus(ctx, "ListRooms", badRequest("prefix longer than %d bytes", fabric.MaxRoomLen))
	}
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, s.toStatus(ctx, "ListRooms", err)
	}
	rooms, more, err := s.fabric.ListRooms(ctx, req.GetPrefix(), after, size)
	if err != nil {
		return nil, s.toStatus(ctx, "ListRooms", err)
	}
	out := &pb.ListRoomsResponse{Rooms: make([]*pb.RoomSummary, 0, len(rooms))}
	for _, r := range rooms {
		out.Rooms = append(out.Rooms, &pb.RoomSummary{
			Name:        r.Name,
			Users:       clampU32(r.Stats.Users),
			Connections: clampU32(r.Stats.Conns),
			Position:    positionOut(r.Pos),
			Owner:       r.Owner,
		})
	}
	if more && len(rooms) > 0 {
		out.NextPageToken = encodePageToken(rooms[len(rooms)-1].Name)
	}
	return out, nil
}

// ListNodes implements roomcast.v1.ControlService.ListNodes, paginating over the
// fabric's full node list by name.
func (s *Server) ListNodes(ctx context.Context, req *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	size := int(req.GetPageSize())
	if size > MaxPageSize {
		return nil, s.toStatus(ctx, "ListNodes", badRequest("page_size must be at most %d", MaxPageSize))
	}
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, s.toStatus(ctx, "ListNodes", err)
	}
	nodes, err := s.fabric.ListNodes(ctx)
	if err != nil {
		return nil, s.toStatus(ctx, "ListNodes", err)
	}
	nodes = append([]fabric.NodeInfo(nil), nodes...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	start := sort.Search(len(nodes), func(i int) bool { return nodes[i].Name > after })
	nodes = nodes[start:]
	out := &pb.ListNodesResponse{}
	if size > 0 && len(nodes) > size {
		nodes = nodes[:size]
		out.NextPageToken = encodePageToken(nodes[size-1].Name)
	}
	out.Nodes = make([]*pb.NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, nodeOut(n))
	}
	return out, nil
}

// eventFilter validates a StreamEventsRequest and converts its filter.
func eventFilter(req *pb.StreamEventsRequest) (fabric.EventFilter, int, error) {
	f := fabric.EventFilter{RoomPattern: req.GetRoomPattern(), User: req.GetUser()}
	for _, t := range req.GetTypes() {
		if t <= pb.EventType_EVENT_TYPE_UNSPECIFIED || t > pb.EventType_EVENT_TYPE_GAP {
			return f, 0, badRequest("event type %d is not valid", int32(t))
		}
		f.Types = append(f.Types, fabric.EventType(t))
	}
	if p := f.RoomPattern; p != "" {
		if i := strings.IndexByte(p, '*'); i >= 0 && i != len(p)-1 {
			return f, 0, badRequest("room_pattern %q: '*' is only allowed at the end", p)
		}
		if len(p) > fabric.MaxRoomLen+1 {
			return f, 0, badRequest("room_pattern longer than %d bytes", fabric.MaxRoomLen+1)
		}
	}
	buffer := int(req.GetBuffer())
	switch {
	case buffer > MaxEventBuffer:
		return f, 0, badRequest("buffer must be at most %d", MaxEventBuffer)
	case buffer == 0:
		buffer = DefaultEventBuffer
	}
	return f, buffer, nil
}

// StreamEvents implements roomcast.v1.ControlService.StreamEvents. Response headers
// are sent once the subscription is in place, so a client that must not miss events
// caused right after its call can wait for them (ClientStream.Header) first.
func (s *Server) StreamEvents(req *pb.StreamEventsRequest, stream grpc.ServerStreamingServer[pb.StreamEventsResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stopOnShutdown := context.AfterFunc(s.life, cancel)
	defer stopOnShutdown()

	filter, buffer, err := eventFilter(req)
	if err != nil {
		return s.toStatus(ctx, "StreamEvents", err)
	}
	sub, err := s.fabric.Subscribe(filter, req.GetGroup(), buffer)
	if err != nil {
		return s.toStatus(ctx, "StreamEvents", err)
	}
	defer sub.Close()
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			if s.life.Err() != nil && stream.Context().Err() == nil {
				return status.Error(codes.Unavailable, "server is shutting down")
			}
			return s.toStatus(ctx, "StreamEvents", err)
		}
		pev, err := eventOut(&ev)
		if err != nil {
			return s.toStatus(ctx, "StreamEvents", err)
		}
		if err := stream.Send(&pb.StreamEventsResponse{Event: pev}); err != nil {
			return err
		}
	}
}
