package wsio

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Mode selects how connections are read.
type Mode int

const (
	// ModeAuto uses ModeEpoll on Linux and ModeGoroutine elsewhere.
	ModeAuto Mode = iota
	// ModeEpoll reads with one epoll instance and a small worker pool, so an idle
	// connection holds no goroutine. It is available on Linux only; connections whose
	// hijacked net.Conn exposes no file descriptor (TLS terminated in-process, for
	// example) fall back to ModeGoroutine one by one.
	ModeEpoll
	// ModeGoroutine is the portable fallback: one reader goroutine per connection.
	ModeGoroutine
)

// String names the mode in logs.
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeEpoll:
		return "epoll"
	case ModeGoroutine:
		return "goroutine"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// WriteBatching selects how flush workers hand socket writes to the kernel.
type WriteBatching int

const (
	// BatchAuto submits the writes a flush worker finds waiting together (a
	// fan-out's, typically) in one io_uring system call where the kernel allows it
	// (Linux 5.6 or later, io_uring not disabled by sysctl or a seccomp profile),
	// and falls back to BatchOff otherwise.
	BatchAuto WriteBatching = iota
	// BatchOff makes one write(2) per socket.
	BatchOff
)

// Config configures a Server. The zero value is usable: NewServer fills defaults.
type Config struct {
	// Mode selects how connections are read; the default ModeAuto picks epoll on Linux.
	Mode Mode
	// MaxMessageBytes is the largest data message (all fragments together) accepted
	// from a peer; default 65536. A frame header announcing more closes the
	// connection with 1009 at once, without reading the payload.
	MaxMessageBytes int
	// MaxQueueBytes bounds a connection's send queue in encoded bytes; default 1 MiB.
	MaxQueueBytes int
	// MaxQueueMessages bounds a connection's send queue in messages; default 4096.
	MaxQueueMessages int
	// WriteTimeout closes a connection whose socket write is stuck longer than this;
	// default 10s.
	WriteTimeout time.Duration
	// PartialTimeout closes with 1008 (policy violation) a connection whose partial
	// frame or fragmented message has been pending longer than this, so a slow
	// partial sender cannot pin buffers; default 10s.
	PartialTimeout time.Duration
	// CloseWait bounds how long a closing connection waits for the peer's close frame
	// after writing its own (and how long CloseNow may spend writing the close frame)
	// before closing the socket; default 1s.
	CloseWait time.Duration
	// Workers is the number of read workers in epoll mode; default 2*GOMAXPROCS.
	Workers int
	// FlushWorkers is the number of goroutines that write queued messages to
	// sockets, in both modes; default GOMAXPROCS. A write never blocks them: a
	// socket whose buffer is full gets a goroutine of its own until it drains.
	FlushWorkers int
	// WriteBatching says whether writes waiting together go to the kernel in one
	// io_uring submission (BatchAuto, the default) or one system call each.
	WriteBatching WriteBatching
	// Logger receives transport diagnostics; default slog.Default().
	Logger *slog.Logger
	// Registerer receives the transport's metrics; nil means they are not
	// registered.
	Registerer prometheus.Registerer
}

const (
	defaultMaxMessageBytes  = 64 << 10
	defaultMaxQueueBytes    = 1 << 20
	defaultMaxQueueMessages = 4096
	defaultWriteTimeout     = 10 * time.Second
	defaultPartialTimeout   = 10 * time.Second
	defaultCloseWait        = time.Second
)

// withDefaults returns cfg with zero fields filled and validates the rest.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = defaultMaxMessageBytes
	}
	if cfg.MaxQueueBytes == 0 {
		cfg.MaxQueueBytes = defaultMaxQueueBytes
	}
	if cfg.MaxQueueMessages == 0 {
		cfg.MaxQueueMessages = defaultMaxQueueMessages
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = defaultWriteTimeout
	}
	if cfg.PartialTimeout == 0 {
		cfg.PartialTimeout = defaultPartialTimeout
	}
	if cfg.CloseWait == 0 {
		cfg.CloseWait = defaultCloseWait
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if cfg.FlushWorkers == 0 {
		cfg.FlushWorkers = runtime.GOMAXPROCS(0)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var errs []error
	if cfg.MaxMessageBytes < 0 {
		errs = append(errs, errors.New("max message bytes must be positive"))
	}
	if cfg.MaxQueueBytes < 0 {
		errs = append(errs, errors.New("max queue bytes must be positive"))
	}
	if cfg.MaxQueueMessages < 0 {
		errs = append(errs, errors.New("max queue messages must be positive"))
	}
	if cfg.WriteTimeout < 0 || cfg.PartialTimeout < 0 || cfg.CloseWait < 0 {
		errs = append(errs, errors.New("timeouts must be positive"))
	}
	if cfg.Workers < 0 || cfg.FlushWorkers < 0 {
		errs = append(errs, errors.New("workers must be positive"))
	}
	if cfg.WriteBatching != BatchAuto && cfg.WriteBatching != BatchOff {
		errs = append(errs, fmt.Errorf("unknown write batching %d", int(cfg.WriteBatching)))
	}
	switch cfg.Mode {
	case ModeAuto:
		if epollSupported {
			cfg.Mode = ModeEpoll
		} else {
			cfg.Mode = ModeGoroutine
		}
	case ModeEpoll:
		if !epollSupported {
			errs = append(errs, errors.New("epoll mode is only available on linux"))
		}
	case ModeGoroutine:
	default:
		errs = append(errs, fmt.Errorf("unknown mode %d", int(cfg.Mode)))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("wsio: invalid config: %w", err)
	}
	return cfg, nil
}
