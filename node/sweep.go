package node

import (
	"runtime/debug"
	"time"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// sweeper is the node's one heartbeat goroutine: it walks the connections every
// sweepEvery (more often when the ping interval or auth timeout is short, so short
// settings are honoured) until Close.
func (n *Node) sweeper() {
	defer close(n.sweepDone)
	every := max(min(sweepEvery, n.cfg.PingInterval/2, n.cfg.AuthTimeout/2), 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var burst burstWatch
	for {
		select {
		case <-n.sweepStop:
			return
		case <-t.C:
			n.sweep(n.now())
			if burst.ended(n.upgrades.Load(), n.cfg.ReleaseAfterConnects) {
				// Only the sweeper calls it, at most once per burst.
				debug.FreeOSMemory()
				n.releases.Add(1)
			}
		}
	}
}

// burstWatch detects the end of a connect burst from the upgrade count seen at each
// sweep tick.
type burstWatch struct {
	last     uint64 // count at the previous tick
	released uint64 // count at the last release
}

// ended reports whether at least threshold upgrades happened since the last release
// and the previous tick was quiet: fewer than threshold/100 upgrades (none for a
// threshold under 200), so a trickle of reconnects after a burst does not postpone
// the release for ever. threshold < 0 disables it.
func (b *burstWatch) ended(count uint64, threshold int) bool {
	quiet := count-b.last < uint64(max(1, threshold/100))
	b.last = count
	if threshold < 0 || !quiet || count-b.released < uint64(threshold) {
		return false
	}
	b.released = count
	return true
}

// sweep applies the time-based rules to every connection as of now: the auth
// timeout (4501), pings every PingInterval, the heartbeat timeout (4002) and token
// expiry (4004). Tests call it directly with a chosen now.
func (n *Node) sweep(now time.Time) {
	var ping *pushFrames
	for _, c := range n.snapshot() {
		code, reason, doPing := c.due(now, &n.cfg)
		switch {
		case code != 0:
			n.log.Debug("closing connection", "conn", c.id, "code", int(code), "reason", reason)
			c.closeWith(code, reason, closePush)
		case doPing:
			if ping == nil {
				ping = &pushFrames{m: &pb.ServerMessage{Body: &pb.ServerMessage_Ping{Ping: &pb.Ping{}}}}
			}
			if m := ping.get(c.binary); m != nil {
				_ = c.send(m)
			}
			_ = c.ws.Ping()
		}
	}
}

// due decides what the sweep does to c at now: a close code, or a ping.
func (c *conn) due(now time.Time, cfg *Config) (code fabric.CloseCode, reason string, ping bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateClosed:
		return 0, "", false
	case stateNew:
		if now.Sub(c.created) >= cfg.AuthTimeout {
			return fabric.CloseAuthTimeout, "no connect in time", false
		}
		return 0, "", false
	case stateConnecting:
		// The connect is running (the fabric may be slow); the heartbeat still applies.
	case stateConnected:
		if !c.expires.IsZero() && !now.Before(c.expires) {
			return fabric.CloseTokenExpired, "token expired", false
		}
	}
	last := c.created
	if lr := c.ws.LastRead(); lr > last.UnixNano() {
		last = time.Unix(0, lr)
	}
	if now.Sub(last) >= cfg.PingInterval+cfg.PongTimeout {
		return fabric.CloseHeartbeatTimeout, "heartbeat timeout", false
	}
	if c.state == stateConnected && now.Sub(c.lastPing) >= cfg.PingInterval {
		c.lastPing = now
		return 0, "", true
	}
	return 0, "", false
}
