// Package control serves roomcast's gRPC ControlService: a thin adapter that validates
// requests, converts them to the fabric vocabulary, calls a Fabric and maps the results
// and errors back to the public contract (proto/roomcast/v1/control.proto).
//
// # Authentication
//
// Every ControlService call and every reflection call needs either an
// `authorization: Bearer <token>` metadata entry matching one of Config.Tokens
// (compared in constant time) or a client certificate verified against
// Config.TLS.ClientCAs (mTLS). Config.Insecure turns authentication off and logs a
// warning. The grpc.health.v1 service is always open, because load-balancer and
// orchestrator probes carry no credentials and learn nothing sensitive from it.
// Reflection requires credentials like the API itself: grpcurl and similar tools can
// pass the token with `-H 'authorization: Bearer …'`.
//
// # Errors
//
// Fabric errors map to gRPC codes as follows; the status also carries a
// roomcast.v1.Error detail with the fabric's own code:
//
//	BadRequest, UnknownCommand, UnknownNamespace     InvalidArgument
//	NotFound                                         NotFound
//	PermissionDenied                                 PermissionDenied
//	LimitExceeded, RoomFull, RateLimited, TooLarge   ResourceExhausted
//	NotAvailable, NotJoined, AlreadyJoined           FailedPrecondition
//	Unavailable                                      Unavailable
//	TokenExpired                                     Unauthenticated
//	anything else                                    Internal (details only logged)
//
// An unknown namespace is InvalidArgument, not NotFound: the room name the caller
// chose is wrong for this deployment, and retrying it will never work. Cancelled and
// expired contexts map to Canceled and DeadlineExceeded. Requests larger than
// Config.MaxRecvBytes fail with ResourceExhausted; a panic in a handler is recovered,
// logged and reported as Internal.
//
// # Concurrency
//
// A *Server is safe for concurrent use; gRPC runs each call on its own goroutine.
// PublishStream runs, per stream, one goroutine receiving requests and one sending
// acknowledgements, both owned by the call and gone when it returns; publishes
// themselves run one at a time in request order, so a stream's messages to one room
// keep their order. GracefulStop and Stop first end the open streams (StreamEvents and
// PublishStream return Unavailable, which clients treat as "reconnect elsewhere"), so
// a graceful stop cannot hang on a subscriber that never leaves.
package control

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// DefaultMaxRecvBytes is the default bound on one request message.
const DefaultMaxRecvBytes = 4 << 20

// Config configures a Server.
type Config struct {
	// Fabric is what the service drives. Required.
	Fabric Fabric
	// Tokens are the accepted bearer tokens. Empty strings are not allowed.
	Tokens []string
	// Insecure allows unauthenticated calls. It must be set explicitly, and New logs a
	// warning when it is.
	Insecure bool
	// TLS, when set, serves TLS. With ClientCAs and ClientAuth set to
	// RequireAndVerifyClientCert (or VerifyClientCertIfGiven), a verified client
	// certificate authenticates the call without a token.
	TLS *tls.Config
	// Reflection registers the gRPC server reflection service (authenticated like the
	// API).
	Reflection bool
	// MaxRecvBytes bounds one request message; larger requests fail with
	// ResourceExhausted. 0 means DefaultMaxRecvBytes.
	MaxRecvBytes int
	// Logger receives warnings and errors. nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the RPC metrics (grpc_server_* by service, method, type and
	// code). nil means no metrics are registered.
	Registerer prometheus.Registerer
}

// Server is the ControlService gRPC server, with health and (optionally) reflection.
// Build it with New.
type Server struct {
	pb.UnimplementedControlServiceServer

	fabric   Fabric
	log      *slog.Logger
	insecure bool
	tokens   [][sha256.Size]byte
	mtls     bool

	grpc   *grpc.Server
	health *health.Server

	// life is the server's lifetime context, cancelled by Stop and GracefulStop so
	// that long-lived streams end instead of holding a graceful stop forever.
	life     context.Context
	stopLife context.CancelFunc
}

// healthService names the ControlService in grpc.health.v1 checks.
const healthService = "roomcast.v1.ControlService"

