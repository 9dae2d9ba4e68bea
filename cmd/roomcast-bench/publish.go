package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// pubSpec says how the coordinator publishes to the system under test: roomcast's
// control API, or the Socket.IO adapter's publish endpoints that mirror it.
type pubSpec struct {
	Target  string
	Control string // roomcast: control API address
	Token   string // roomcast: control API bearer token
	URL     string // Socket.IO adapter: http://host:port
	// Controls (roomcast) or URLs (Socket.IO), when set, are every node of a cluster:
	// stream k publishes through node k mod len (see at).
	Controls []string
	URLs     []string
}

// at returns the spec of node k of a cluster (k mod the node count); p itself when p
// names one node.
func (p pubSpec) at(k int) pubSpec {
	q := p
	if len(p.Controls) > 0 {
		q.Control = p.Controls[k%len(p.Controls)]
	}
	if len(p.URLs) > 0 {
		q.URL = p.URLs[k%len(p.URLs)]
	}
	return q
}

// nodes is how many nodes the spec can publish through.
func (p pubSpec) nodes() int { return max(len(p.Controls), len(p.URLs), 1) }

// publisher is one ordered publish stream (PublishStream, or the adapter's WebSocket
// that mirrors it). send may block under flow control; acknowledgements are counted by
// the publisher's own reader goroutine, which finish waits for.
type publisher interface {
	send(room string, payload []byte) error
	// finish stops sending and waits (bounded by ctx) for the outstanding acks.
	finish(ctx context.Context) (acked, failed int64, firstErr error)
	// acked is the number of acknowledgements so far.
	acked() int64
}

func (p pubSpec) open(ctx context.Context) (publisher, error) {
	switch p.Target {
	case targetRoomcast:
		return openGRPCStream(ctx, p, nil)
	case targetSocketIO:
		return openSIOStream(ctx, p)
	}
	return nil, fmt.Errorf("unknown target %q", p.Target)
}

func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// ackCounter is the acknowledgement bookkeeping shared by both stream kinds.
type ackCounter struct {
	sent, ok, bad atomic.Int64
	errMu         sync.Mutex
	firstErr      error
	done          chan struct{} // closed when the ack reader ends
}

func (a *ackCounter) fail(err error) {
	a.bad.Add(1)
	a.errMu.Lock()
	if a.firstErr == nil {
		a.firstErr = err
	}
	a.errMu.Unlock()
}

func (a *ackCounter) acked() int64 { return a.ok.Load() + a.bad.Load() }

// wait waits until every sent publish is acknowledged, the reader ends, or ctx is done.
func (a *ackCounter) wait(ctx context.Context) (int64, int64, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for a.acked() < a.sent.Load() {
		select {
		case <-a.done:
		case <-ctx.Done():
		case <-t.C:
			continue
		}
		break
	}
	a.errMu.Lock()
	defer a.errMu.Unlock()
	return a.ok.Load(), a.bad.Load(), a.firstErr
}

type grpcStream struct {
	ackCounter
	cc     *grpc.ClientConn
	stream grpc.BidiStreamingClient[pb.PublishStreamRequest, pb.PublishStreamResponse]
	cancel context.CancelFunc
	id     uint64
}

func dialControl(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// openGRPCStream opens a PublishStream on its own connection. onAck, when set, is called
// from the stream's reader goroutine with every acknowledgement: the request id (the
// n-th send has id n) and nil or the publish's error.
func openGRPCStream(ctx context.Context, p pubSpec, onAck func(id uint64, err error)) (*grpcStream, error) {
	// A connection per stream: several streams on one HTTP/2 connection share its
	// flow-control window and its single writer.
	cc, err := dialControl(p.Control)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(withToken(context.WithoutCancel(ctx), p.Token))
	st, err := pb.NewControlServiceClient(cc).PublishStream(sctx)
	if err != nil {
		cancel()
		_ = cc.Close()
		return nil, err
	}
	g := &grpcStream{cc: cc, stream: st, cancel: cancel}
	g.done = make(chan struct{})
	go func() {
		defer close(g.done)
		for {
			a, err := st.Recv()
			if err != nil {
				if g.acked() < g.sent.Load() {
					g.fail(fmt.Errorf("publish stream: %w", err))
				}
				return
			}
			if e := a.GetError(); e != nil {
				err := fmt.Errorf("publish: %s (%d)", e.GetMessage(), e.GetCode())
				if onAck != nil {
					onAck(a.GetRequestId(), err)
				}
				g.fail(err)
				continue
			}
			if onAck != nil {
				onAck(a.GetRequestId(), nil)
			}
			g.ok.Add(1)
		}
	}()
	return g, nil
}

func (g *grpcStream) send(room string, payload []byte) error {
	g.id++
	g.sent.Add(1)
	return g.stream.Send(&pb.PublishStreamRequest{RequestId: g.id, Room: room,
		Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: string(payload)}}})
}

