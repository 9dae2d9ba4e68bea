package mesh

import (
	"context"
	"errors"
	"sync"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

// Batched publishes.
//
// A publish through a node that does not own the room costs a round trip to the
// owner. A stream of publishes (the control API's PublishStream) that waited for
// each one would be held to one publish per round trip, so PublishBatch sends the
// consecutive publishes of one room in one request, which the owner applies in order
// under one ownership check; publishes to different rooms go concurrently.

// PublishBatch publishes every publication and returns, per publication, its
// position or its error. Publications to the same room are applied in their order in
// ps; different rooms proceed concurrently. A batch whose owner changes midway fails
// the rest of that room's publications with fabric.ErrUnavailable (retry them with
// idempotency keys).
func (m *Mesh) PublishBatch(ctx context.Context, ps []fabric.Publication) ([]fabric.Position, []error) {
	pos := make([]fabric.Position, len(ps))
	errs := make([]error, len(ps))
	var order []string
	byRoom := map[string][]int{}
	for i, p := range ps {
		if _, ok := byRoom[p.Room]; !ok {
			order = append(order, p.Room)
		}
		byRoom[p.Room] = append(byRoom[p.Room], i)
	}
	var wg sync.WaitGroup
	for _, room := range order {
		idx := byRoom[room]
		run := func() { m.publishRoomBatch(ctx, room, ps, idx, pos, errs) }
		if len(order) == 1 {
			run()
			break
		}
		wg.Add(1)
		go func() { defer wg.Done(); run() }()
	}
	wg.Wait()
	return pos, errs
}

// publishRoomBatch publishes ps[i] for i in idx (all to room), in order, filling pos
// and errs at those indexes.
func (m *Mesh) publishRoomBatch(ctx context.Context, room string, ps []fabric.Publication, idx []int, pos []fabric.Position, errs []error) {
	if m.cl == nil || len(idx) == 1 {
		for _, i := range idx {
			pos[i], errs[i] = m.Publish(ctx, ps[i])
		}
		return
	}
	// Invalid publications are answered here and never travel.
	if _, err := m.lookupRoom(room); err != nil {
		for _, i := range idx {
			errs[i] = err
		}
		return
	}
	var valid []int
	for _, i := range idx {
		if err := validatePayload(ps[i].Payload); err != nil {
			errs[i] = err
		} else {
			valid = append(valid, i)
		}
	}
	if len(valid) == 0 {
		return
	}
	retry := true // a batch is retried after a lost link only if every publish has a key
	req := &meshv1.PublishBatchRequest{Publishes: make([]*meshv1.PublishRequest, len(valid))}
	for k, i := range valid {
		p := ps[i]
		r := &meshv1.PublishRequest{Room: room, Payload: payloadToWire(p.Payload), IdempotencyKey: p.IdempotencyKey}
		if p.Publisher.User != "" || p.Publisher.Conn != "" {
			r.Publisher = clientToWire(p.Publisher)
		}
		req.Publishes[k] = r
		retry = retry && p.IdempotencyKey != ""
	}
	err := m.cl.routeRoom(ctx, room, retry,
		func(e ep) error {
			res := m.publishBatchLocal(ctx, req, e)
			if len(res) == 0 {
				return errNotOwner // nothing applied: safe to route again
			}
			for k, r := range res {
				pos[valid[k]], errs[valid[k]] = posFromWire(r.GetPosition()), resultErr(r)
			}
			return nil
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_PublishBatch{PublishBatch: req}},
		func(resp *meshv1.Envelope) error {
			res := resp.GetPublishBatchReply().GetResults()
			for k, i := range valid {
				if k < len(res) {
					pos[i], errs[i] = posFromWire(res[k].GetPosition()), resultErr(res[k])
				} else {
					errs[i] = fabric.Errorf(fabric.CodeInternal, "publish batch reply has %d results for %d publishes", len(res), len(valid))
				}
			}
			return nil
		})
	if err != nil {
		for _, i := range valid {
			if errs[i] == nil && pos[i] == (fabric.Position{}) {
				errs[i] = err
			}
		}
	}
}

// publishBatchLocal applies a batch at this owner, in order. It returns no result
// when the first publish found this node not the owner (nothing applied); a later
// one that does fails with the rest as unavailable.
func (m *Mesh) publishBatchLocal(ctx context.Context, req *meshv1.PublishBatchRequest, e ep) []*meshv1.PublishResult {
	out := make([]*meshv1.PublishResult, 0, len(req.GetPublishes()))
	moved := false
	for k, r := range req.GetPublishes() {
		if moved {
			out = append(out, &meshv1.PublishResult{Error: errToPB(fabric.Errorf(fabric.CodeUnavailable, "room %q moved during a publish batch", r.GetRoom()))})
			continue
		}
		p := fabric.Publication{Room: r.GetRoom(), Payload: payloadFromWire(r.GetPayload()), IdempotencyKey: r.GetIdempotencyKey()}
		if r.Publisher != nil {
			p.Publisher = clientFromWire(r.Publisher)
		}
		pos, err := m.publishLocal(ctx, p, e)
		if errors.Is(err, errNotOwner) {
			if k == 0 {
				return nil
			}
			moved = true
			out = append(out, &meshv1.PublishResult{Error: errToPB(fabric.Errorf(fabric.CodeUnavailable, "room %q moved during a publish batch", r.GetRoom()))})
			continue
		}
		res := &meshv1.PublishResult{}
		if err != nil {
			res.Error = errToPB(err)
		} else {
			res.Position = posToWire(pos)
		}
		out = append(out, res)
	}
	return out
}

// resultErr is the error of a batch result (nil when it was accepted).
func resultErr(r *meshv1.PublishResult) error {
	if r.GetError() == nil {
		return nil
	}
	code := fabric.Code(r.GetError().GetCode())
	if code == 0 {
		code = fabric.CodeInternal
	}
	return &fabric.Error{Code: code, Msg: r.GetError().GetMessage()}
}
