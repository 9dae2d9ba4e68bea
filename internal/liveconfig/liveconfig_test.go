package liveconfig

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const secret = "a-live-config-secret-0123456789abcdef"

const valid = `# cluster settings
namespaces:
  - name: chat
    presence: true
    history_size: 10
    history_ttl: 10m
  - name: games
    max_members: 4
jwt_secret: ` + secret + `
jwt_audience: roomcast
jwt_leeway: 2s
`

func TestParseAcceptsTheConfigFileSchema(t *testing.T) {
	d, err := Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Namespaces) != 2 || d.Namespaces[0].HistoryTTL != 10*time.Minute || d.Namespaces[1].MaxMembers != 4 ||
		d.JWTSecret != secret || d.JWTAudience != "roomcast" || d.JWTLeeway != 2*time.Second {
		t.Fatalf("parsed %+v", d)
	}
	if _, err := Parse(nil); err != nil {
		t.Fatalf("an empty document (sets nothing) was refused: %v", err)
	}
}

func TestParseRefusesInvalidDocuments(t *testing.T) {
	for name, tc := range map[string]struct{ doc, want string }{
		"unknown key":       {"namespace:\n  - name: x\n", "field namespace not found"},
		"non-live key":      {"client_addr: :1234\n", "field client_addr not found"},
		"bad yaml":          {"namespaces: [\n", "live config"},
		"bad namespace":     {"namespaces:\n  - name: bad name\n", `namespace "bad name"`},
		"duplicate":         {"namespaces:\n  - name: a\n  - name: a\n", "defined twice"},
		"history too large": {"namespaces:\n  - name: a\n    history_size: 100000000\n", "history_size"},
		"short secret":      {"jwt_secret: short\n", "jwt"},
		"unknown algorithm": {"jwt_keys:\n  - id: k\n    algorithm: none\n", "jwt"},
		"key file":          {"jwt_keys:\n  - id: k\n    algorithm: RS256\n    public_key_file: /etc/key.pem\n", "public_key_file is for config files only"},
		"negative leeway":   {"jwt_leeway: -1s\n", "jwt_leeway"},
		"two documents":     {"namespaces:\n  - name: a\n---\nnamespaces:\n  - name: b\n", "more than one YAML document"},
		"too large":         {"# " + strings.Repeat("x", MaxDocumentBytes) + "\n", "bytes, more than"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestOverLayersTheDocumentOnTheNodesSettings(t *testing.T) {
	base := Document{
		Namespaces:  []fabric.Namespace{{Name: "file"}},
		JWTSecret:   "file-secret",
		JWTKeys:     []JWTKey{{ID: "old", Algorithm: "HS256", Secret: "old"}},
		JWTAudience: "file-aud",
		JWTIssuer:   "file-iss",
	}
	// An empty document changes nothing.
	if got := (Document{}).Over(base); got.JWTSecret != "file-secret" || len(got.JWTKeys) != 1 || got.Namespaces[0].Name != "file" {
		t.Fatalf("empty document over base: %+v", got)
	}
	// Keys are one setting: a document with jwt_keys only drops the file's jwt_secret
	// too, so a rotated-out key is never still accepted.
	got := Document{JWTKeys: []JWTKey{{ID: "new", Algorithm: "HS256", Secret: "new"}}, JWTIssuer: "doc-iss"}.Over(base)
	if got.JWTSecret != "" || len(got.JWTKeys) != 1 || got.JWTKeys[0].ID != "new" {
		t.Fatalf("keys not replaced as a set: %+v", got)
	}
	if got.JWTAudience != "file-aud" || got.JWTIssuer != "doc-iss" || got.Namespaces[0].Name != "file" {
		t.Fatalf("other settings: %+v", got)
	}
}

func TestSettingsNeedsAKey(t *testing.T) {
	if _, err := (Document{Namespaces: []fabric.Namespace{{Name: "a"}}}).Settings(); err == nil || !strings.Contains(err.Error(), "no jwt key") {
		t.Fatalf("settings without a key: %v", err)
	}
	s, err := Document{JWTSecret: secret}.Settings()
	if err != nil || len(s.JWT.Keys) != 1 {
		t.Fatalf("settings: %+v %v", s, err)
	}
}

func newStore(t *testing.T, srv *etcdtest.Server, cluster string) *Store {
	t.Helper()
	s, err := New(Config{Client: srv.Client(), Cluster: cluster, RetryDelay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStoreCompareAndSwap(t *testing.T) {
	srv := etcdtest.Start(t)
	s := newStore(t, srv, "cas")
	ctx := ctxT(t)
	if s.Key() != "/roomcast/cas/config" {
		t.Fatalf("key %q", s.Key())
	}
	if _, _, err := s.Get(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get before any set: %v", err)
	}
	r1, err := s.Set(ctx, []byte(valid), 0) // create only
	if err != nil {
		t.Fatal(err)
	}
	var ce *ConflictError
	if _, err := s.Set(ctx, []byte(valid), 0); !errors.As(err, &ce) || ce.Have != r1 || ce.Want != 0 {
		t.Fatalf("second create: %v", err)
	}
	r2, err := s.Set(ctx, []byte("namespaces:\n  - name: b\n"), r1)
	if err != nil || r2 <= r1 {
		t.Fatalf("set at the current revision: %d %v", r2, err)
	}
	// A writer that read r1 loses against the one that wrote r2.
	if _, err := s.Set(ctx, []byte(valid), r1); !errors.As(err, &ce) || ce.Have != r2 {
		t.Fatalf("stale set: %v", err)
	}
	if _, err := s.Delete(ctx, r1); !errors.As(err, &ce) {
		t.Fatalf("stale delete: %v", err)
	}
	// An invalid document is never written.
	if _, err := s.Set(ctx, []byte("namespaces:\n  - name: bad name\n"), -1); err == nil {
		t.Fatal("invalid document written")
	}
	e, _, err := s.Get(ctx)
	if err != nil || e.Revision != r2 || e.Err != nil || e.Doc.Namespaces[0].Name != "b" {
		t.Fatalf("get: %+v %v", e, err)
	}
	// Unconditional write.
	r3, err := s.Set(ctx, []byte(valid), -1)
	if err != nil || r3 <= r2 {
		t.Fatalf("unconditional set: %d %v", r3, err)
	}
	if _, err := s.Delete(ctx, r3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestWatchDeliversEveryChangeInOrder(t *testing.T) {
	srv := etcdtest.Start(t)
	s := newStore(t, srv, "watch")
	ctx := ctxT(t)
	_, after, err := s.Get(ctx)
	if !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	updates := s.Watch(wctx, after)

	next := func() Update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-ctx.Done():
			t.Fatal("no update")
		}
		return Update{}
	}
	r1, err := s.Set(ctx, []byte(valid), -1)
	if err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Revision != r1 || u.Err != nil || u.Deleted || len(u.Doc.Namespaces) != 2 {
		t.Fatalf("first update %+v", u)
	}
	// Written around the CLI's validation, straight into etcd: delivered with Err.
	put, err := srv.Client().Put(ctx, s.Key(), "namespaces:\n  - name: bad name\n")
	if err != nil {
		t.Fatal(err)
	}
	if u := next(); u.Revision != put.Header.Revision || u.Err == nil {
		t.Fatalf("invalid document update %+v", u)
	}
	del, err := s.Delete(ctx, -1)
	if err != nil {
		t.Fatal(err)
	}
	if u := next(); !u.Deleted || u.Revision != del {
		t.Fatalf("delete update %+v", u)
	}
	cancel()
	for range updates { // closed once the context ends
	}
}

// Revisions the watch would start from were compacted away: it resumes with the
// current document.
func TestWatchAfterCompactionResumesWithTheCurrentDocument(t *testing.T) {
	srv := etcdtest.Start(t)
	s := newStore(t, srv, "compact")
	ctx := ctxT(t)
	_, after, _ := s.Get(ctx)
	if _, err := s.Set(ctx, []byte("namespaces:\n  - name: a\n"), -1); err != nil {
		t.Fatal(err)
	}
	last, err := s.Set(ctx, []byte("namespaces:\n  - name: b\n"), -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	select {
	case u := <-s.Watch(wctx, after):
		if u.Revision != last || u.Err != nil || u.Doc.Namespaces[0].Name != "b" {
			t.Fatalf("after compaction: %+v", u)
		}
	case <-ctx.Done():
		t.Fatal("no update after compaction")
	}
}
