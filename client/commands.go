package client

import (
	"context"
	"encoding/json"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// JSON returns a JSON payload holding data, which must be one valid JSON value.
func JSON(data []byte) fabric.Payload { return fabric.Payload{Data: data} }

// Binary returns a binary payload holding data.
func Binary(data []byte) fabric.Payload { return fabric.Payload{Data: data, Binary: true} }

// PublishOption configures a publish.
type PublishOption func(*pb.PublishCommand)

// WithIdempotencyKey sets the publish's idempotency key: a retried publish with the
// same key is not delivered twice while the server remembers the key.
func WithIdempotencyKey(key string) PublishOption {
	return func(c *pb.PublishCommand) { c.IdempotencyKey = key }
}

func checkPayload(p fabric.Payload) error {
	if !p.Binary && !json.Valid(p.Data) {
		return &Error{Code: pb.ErrorCode_ERROR_CODE_BAD_REQUEST, Message: "payload is not one valid json value"}
	}
	return nil
}

// Publish publishes p to room (the namespace must allow client publishes) and returns
// the position the room's owner assigned to it.
func (c *Client) Publish(ctx context.Context, room string, p fabric.Payload, opts ...PublishOption) (fabric.Position, error) {
	if err := checkPayload(p); err != nil {
		return fabric.Position{}, err
	}
	pc := &pb.PublishCommand{Room: room, Payload: payloadToPB(p)}
	for _, opt := range opts {
		opt(pc)
	}
	m, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_Publish{Publish: pc}}, nil)
	if err != nil {
		return fabric.Position{}, err
	}
	return posFromPB(m.GetPublish().GetPosition()), nil
}

// Send sends p to the backend, which receives it as a client-message event.
func (c *Client) Send(ctx context.Context, p fabric.Payload) error {
	if err := checkPayload(p); err != nil {
		return err
	}
	_, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_Send{Send: &pb.SendCommand{Payload: payloadToPB(p)}}}, nil)
	return err
}

// Presence returns the members of room, ordered by user.
func (c *Client) Presence(ctx context.Context, room string) ([]fabric.Member, error) {
	m, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_Presence{Presence: &pb.PresenceCommand{Room: room}}}, nil)
	if err != nil {
		return nil, err
	}
	members := m.GetPresence().GetMembers()
	out := make([]fabric.Member, 0, len(members))
	for _, pm := range members {
		out = append(out, fabric.Member{User: pm.GetUser(), Conns: pm.GetConnections(), Info: valueJSON(pm.GetInfo())})
	}
	return out, nil
}

// PresenceStats counts the users and connections in room.
func (c *Client) PresenceStats(ctx context.Context, room string) (fabric.Stats, error) {
	m, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: room}}}, nil)
	if err != nil {
		return fabric.Stats{}, err
	}
	st := m.GetPresenceStats()
	return fabric.Stats{Users: int(st.GetUsers()), Conns: int(st.GetConnections())}, nil
}

// History reads room's retained messages selected by q.
func (c *Client) History(ctx context.Context, room string, q fabric.HistoryQuery) (fabric.History, error) {
	hc := &pb.HistoryCommand{Room: room, Reverse: q.Reverse}
	if q.Since != nil {
		hc.Since = posToPB(*q.Since)
	}
	if q.Limit > 0 {
		hc.Limit = uint32(q.Limit)
	}
	m, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_History{History: hc}}, nil)
	if err != nil {
		return fabric.History{}, err
	}
	hr := m.GetHistory()
	h := fabric.History{Pos: posFromPB(hr.GetPosition()), Messages: make([]*fabric.Message, 0, len(hr.GetMessages()))}
	for _, rm := range hr.GetMessages() {
		h.Messages = append(h.Messages, messageFromPB(rm))
	}
	return h, nil
}