// New validates cfg and builds a Server. It fails when no authentication is possible:
// no Tokens, Insecure false and no mTLS.
func New(cfg Config) (*Server, error) {
	if cfg.Fabric == nil {
		return nil, errors.New("control: fabric is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxRecvBytes < 0 {
		return nil, errors.New("control: negative max recv bytes")
	}
	if cfg.MaxRecvBytes == 0 {
		cfg.MaxRecvBytes = DefaultMaxRecvBytes
	}
	s := &Server{fabric: cfg.Fabric, log: cfg.Logger, insecure: cfg.Insecure}
	for i, t := range cfg.Tokens {
		if strings.TrimSpace(t) == "" {
			return nil, fmt.Errorf("control: token %d is empty", i)
		}
		// Comparing fixed-size digests keeps the comparison constant-time whatever
		// the lengths of the presented and configured tokens.
		s.tokens = append(s.tokens, sha256.Sum256([]byte(t)))
	}
	if cfg.TLS != nil && cfg.TLS.ClientCAs != nil &&
		(cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert || cfg.TLS.ClientAuth == tls.VerifyClientCertIfGiven) {
		s.mtls = true
	}
	if len(s.tokens) == 0 && !s.insecure && !s.mtls {
		return nil, errors.New("control: no authentication configured: set tokens, mtls (tls client cas with verified client certs) or insecure")
	}
	if s.insecure {
		s.log.Warn("control api accepts unauthenticated calls (insecure mode); do not expose it")
	}

	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(metrics); err != nil {
			return nil, fmt.Errorf("control: register metrics: %w", err)
		}
	}
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		method, _ := grpc.Method(ctx)
		s.log.Error("control: panic in rpc handler", "method", method, "panic", p)
		return status.Error(codes.Internal, "internal error")
	})
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvBytes),
		// Metrics outermost so they count recovered panics and auth failures; recovery
		// around everything that runs our code.
		grpc.ChainUnaryInterceptor(metrics.UnaryServerInterceptor(), recovery.UnaryServerInterceptor(rec), s.unaryAuth),
		grpc.ChainStreamInterceptor(metrics.StreamServerInterceptor(), recovery.StreamServerInterceptor(rec), s.streamAuth),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	s.grpc = grpc.NewServer(opts...)
	pb.RegisterControlServiceServer(s.grpc, s)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	if cfg.Reflection {
		reflection.Register(s.grpc)
	}
	metrics.InitializeMetrics(s.grpc)
	s.life, s.stopLife = context.WithCancel(context.Background())
	s.SetServing(true)
	return s, nil
}

// Serve accepts connections on l until Stop or GracefulStop; it returns
// grpc.ErrServerStopped after a stop, or the listener's error.
func (s *Server) Serve(l net.Listener) error { return s.grpc.Serve(l) }

// GracefulStop reports NOT_SERVING, ends open streams with Unavailable, then waits for
// the unary calls in flight to finish.
func (s *Server) GracefulStop() {
	s.health.Shutdown()
	s.stopLife()
	s.grpc.GracefulStop()
}

// Stop reports NOT_SERVING and closes every connection at once.
func (s *Server) Stop() {
	s.health.Shutdown()
	s.stopLife()
	s.grpc.Stop()
}

// SetServing sets the grpc.health.v1 status of the server and of
// roomcast.v1.ControlService: SERVING or NOT_SERVING (while draining). It has no
// effect after a stop.
func (s *Server) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(healthService, st)
}

// GRPC returns the underlying gRPC server, for wiring and tests. Services registered
// on it get the same interceptors, authentication included.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// openMethod reports whether a full method name is served without credentials.
func openMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/")
}

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.authenticate(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.authenticate(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// authenticate admits a call with a valid bearer token or verified client
// certificate, or any call in insecure mode or to an open method.
func (s *Server) authenticate(ctx context.Context, fullMethod string) error {
	if s.insecure || openMethod(fullMethod) {
		return nil
	}
	if s.mtls && verifiedPeer(ctx) {
		return nil
	}
	if len(s.tokens) > 0 {
		md, _ := metadata.FromIncomingContext(ctx)
		for _, v := range md.Get("authorization") {
			scheme, tok, ok := strings.Cut(v, " ")
			if ok && strings.EqualFold(scheme, "bearer") && s.tokenOK(strings.TrimSpace(tok)) {
				return nil
			}
		}
	}
	return status.Error(codes.Unauthenticated, "missing or invalid credentials: send 'authorization: Bearer <token>' or a trusted client certificate")
}

// tokenOK compares tok with every configured token in constant time, without stopping
// at the first match, so timing reveals neither which token matched nor how much.
func (s *Server) tokenOK(tok string) bool {
	if tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	ok := 0
	for i := range s.tokens {
		ok |= subtle.ConstantTimeCompare(sum[:], s.tokens[i][:])
	}
	return ok == 1
}

// verifiedPeer reports whether the call's TLS peer presented a certificate that
// verified against the configured client CAs.
func verifiedPeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(ti.State.VerifiedChains) > 0
}
