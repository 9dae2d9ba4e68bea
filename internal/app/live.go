package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roomcast/roomcast/internal/liveconfig"
)

// Where a live configuration change came from (label "source" of the metrics).
const (
	sourceFile = "file" // Reload: SIGHUP re-read the file, environment and flags
	sourceEtcd = "etcd" // the cluster's live config document
)

// startupReadTimeout bounds the read of the live config at start.
const startupReadTimeout = 10 * time.Second

// live is the node's live configuration state: its own settings (file, environment,
// flags) and the cluster's document over them. mu serialises every apply, so the
// namespaces and the verifier always come from the same pair.
type live struct {
	mu       sync.Mutex
	file     liveconfig.Document  // the node's own live settings
	remote   *liveconfig.Document // the applied etcd document; nil: none
	revision int64                // mod revision of remote; 0 when nil

	store     *liveconfig.Store // cluster mode only
	watchFrom int64             // etcd revision the start-up read saw

	revisionGauge prometheus.Gauge
	rejected      *prometheus.CounterVec
	applied       *prometheus.CounterVec
}

func (l *live) register(reg prometheus.Registerer) {
	l.revisionGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "roomcast_config_revision",
		Help: "etcd mod revision of the live config document in force (0: none, the node's own settings).",
	})
	l.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roomcast_config_rejected_total",
		Help: "Live configuration changes refused as invalid (the previous configuration stayed), by source (etcd, file).",
	}, []string{"source"})
	l.applied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roomcast_config_applied_total",
		Help: "Live configuration changes applied, by source (etcd, file).",
	}, []string{"source"})
	reg.MustRegister(l.revisionGauge, l.rejected, l.applied)
	for _, s := range []string{sourceFile, sourceEtcd} {
		l.rejected.WithLabelValues(s)
		l.applied.WithLabelValues(s)
	}
}

// settings layers remote over file, fills in the embedded namespaces when neither
// names any, and validates the result as a whole.
func settings(file liveconfig.Document, remote *liveconfig.Document) (liveconfig.Settings, error) {
	merged := file
	if remote != nil {
		merged = remote.Over(file)
	}
	if len(merged.Namespaces) == 0 {
		ns, err := defaultNamespaces()
		if err != nil {
			return liveconfig.Settings{}, err
		}
		merged.Namespaces = ns
	}
	return merged.Settings()
}

