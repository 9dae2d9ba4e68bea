// Package embedetcd runs a single-member etcd server inside the process, for
// `roomcast dev` and for tests (internal/etcdtest). It is real etcd
// (go.etcd.io/etcd/server/v3/embed), not a fake.
//
// Start returns once the member has elected itself and serves; the caller owns the
// returned *embed.Etcd and closes it.
package embedetcd

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// ReadyTimeout bounds how long Start waits for the member to serve.
const ReadyTimeout = 20 * time.Second

// Start starts a member named name keeping its data in dir, serving clients on
// clientAddr and peers on peerAddr (host:port each). A nil log discards etcd's logs.
func Start(name, dir, clientAddr, peerAddr string, log *zap.Logger) (*embed.Etcd, error) {
	clientURL := url.URL{Scheme: "http", Host: clientAddr}
	peerURL := url.URL{Scheme: "http", Host: peerAddr}
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// One local member has no use for the HTTP gateway; shorter ticks make it elect
	// itself sooner.
	cfg.EnableGRPCGateway = false
	if log == nil {
		log = zap.NewNop()
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log)
	cfg.TickMs = 10
	cfg.ElectionMs = 100

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-time.After(ReadyTimeout):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("embedded etcd not ready in time")
	}
}
