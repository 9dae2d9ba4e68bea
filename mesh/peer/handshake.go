package peer

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

// nonceHeader carries the listener's nonce in the Link response header, sent before
// the listener reads the Hello (the "-bin" suffix makes gRPC carry raw bytes).
const nonceHeader = "roomcast-peer-nonce-bin"

const nonceSize = 32

// Domain labels of the two MACs, so a Hello MAC can never pass as a HelloAck MAC.
const (
	labelHello = "roomcast.mesh.v1 hello"
	labelAck   = "roomcast.mesh.v1 hello-ack"
)

// handshakeData is what both MACs cover.
type handshakeData struct {
	cluster              string
	dialer, listener     *meshv1.Sender
	dialerNonce, lsNonce []byte
	protoMin, protoMax   uint32
}

func (d *handshakeData) mac(secret []byte, label string, chosen uint32) []byte {
	h := hmac.New(sha256.New, secret)
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	num := func(v uint64) {
		binary.BigEndian.PutUint64(n[:], v)
		h.Write(n[:])
	}
	field([]byte(label))
	field([]byte(d.cluster))
	field([]byte(d.dialer.GetNode()))
	num(d.dialer.GetIncarnation())
	field([]byte(d.listener.GetNode()))
	num(d.listener.GetIncarnation())
	field(d.dialerNonce)
	field(d.lsNonce)
	num(uint64(d.protoMin))
	num(uint64(d.protoMax))
	num(uint64(chosen))
	return h.Sum(nil)
}

// verify returns the secret that produced mac, or nil.
func (d *handshakeData) verify(secrets [][]byte, label string, chosen uint32, mac []byte) []byte {
	for _, s := range secrets {
		if hmac.Equal(d.mac(s, label, chosen), mac) {
			return s
		}
	}
	return nil
}

func nonce() []byte {
	b := make([]byte, nonceSize)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it panics on a broken system)
	return b
}

// dial opens an outbound Link on cc to the node `want` and runs the dialer's side of
// the handshake. The returned Peer is not installed or started.
func (l *Links) dial(cc *grpc.ClientConn, want *meshv1.Sender, id string) (*Peer, error) {
	ctx, cancel := context.WithCancel(l.ctx)
	timer := time.AfterFunc(l.cfg.HandshakeTimeout, cancel)
	p, err := l.dialHandshake(ctx, cancel, cc, want)
	if !timer.Stop() && err == nil {
		err = errors.New("handshake timed out")
	}
	if err != nil {
		cancel()
		l.m.handshakeFailures.WithLabelValues("dial").Inc()
		return nil, fmt.Errorf("link to %s: %w", id, err)
	}
	return p, nil
}

func (l *Links) dialHandshake(ctx context.Context, cancel context.CancelFunc, cc *grpc.ClientConn, want *meshv1.Sender) (*Peer, error) {
	stream, err := meshv1.NewPeerServiceClient(cc).Link(ctx, grpc.WaitForReady(false))
	if err != nil {
		return nil, err
	}
	md, err := stream.Header()
	if err != nil {
		return nil, err
	}
	vals := md.Get(nonceHeader)
	if len(vals) != 1 || len(vals[0]) != nonceSize {
		// The stream may have ended with a status before any header; report that.
		if _, rerr := stream.Recv(); rerr != nil {
			return nil, rerr
		}
		return nil, errors.New("listener sent no nonce")
	}
	d := &handshakeData{
		cluster: l.cfg.Cluster, dialer: l.self, listener: want,
		dialerNonce: nonce(), lsNonce: []byte(vals[0]),
		protoMin: l.cfg.ProtocolMin, protoMax: l.cfg.ProtocolMax,
	}
	hello := &meshv1.Hello{
		Cluster: l.cfg.Cluster, ProtocolMin: d.protoMin, ProtocolMax: d.protoMax,
		Version: l.cfg.Version, ExpectedPeer: want, Nonce: d.dialerNonce,
		Auth: d.mac(l.cfg.Secrets[0], labelHello, 0),
	}
	req := &meshv1.LinkRequest{Batch: &meshv1.Batch{Sender: l.self, Envelopes: []*meshv1.Envelope{{Body: &meshv1.Envelope_Hello{Hello: hello}}}}}
	if err := stream.Send(req); err != nil {
		_, rerr := stream.Recv() // the real cause is the status
		return nil, rerr
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	b := resp.GetBatch()
	if s := b.GetSender(); s.GetNode() != want.GetNode() || s.GetIncarnation() != want.GetIncarnation() {
		return nil, fmt.Errorf("listener is %s", ID(s.GetNode(), s.GetIncarnation()))
	}
	if len(b.GetEnvelopes()) != 1 || b.Envelopes[0].GetHelloAck() == nil {
		return nil, errors.New("listener's first batch is not one hello ack")
	}
	ack := b.Envelopes[0].GetHelloAck()
	if ack.GetProtocol() < d.protoMin || ack.GetProtocol() > d.protoMax {
		return nil, fmt.Errorf("listener chose protocol %d outside [%d,%d]", ack.GetProtocol(), d.protoMin, d.protoMax)
	}
	if d.verify(l.cfg.Secrets, labelAck, ack.GetProtocol(), ack.GetAuth()) == nil {
		return nil, errors.New("listener failed authentication")
	}
	return newPeer(l, want, true, ack.GetProtocol(), ack.GetVersion(), &clientWire{s: stream}, cancel), nil
}

// Server implements meshv1.PeerServiceServer: it accepts inbound links for a Links.
type Server struct {
	meshv1.UnimplementedPeerServiceServer
	l *Links
}

// Link runs the listener's side of one link: handshake, then the link until it ends.
func (s *Server) Link(stream grpc.BidiStreamingServer[meshv1.LinkRequest, meshv1.LinkResponse]) error {
	l := s.l
	p, err := s.accept(stream)
	if err != nil {
		why := reason(err)
		l.m.handshakeFailures.WithLabelValues(why).Inc()
		if why == "tie_break" {
			l.log.Debug("peer link refused", "err", err) // expected when both sides dial
		} else {
			l.log.Warn("peer link refused", "err", err)
		}
		return err
	}
	select {
	case <-p.done:
	case <-stream.Context().Done():
		p.close(errors.New("stream ended"))
	}
	// The writer must be gone before the handler returns: sending on a server stream
	// after its handler returned is not allowed.
	<-p.writerDone
	return nil
}

func reason(err error) string {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return "auth"
	case codes.AlreadyExists:
		return "tie_break"
	case codes.FailedPrecondition:
		return "mismatch"
	case codes.DeadlineExceeded:
		return "timeout"
	}
	return "other"
}

