package client

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/roomcast/roomcast/fabric"
)

// Subprotocols the client can speak.
const (
	// SubprotocolJSON sends text frames with the canonical protobuf JSON mapping.
	SubprotocolJSON = "roomcast.v1.json"
	// SubprotocolProto sends binary protobuf frames.
	SubprotocolProto = "roomcast.v1.proto"
)

// Name is sent as the client name in the connect command.
const Name = "roomcast-go/0.1"

// Defaults of the options.
const (
	DefaultBackoffMin      = 500 * time.Millisecond
	DefaultBackoffMax      = 20 * time.Second
	DefaultCommandTimeout  = 10 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultWriteTimeout    = 10 * time.Second
	DefaultHeartbeatGrace  = 5 * time.Second
	DefaultRefreshMargin   = 30 * time.Second
	DefaultQueueSize       = 256
	DefaultBuffer          = 64
	DefaultMaxMessageBytes = 16 << 20
)

// Clock is the source of time of a Client. Tests inject one to make backoff waits,
// heartbeat checks and refresh timers deterministic; the default is the real clock.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer created by a Clock.
type Timer interface {
	// C returns the channel on which the time is delivered when the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it stopped it.
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// Backoff is the reconnect schedule: exponential backoff with full jitter. The wait
// before reconnect attempt n (0 for the first attempt after a loss) is uniform in
// [0, min(Max, Min·2ⁿ)], but never shorter than Floor, so that a client never spins.
type Backoff struct {
	// Min is the ceiling of the first wait. Default 500 ms.
	Min time.Duration
	// Max caps the ceiling. Default 20 s.
	Max time.Duration
	// Floor is the shortest wait. Default 10 ms, or Min when that is smaller.
	Floor time.Duration
}

// Ceiling returns min(Max, Min·2^attempt), the upper bound of the wait before attempt.
func (b Backoff) Ceiling(attempt int) time.Duration {
	if attempt < 0 {
		attempt = 0
	}
	ceil := b.Max
	// Min·2^attempt overflows long before 62 doublings; compare before shifting.
	if attempt < 62 && b.Min <= b.Max>>uint(attempt) {
		ceil = b.Min << uint(attempt)
	}
	return ceil
}

// Delay returns the wait before attempt given r, a uniform random number in [0, 1).
func (b Backoff) Delay(attempt int, r float64) time.Duration {
	d := time.Duration(r * float64(b.Ceiling(attempt)))
	if d < b.Floor {
		d = b.Floor
	}
	return d
}

func (b *Backoff) fill() error {
	if b.Min == 0 {
		b.Min = DefaultBackoffMin
	}
	if b.Max == 0 {
		b.Max = DefaultBackoffMax
	}
	if b.Min < 0 || b.Max < b.Min {
		return errors.New("client: backoff needs 0 < min <= max")
	}
	if b.Floor == 0 {
		b.Floor = min(10*time.Millisecond, b.Min)
	}
	if b.Floor < 0 || b.Floor > b.Min {
		return errors.New("client: backoff floor must be within [0, min]")
	}
	return nil
}

// TokenFunc returns a token for the next connect or refresh. It is called before every
// connect attempt and, when the token expires, before it does. An error fails the
// attempt, which is retried with backoff.
type TokenFunc func(ctx context.Context) (string, error)

// StateChange describes a transition of the client's state.
type StateChange struct {
	// From is the previous state.
	From State
	// To is the new state.
	To State
	// Err is why the client left StateConnected or StateConnecting, when it did so
	// because of an error; a *CloseError when the server closed the connection.
	Err error
}

// Option configures a Client.
type Option func(*options)

type options struct {
	token          string
	tokenFunc      TokenFunc
	subprotocol    string
	backoff        Backoff
	clock          Clock
	rand           func() float64
	log            *slog.Logger
	dialer         *websocket.Dialer
	header         http.Header
	commandTimeout time.Duration
	connectTimeout time.Duration
	writeTimeout   time.Duration
	heartbeatGrace time.Duration
	refreshMargin  time.Duration
	queueSize      int
	maxMessage     int64
	onState        func(StateChange)
	onDirect       func(fabric.Payload)
	directChan     chan<- fabric.Payload
	onMemberJoined func(room string, member fabric.ClientInfo)
	onMemberLeft   func(room string, member fabric.ClientInfo)
	onServerJoin   func(*Subscription)
}

// WithToken authenticates with a fixed token. It is never refreshed.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTokenFunc authenticates with tokens from f, called before every connect attempt
// and again before the current token expires (see WithRefreshMargin).
func WithTokenFunc(f TokenFunc) Option { return func(o *options) { o.tokenFunc = f } }

// WithProtobuf selects the binary protobuf subprotocol instead of JSON.
func WithProtobuf() Option { return func(o *options) { o.subprotocol = SubprotocolProto } }

// WithBackoff sets the reconnect backoff bounds (defaults 500 ms and 20 s).
func WithBackoff(minDelay, maxDelay time.Duration) Option {
	return func(o *options) { o.backoff.Min, o.backoff.Max = minDelay, maxDelay }
}

// WithBackoffSchedule sets the whole reconnect schedule, including its floor.
func WithBackoffSchedule(b Backoff) Option { return func(o *options) { o.backoff = b } }

// WithClock replaces the real clock, for tests.
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithRand replaces the random source of the backoff jitter; f returns uniform numbers
// in [0, 1). It is called from one goroutine at a time.
func WithRand(f func() float64) Option { return func(o *options) { o.rand = f } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithDialer replaces the WebSocket dialer; its Subprotocols are overwritten.
func WithDialer(d *websocket.Dialer) Option { return func(o *options) { o.dialer = d } }

// WithHeader adds HTTP headers to the upgrade request.
func WithHeader(h http.Header) Option { return func(o *options) { o.header = h } }

// WithCommandTimeout bounds how long a command waits for its result, counted from the
// call and including time spent queued while offline (default 10 s).
func WithCommandTimeout(d time.Duration) Option { return func(o *options) { o.commandTimeout = d } }

// WithConnectTimeout bounds one connect attempt: dial, upgrade and the connect
// command's reply (default 10 s).
func WithConnectTimeout(d time.Duration) Option { return func(o *options) { o.connectTimeout = d } }

// WithHeartbeatGrace sets how long past the server's ping interval the client waits
// for any frame before it declares the connection dead and reconnects (default 5 s).
func WithHeartbeatGrace(d time.Duration) Option { return func(o *options) { o.heartbeatGrace = d } }

// WithRefreshMargin sets how long before the token's expiry the client refreshes it
// (default 30 s; at most half the token's remaining lifetime).
func WithRefreshMargin(d time.Duration) Option { return func(o *options) { o.refreshMargin = d } }

// WithQueueSize bounds the commands queued while offline (default 256). A command that
// finds the queue full fails at once with ErrQueueFull.
func WithQueueSize(n int) Option { return func(o *options) { o.queueSize = n } }

// WithMaxMessageBytes bounds the size of a frame from the server (default 16 MiB).
func WithMaxMessageBytes(n int64) Option { return func(o *options) { o.maxMessage = n } }

// WithStateHandler calls f on every state change, in order. The change to
// StateClosed made by Close is reported from Close itself, before it returns.
func WithStateHandler(f func(StateChange)) Option { return func(o *options) { o.onState = f } }

// WithDirectHandler calls f for every direct message to this user or connection.
func WithDirectHandler(f func(fabric.Payload)) Option {
	return func(o *options) { o.onDirect = f }
}

// WithDirectChan delivers direct messages on ch. Deliveries wait while ch is full.
// The client never closes ch.
func WithDirectChan(ch chan<- fabric.Payload) Option { return func(o *options) { o.directChan = ch } }

// WithMemberHandlers calls joined and left (either may be nil) when a user arrives in
// or leaves a room this client is in (namespaces with join/leave events only).
func WithMemberHandlers(joined, left func(room string, member fabric.ClientInfo)) Option {
	return func(o *options) { o.onMemberJoined, o.onMemberLeft = joined, left }
}

// WithServerJoinHandler calls f with the Subscription the client creates when the
// server joins it to a room (a rooms claim of the token, or the backend). Such
// subscriptions deliver on their Messages channel. Without a handler, find them with
// Client.Subscription.
func WithServerJoinHandler(f func(*Subscription)) Option {
	return func(o *options) { o.onServerJoin = f }
}

func (o *options) fill() error {
	if err := o.backoff.fill(); err != nil {
		return err
	}
	if o.subprotocol == "" {
		o.subprotocol = SubprotocolJSON
	}
	if o.clock == nil {
		o.clock = realClock{}
	}
	if o.rand == nil {
		o.rand = rand.Float64
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.dialer == nil {
		o.dialer = &websocket.Dialer{Proxy: http.ProxyFromEnvironment, HandshakeTimeout: DefaultConnectTimeout}
	}
	set := func(d *time.Duration, def time.Duration, name string) error {
		if *d == 0 {
			*d = def
		}
		if *d < 0 {
			return errors.New("client: negative " + name)
		}
		return nil
	}
	for _, s := range []struct {
		d    *time.Duration
		def  time.Duration
		name string
	}{
		{&o.commandTimeout, DefaultCommandTimeout, "command timeout"},
		{&o.connectTimeout, DefaultConnectTimeout, "connect timeout"},
		{&o.writeTimeout, DefaultWriteTimeout, "write timeout"},
		{&o.heartbeatGrace, DefaultHeartbeatGrace, "heartbeat grace"},
		{&o.refreshMargin, DefaultRefreshMargin, "refresh margin"},
	} {
		if err := set(s.d, s.def, s.name); err != nil {
			return err
		}
	}
	if o.queueSize == 0 {
		o.queueSize = DefaultQueueSize
	}
	if o.queueSize < 0 {
		return errors.New("client: negative queue size")
	}
	if o.maxMessage == 0 {
		o.maxMessage = DefaultMaxMessageBytes
	}
	if o.token == "" && o.tokenFunc == nil && o.header.Get("Authorization") == "" {
		return errors.New("client: a token, a token function or an authorization header is required")
	}
	if o.token != "" && o.tokenFunc != nil {
		return errors.New("client: give a token or a token function, not both")
	}
	return nil
}
