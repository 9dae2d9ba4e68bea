package liveconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roomcast/roomcast/mesh/registry"
)

// ErrNotFound is returned by Get when the cluster has no live configuration in etcd.
var ErrNotFound = errors.New("no live configuration stored")

// ConflictError is returned by Set when the stored document is not at the revision the
// caller expected: somebody else changed it in between.
type ConflictError struct {
	// Want is the revision the caller expected (0: that no document exists).
	Want int64
	// Have is the document's current mod revision (0: there is none).
	Have int64
}

func (e *ConflictError) Error() string {
	have := fmt.Sprintf("revision %d", e.Have)
	if e.Have == 0 {
		have = "absent"
	}
	return fmt.Sprintf("live config changed meanwhile: expected revision %d, it is %s; get it again and retry", e.Want, have)
}

// Key returns the etcd key holding a cluster's live configuration:
// "/roomcast/<cluster>/config".
func Key(cluster string) string { return registry.Prefix(cluster) + "config" }

// Config configures a Store.
type Config struct {
	// Client is the etcd client. Required. The Store does not close it.
	Client *clientv3.Client
	// Cluster is the cluster name (the etcd prefix /roomcast/<cluster>/). Required.
	Cluster string
	// Logger receives watch trouble (reconnects, compaction). Default slog.Default().
	Logger *slog.Logger
	// RetryDelay is the pause before a failed watch is started again. Default 1s.
	RetryDelay time.Duration
}

// Store reads, writes and watches one cluster's live configuration in etcd.
type Store struct {
	cli   *clientv3.Client
	key   string
	log   *slog.Logger
	retry time.Duration
}

// New checks cfg and returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Client == nil {
		return nil, errors.New("liveconfig: no etcd client")
	}
	if cfg.Cluster == "" || strings.ContainsAny(cfg.Cluster, "/ ") {
		return nil, fmt.Errorf("liveconfig: cluster name %q must be non-empty without '/' or spaces", cfg.Cluster)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	return &Store{cli: cfg.Client, key: Key(cfg.Cluster), log: cfg.Logger, retry: cfg.RetryDelay}, nil
}

// Key returns the etcd key the Store uses.
func (s *Store) Key() string { return s.key }

// Entry is the stored document at one revision.
type Entry struct {
	// Raw is the document exactly as stored (comments included).
	Raw []byte
	// Revision is the key's mod revision: the etcd revision of the write that stored
	// Raw. It is what Set's ifRevision compares against.
	Revision int64
	// Doc is the parsed document when Err is nil.
	Doc Document
	// Err is why Raw is not a valid document; Doc is empty then.
	Err error
}

// Get returns the stored document and the etcd revision at which it was read (to
// start a Watch after it). It returns ErrNotFound, with that revision, when there is
// none. A stored document that does not parse is returned with Entry.Err set.
func (s *Store) Get(ctx context.Context) (Entry, int64, error) {
	resp, err := s.cli.Get(ctx, s.key)
	if err != nil {
		return Entry{}, 0, fmt.Errorf("read %s: %w", s.key, err)
	}
	if len(resp.Kvs) == 0 {
		return Entry{}, resp.Header.Revision, ErrNotFound
	}
	kv := resp.Kvs[0]
	return entry(kv.Value, kv.ModRevision), resp.Header.Revision, nil
}

func entry(raw []byte, rev int64) Entry {
	e := Entry{Raw: raw, Revision: rev}
	e.Doc, e.Err = Parse(raw)
	return e
}

// Set validates raw with Parse and stores it. With ifRevision >= 0 the write is a
// compare-and-swap: it happens only if the stored document's mod revision is
// ifRevision (0: only if there is no document), else it returns a *ConflictError.
// A negative ifRevision writes unconditionally. It returns the new mod revision.
func (s *Store) Set(ctx context.Context, raw []byte, ifRevision int64) (int64, error) {
	if _, err := Parse(raw); err != nil {
		return 0, err
	}
	return s.guarded(ctx, ifRevision, "write", clientv3.OpPut(s.key, string(raw)))
}

// guarded runs op on the document's key when its mod revision is ifRevision (any
// revision when ifRevision < 0), and returns the revision of the change or a
// *ConflictError naming the revision found.
func (s *Store) guarded(ctx context.Context, ifRevision int64, what string, op clientv3.Op) (int64, error) {
	var cmps []clientv3.Cmp
	if ifRevision >= 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.key), "=", ifRevision))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(op).Else(clientv3.OpGet(s.key)).Commit()
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", what, s.key, err)
	}
	if !resp.Succeeded {
		ce := &ConflictError{Want: ifRevision}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			ce.Have = kvs[0].ModRevision
		}
		return 0, ce
	}
	return resp.Header.Revision, nil
}

// Delete removes the stored document, so nodes fall back to their own files. It
// honours ifRevision like Set and returns the revision of the deletion.
func (s *Store) Delete(ctx context.Context, ifRevision int64) (int64, error) {
	return s.guarded(ctx, ifRevision, "delete", clientv3.OpDelete(s.key))
}

// Update is one change of the stored document seen by Watch.
type Update struct {
	// Entry is the new document; Entry.Err says it is invalid. For a deletion Raw is
	// empty and Revision is the revision of the deletion.
	Entry
	// Deleted says the document was removed: nodes go back to their own settings.
	Deleted bool
}

// Watch delivers every change of the document after etcd revision after (as returned
// by Get), in order, until ctx ends; then it closes the channel. It rides out etcd
// trouble: a failed watch is started again after RetryDelay, and when the revisions it
// missed were compacted away it reads the current document and delivers it (so the
// consumer always ends on the latest state, possibly skipping intermediate ones).
//
// Watch starts one goroutine, which ends when ctx ends. The consumer must keep
// receiving until the channel is closed.
func (s *Store) Watch(ctx context.Context, after int64) <-chan Update {
	out := make(chan Update)
	go s.watch(ctx, after, out)
	return out
}

func (s *Store) watch(ctx context.Context, after int64, out chan<- Update) {
	defer close(out)
	send := func(u Update) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	next := after + 1
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		compacted := false
		for resp := range s.cli.Watch(wctx, s.key, clientv3.WithRev(next)) {
			if resp.CompactRevision != 0 {
				compacted = true
				break
			}
			if err := resp.Err(); err != nil {
				s.log.Warn("live config watch failed; retrying", "key", s.key, "err", err)
				break
			}
			for _, ev := range resp.Events {
				u := Update{}
				if ev.Type == clientv3.EventTypeDelete {
					u.Deleted, u.Revision = true, ev.Kv.ModRevision
				} else {
					u.Entry = entry(ev.Kv.Value, ev.Kv.ModRevision)
				}
				if !send(u) {
					cancel()
					return
				}
				next = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if compacted {
			// The changes since next are gone: deliver the current state instead.
			e, rev, err := s.Get(ctx)
			switch {
			case errors.Is(err, ErrNotFound):
				if !send(Update{Deleted: true, Entry: Entry{Revision: rev}}) {
					return
				}
				next = rev + 1
				continue
			case err == nil:
				if e.Revision >= next && !send(Update{Entry: e}) {
					return
				}
				next = rev + 1
				continue
			default:
				s.log.Warn("live config read after compaction failed; retrying", "key", s.key, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.retry):
		}
	}
}