func (s *Server) accept(stream grpc.BidiStreamingServer[meshv1.LinkRequest, meshv1.LinkResponse]) (*Peer, error) {
	l := s.l
	lsNonce := nonce()
	if err := stream.SendHeader(metadata.Pairs(nonceHeader, string(lsNonce))); err != nil {
		return nil, err
	}
	type result struct {
		req *meshv1.LinkRequest
		err error
	}
	// The first Recv runs in a goroutine so the handshake can time out; on timeout the
	// handler returns, gRPC cancels the stream and the Recv returns at once.
	got := make(chan result, 1)
	go func() {
		r, err := stream.Recv()
		got <- result{r, err}
	}()
	timer := time.NewTimer(l.cfg.HandshakeTimeout)
	defer timer.Stop()
	var first result
	select {
	case first = <-got:
	case <-timer.C:
		return nil, status.Error(codes.DeadlineExceeded, "no hello in time")
	case <-l.ctx.Done():
		return nil, status.Error(codes.Unavailable, "node shutting down")
	}
	if first.err != nil {
		return nil, first.err
	}
	b := first.req.GetBatch()
	dialer := b.GetSender()
	if len(b.GetEnvelopes()) != 1 || b.Envelopes[0].GetHello() == nil || dialer.GetNode() == "" || dialer.GetIncarnation() == 0 {
		return nil, status.Error(codes.InvalidArgument, "first batch must be one hello from a named sender")
	}
	hello := b.Envelopes[0].GetHello()
	if hello.GetCluster() != l.cfg.Cluster {
		return nil, status.Errorf(codes.FailedPrecondition, "cluster %q is not %q", hello.GetCluster(), l.cfg.Cluster)
	}
	if exp := hello.GetExpectedPeer(); exp.GetNode() != l.self.Node || exp.GetIncarnation() != l.self.Incarnation {
		return nil, status.Errorf(codes.FailedPrecondition, "link meant for %s, this is %s", ID(exp.GetNode(), exp.GetIncarnation()), l.selfID)
	}
	d := &handshakeData{
		cluster: l.cfg.Cluster, dialer: dialer, listener: l.self,
		dialerNonce: hello.GetNonce(), lsNonce: lsNonce,
		protoMin: hello.GetProtocolMin(), protoMax: hello.GetProtocolMax(),
	}
	// Authenticate before anything else about the dialer is believed.
	secret := d.verify(l.cfg.Secrets, labelHello, 0, hello.GetAuth())
	if secret == nil {
		return nil, status.Errorf(codes.Unauthenticated, "hello from %s failed authentication", ID(dialer.GetNode(), dialer.GetIncarnation()))
	}
	chosen := min(hello.GetProtocolMax(), l.cfg.ProtocolMax)
	if chosen < hello.GetProtocolMin() || chosen < l.cfg.ProtocolMin {
		return nil, status.Errorf(codes.FailedPrecondition, "no common protocol: dialer [%d,%d], listener [%d,%d]",
			hello.GetProtocolMin(), hello.GetProtocolMax(), l.cfg.ProtocolMin, l.cfg.ProtocolMax)
	}
	p := newPeer(l, dialer, false, chosen, hello.GetVersion(), &serverWire{s: stream}, nil)
	if p.id == l.selfID {
		return nil, status.Error(codes.FailedPrecondition, "link to self")
	}
	ok, err := l.install(p, nil)
	if !ok {
		code := codes.AlreadyExists
		if errors.Is(err, ErrClosed) {
			code = codes.Unavailable
		}
		return nil, status.Errorf(code, "link from %s refused: %v", p.id, err)
	}
	// The ack is answered with the secret that verified the Hello, which the dialer
	// holds by definition, so links form in every phase of a rotation.
	ack := &meshv1.HelloAck{Protocol: chosen, Version: l.cfg.Version, Auth: d.mac(secret, labelAck, chosen)}
	if err := stream.Send(&meshv1.LinkResponse{Batch: &meshv1.Batch{Sender: l.self, Envelopes: []*meshv1.Envelope{{Body: &meshv1.Envelope_HelloAck{HelloAck: ack}}}}}); err != nil {
		close(p.writerDone)
		p.close(fmt.Errorf("send hello ack: %w", err))
		return nil, err
	}
	p.start()
	return p, nil
}
