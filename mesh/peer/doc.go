// Package peer is the transport of a roomcast cluster: long-lived, batched,
// authenticated mesh.v1 PeerService.Link streams between nodes.
//
// A node has one *Links. It keeps at most one established stream (a *Peer) per remote
// node, whichever side dialed it, and serves the PeerService through Server, which the
// caller registers on a *grpc.Server it owns (the peer port, :7947 by default).
//
// # Identity
//
// Nodes are named by gossip ID, "<name>.<incarnation>" (see package membership), so a
// restarted node is a different peer. A link is opened for one incarnation: the
// listener refuses a Hello meant for another incarnation of itself, and receivers drop
// batches whose sender is not the incarnation the link was opened with.
//
// # Links and the tie-break
//
// A link is dialed on demand by the first Send or Request to a node, and from then on
// kept up: when it breaks, both sides redial with exponential backoff and full jitter
// until the node is forgotten (Forget, typically on membership's verdict that it died)
// or Links is closed. When both sides dial at once, the stream dialed by the node with
// the smaller gossip ID wins, on both sides: a listener that is itself dialing a
// larger peer refuses that peer's Hello (codes.AlreadyExists), and a node that ends up
// with two established streams closes the one the larger ID dialed. A re-dial by the
// same side replaces the older stream (the dialer would not redial a link it believes
// alive).
//
// # Authentication and protocol negotiation
//
// Every link is authenticated with HMAC-SHA256 keyed with a shared cluster secret.
// The listener sends a fresh random nonce in the response header
// ("roomcast-peer-nonce-bin") before reading anything; the dialer's Hello carries its
// own nonce and an HMAC over a domain label, the cluster name, both gossip identities,
// both nonces and the dialer's protocol range; the HelloAck carries an HMAC over the
// same data with another label plus the chosen protocol. Both nonces make a recorded
// handshake worthless against another link (no replay), and the labels stop a
// reflected MAC from being accepted in the other direction. Secrets can be rotated:
// a node accepts any of Config.Secrets, signs a Hello with the first and answers with
// the secret that verified the Hello, so a cluster moves from [old] to [old,new] to
// [new,old] to [new] without a refused link. A wrong secret, another cluster, another
// incarnation or no common protocol makes the listener end the stream with a gRPC
// status before the link is ever installed, so nothing is sent on it. The chosen
// protocol is the highest both sides speak.
//
// # Sending and receiving
//
// Send enqueues an envelope on the link's bounded queue (Config.MaxQueueEnvelopes and
// Config.MaxQueueBytes) and returns; a full queue is an error (ErrQueueFull), never a
// block. SendWait waits for room, bounded by its context. One writer goroutine per link
// drains everything queued (up to Config.MaxBatchEnvelopes/MaxBatchBytes) into one
// Batch, so envelopes are written in the order they were enqueued and a burst costs
// few stream writes. Request sends an envelope with a fresh request_id and waits for the
// envelope whose reply_to matches; it fails with ErrLinkDown as soon as the link
// breaks, and with the context's error at its deadline. Envelopes passed to Send,
// SendWait, Request and Reply belong to the link afterwards: callers must not modify
// them.
//
// One reader goroutine per link calls Handler.Handle for every envelope that is not a
// reply, in the order the peer sent them. Handle runs on that reader goroutine: it must
// not block for long (enqueue work elsewhere), because while it runs nothing else is
// read from that link, replies included. Answer a request with from.Reply, which queues
// the reply on the same link without blocking.
//
// # Failure signal
//
// Events reports links going up and down and dial failures. A broken link (stream
// error, peer stopped) fails every request pending on it at once and is reported as
// LinkDown, a fast failure signal for the failure detector. A link that ends after the
// peer sent Goodbye is reported with Goodbye set and is not redialed. The Events
// channel is buffered (Config.EventBuffer); when its consumer falls behind, events are
// dropped and counted rather than stalling links.
//
// # Concurrency contract
//
// *Links, *Server and *Peer are safe for concurrent use. Links owns, per remote node, a
// maintainer goroutine (dials and redials) and, per established link, a writer and a
// reader goroutine; an inbound link's writer and reader are also tied to the gRPC
// handler goroutine, which returns when the link ends (the gRPC server then cancels
// the stream, which ends the reader). Close ends every link, stops every goroutine the
// package started and waits for them; the only exception is the helper that reads a
// Hello under the handshake timeout, which ends as soon as gRPC cancels the stream of
// a handler that gave up on it. Lock order: Links.mu before Peer.mu; no lock is held while calling
// the Handler, sending on a stream or emitting an event. The package has no global
// mutable state.
package peer
