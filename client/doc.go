// Package client is the Go SDK for roomcast WebSocket clients.
//
// A Client holds at most one WebSocket connection to a roomcast node at a time and
// keeps it alive: it authenticates with a static token or a token function, answers
// the server's pings, refreshes the token before it expires, and after an unexpected
// disconnect reconnects with exponential backoff and full jitter, re-joins every room
// it was in and recovers the messages it missed from the last (epoch, offset) it
// received. Whether recovery succeeded is always reported (JoinInfo.Recovered): a
// false value means the application must re-sync that room from its own source of
// truth, because messages may have been missed.
//
// Gaps in a live stream are repaired, never silent. Every message must follow the
// last one delivered: its offset is the last offset plus one, in the same epoch or
// in a new one (the room's owner handed the room over with its history). A repeat or
// older offset is dropped as a duplicate; anything else is a gap (a delivery lost in
// the cluster, or a new epoch starting again from 1 after an owner crashed). For a
// room that keeps history the subscription then leaves and re-joins the room,
// recovering from the last position it delivered (a membership the server made reads
// the room's history instead); pushes arriving meanwhile wait and are deduplicated,
// the recovered messages come first, and the join handler gets a JoinInfo with
// Resync set and Recovered saying whether it worked (Gap() when not). At most one
// re-sync per subscription is in flight. For a room without history the message is
// delivered after a JoinInfo report with Resync set and Gap() true.
//
// The life of a Client:
//
//	disconnected → connecting → connected → disconnected → connecting → …
//	                                      ↘ closed (Close, or a "do not reconnect" close code)
//
// Close codes 4500–4999 (unauthorized, banned, kicked for good…) stop the client: it
// enters StateClosed and does not reconnect. Close code 4000 (the node is shutting
// down or draining) makes it reconnect at once, with a little jitter only. Every other
// reason reconnects with backoff.
//
// Commands (Publish, Presence, History, …) issued while the client is not connected
// are queued, up to Options.QueueSize, and sent in order after the next connect; when
// the queue is full the new command fails at once with ErrQueueFull (the queue never
// drops commands it has accepted). Commands that were already sent when the connection
// broke fail with ErrConnectionLost, because the client cannot know whether the server
// applied them; retry publishes with an idempotency key. Every command ends with its
// result, a *Error from the server, a client error (ErrClosed, ErrQueueFull,
// ErrConnectionLost, ErrTimeout) or the context's error.
//
// Concurrency: a Client and its Subscriptions are safe for concurrent use. Handlers
// (callbacks) of one Client run on the Client's own delivery goroutine, one at a time
// and in the order the server sent the corresponding frames; each Subscription delivers
// its messages and join notifications in order on a goroutine of its own. Handlers may
// call any method of the Client except Close, which waits for running handlers to
// return; a handler must not block for long, or later deliveries wait. Messages
// waiting to be delivered are buffered without bound, so a consumer that never reads a
// Subscription's channel makes the client's memory grow. After Close returns, no
// goroutine of the Client is left and no handler runs again.
package client