// readLiveConfig reads the cluster's document at start (cluster mode). A missing
// document means the node's own settings; an invalid one is refused like a later
// invalid change (logged, counted) and the node's own settings are used.
func (a *App) readLiveConfig() error {
	store, err := liveconfig.New(liveconfig.Config{Client: a.etcd, Cluster: a.cfg.ClusterName, Logger: a.log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startupReadTimeout)
	defer cancel()
	e, rev, err := store.Get(ctx)
	a.live.store, a.live.watchFrom = store, rev
	switch {
	case errors.Is(err, liveconfig.ErrNotFound):
		a.log.Info("no live config in etcd; using the node's own settings", "node", a.cfg.Name, "key", store.Key())
		return nil
	case err != nil:
		return fmt.Errorf("live config: %w", err)
	case e.Err != nil:
		a.live.rejected.WithLabelValues(sourceEtcd).Inc()
		a.log.Error("live config in etcd refused; using the node's own settings", "node", a.cfg.Name, "key", store.Key(), "revision", e.Revision, "err", e.Err)
		return nil
	}
	if _, err := settings(a.live.file, &e.Doc); err != nil {
		a.live.rejected.WithLabelValues(sourceEtcd).Inc()
		a.log.Error("live config in etcd refused; using the node's own settings", "node", a.cfg.Name, "key", store.Key(), "revision", e.Revision, "err", err)
		return nil
	}
	doc := e.Doc
	a.live.remote, a.live.revision = &doc, e.Revision
	a.live.revisionGauge.Set(float64(e.Revision))
	a.live.applied.WithLabelValues(sourceEtcd).Inc()
	a.log.Info("live config applied", "node", a.cfg.Name, "key", store.Key(), "revision", e.Revision)
	return nil
}

// followLiveConfig applies every change of the cluster's document until ctx ends.
func (a *App) followLiveConfig(ctx context.Context) {
	for u := range a.live.store.Watch(ctx, a.live.watchFrom) {
		a.applyUpdate(u)
	}
}

func (a *App) applyUpdate(u liveconfig.Update) {
	l := &a.live
	l.mu.Lock()
	defer l.mu.Unlock()
	refuse := func(err error) {
		l.rejected.WithLabelValues(sourceEtcd).Inc()
		a.log.Error("live config change refused; the running configuration is unchanged",
			"node", a.cfg.Name, "revision", u.Revision, "in_force", l.revision, "err", err)
	}
	if u.Deleted {
		if err := a.applyLocked(l.file, nil); err != nil {
			refuse(fmt.Errorf("document deleted, but the node's own settings are not usable: %w", err))
			return
		}
		l.remote, l.revision = nil, 0
		l.revisionGauge.Set(0)
		l.applied.WithLabelValues(sourceEtcd).Inc()
		a.log.Info("live config removed from etcd; using the node's own settings", "node", a.cfg.Name, "revision", u.Revision)
		return
	}
	if u.Err != nil {
		refuse(u.Err)
		return
	}
	doc := u.Doc
	if err := a.applyLocked(l.file, &doc); err != nil {
		refuse(err)
		return
	}
	l.remote, l.revision = &doc, u.Revision
	l.revisionGauge.Set(float64(u.Revision))
	l.applied.WithLabelValues(sourceEtcd).Inc()
	a.log.Info("live config applied", "node", a.cfg.Name, "revision", u.Revision, "namespaces", len(a.namespaces.List()))
}

// applyLocked validates file with remote over it as a whole and, only if valid, swaps
// the namespaces and the verifier. l.mu must be held.
func (a *App) applyLocked(file liveconfig.Document, remote *liveconfig.Document) error {
	s, err := settings(file, remote)
	if err != nil {
		return err
	}
	// Both are valid (Settings checked them with the same constructors): neither
	// Replace can fail.
	if err := a.namespaces.Replace(s.Namespaces); err != nil {
		return fmt.Errorf("namespaces: %w", err)
	}
	if err := a.verifier.Replace(s.JWT); err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	return nil
}

// ConfigRevision returns the etcd mod revision of the live config document in force,
// or 0 when the node runs on its own settings (standalone, no document, or the
// document was refused at start).
func (a *App) ConfigRevision() int64 {
	a.live.mu.Lock()
	defer a.live.mu.Unlock()
	return a.live.revision
}

// Reload applies the live part of cfg — namespaces and token verification settings
// (jwt_secret, jwt_keys, jwt_audience, jwt_issuer, jwt_leeway) — without a restart.
// cfg's live part is validated on its own and, in cluster mode, with the cluster's
// live config document over it (the document's settings win); the result is applied
// only if all of it is valid, so a bad file is refused whole and never half-applied.
// Other settings need a restart; they are ignored here.
func (a *App) Reload(cfg Config) error {
	l := &a.live
	l.mu.Lock()
	defer l.mu.Unlock()
	if cfg.Dev && cfg.JWTSecret == "" && len(cfg.JWTKeys) == 0 {
		cfg.JWTSecret = a.cfg.JWTSecret // keep the generated development secret
	}
	file := cfg.liveDocument()
	err := file.Validate()
	if err == nil {
		err = a.applyLocked(file, l.remote)
	}
	if err != nil {
		l.rejected.WithLabelValues(sourceFile).Inc()
		return err
	}
	l.file = file
	l.applied.WithLabelValues(sourceFile).Inc()
	a.log.Info("configuration reloaded", "node", a.cfg.Name, "namespaces", len(a.namespaces.List()), "live_config_revision", l.revision)
	return nil
}