func (g *grpcStream) finish(ctx context.Context) (int64, int64, error) {
	_ = g.stream.CloseSend()
	ok, bad, err := g.wait(ctx)
	g.cancel()
	<-g.done
	_ = g.cc.Close()
	return ok, bad, err
}

// sioStream publishes through the Socket.IO adapter's /bench/publish WebSocket: one
// text frame {"id":N,"room":R,"data":PAYLOAD} per publish, acknowledged in order with
// {"id":N} or {"id":N,"error":"…"}.
type sioStream struct {
	ackCounter
	c   *websocket.Conn
	id  int64
	buf []byte
}

func openSIOStream(ctx context.Context, p pubSpec) (*sioStream, error) {
	u := strings.Replace(strings.TrimSuffix(p.URL, "/"), "http", "ws", 1) + "/bench/publish"
	c, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		return nil, fmt.Errorf("socket.io publish endpoint: %w", err)
	}
	s := &sioStream{c: c}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				if s.acked() < s.sent.Load() {
					s.fail(fmt.Errorf("publish socket: %w", err))
				}
				return
			}
			if bytes.Contains(data, []byte(`"error"`)) {
				s.fail(fmt.Errorf("publish: %s", data))
				continue
			}
			s.ok.Add(1)
		}
	}()
	return s, nil
}

func (s *sioStream) send(room string, payload []byte) error {
	s.id++
	s.sent.Add(1)
	s.buf = append(s.buf[:0], `{"id":`...)
	s.buf = strconv.AppendInt(s.buf, s.id, 10)
	s.buf = append(s.buf, `,"room":`...)
	rb, _ := json.Marshal(room)
	s.buf = append(s.buf, rb...)
	s.buf = append(s.buf, `,"data":`...)
	s.buf = append(s.buf, payload...)
	s.buf = append(s.buf, '}')
	return s.c.WriteMessage(websocket.TextMessage, s.buf)
}

func (s *sioStream) finish(ctx context.Context) (int64, int64, error) {
	ok, bad, err := s.wait(ctx)
	_ = s.c.Close()
	<-s.done
	return ok, bad, err
}

// unaryPublisher makes one call per publish: roomcast's unary Publish, or an HTTP POST
// to the Socket.IO adapter. It is safe for concurrent use.
type unaryPublisher struct {
	p      pubSpec
	cc     *grpc.ClientConn
	client pb.ControlServiceClient
	http   *http.Client
}

func newUnary(p pubSpec, conns int) (*unaryPublisher, error) {
	u := &unaryPublisher{p: p}
	switch p.Target {
	case targetRoomcast:
		cc, err := dialControl(p.Control)
		if err != nil {
			return nil, err
		}
		u.cc, u.client = cc, pb.NewControlServiceClient(cc)
	case targetSocketIO:
		u.http = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}}
	}
	return u, nil
}

func (u *unaryPublisher) publish(ctx context.Context, room string, payload []byte) error {
	if u.client != nil {
		_, err := u.client.Publish(withToken(ctx, u.p.Token), &pb.PublishRequest{Room: room,
			Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: string(payload)}}})
		return err
	}
	rb, _ := json.Marshal(room)
	body := append(append(append([]byte(`{"room":`), rb...), `,"data":`...), payload...)
	body = append(body, '}')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(u.p.URL, "/")+"/bench/publish", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := u.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("publish: http %d", resp.StatusCode)
	}
	return nil
}

func (u *unaryPublisher) close() {
	if u.cc != nil {
		_ = u.cc.Close()
	}
	if u.http != nil {
		u.http.CloseIdleConnections()
	}
}
