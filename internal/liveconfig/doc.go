// Package liveconfig owns a roomcast cluster's live configuration in etcd: one YAML
// document under /roomcast/<cluster>/config holding the settings a node applies
// without a restart — the namespaces (with their per-room limits: history_size,
// history_ttl, max_members, idempotency_window, and their options) and the client
// token verification settings (jwt_secret, jwt_keys, jwt_audience, jwt_issuer,
// jwt_leeway). The keys are the config file's keys, so a section can be copied
// between a node's file and the cluster's document.
//
// Per-connection and node-wide limits (max_rooms_per_conn, command_rate,
// connect_rate, queue bounds…) are not live: the edge reads them once at start.
//
// Parse is the one validation of a document: `roomcast config set` runs it before
// writing, and every node runs it (then Settings, on the document layered over its
// own file) before applying, so a document is either applied whole or refused whole.
// Store reads (Get), writes (Set, Delete: compare-and-swap on the key's mod revision)
// and watches (Watch) the document.
//
// # Concurrency contract
//
// Documents are values. A *Store is safe for concurrent use and holds no goroutine of
// its own; each Watch call starts one goroutine that ends when its context ends. The
// package has no package-level mutable state.
package liveconfig
