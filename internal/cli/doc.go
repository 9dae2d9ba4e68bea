// Package cli implements the roomcast command-line verbs that drive a node over
// its gRPC control API: publish, broadcast, send, join, leave, kick, presence,
// stats, history, rooms, nodes, events and health, plus token, which mints
// development client tokens locally, and config get|set|delete, which read and
// write a cluster's live configuration in etcd directly (ConfigCommand).
//
// The package holds no package-level mutable state. Commands returns a fresh set
// of cobra commands on every call, and the global connection flags live on the
// root command (AddGlobalFlags), read back from the parsed flag set each time a
// verb runs, so several command trees can run concurrently in one process (as the
// tests do). Each verb opens one gRPC connection, closes it before returning and
// starts no goroutine that outlives it; events follows its stream until the
// command's context is cancelled or an interrupt arrives.
//
// Errors are turned into process exit codes by ExitCode (and printed by
// Execute), so scripts can tell a server's refusal from a usage mistake, an
// unreachable node or a credentials problem:
//
//	0  success
//	1  the server answered with an error ("roomcast: <code>: <message>" on stderr)
//	2  usage error: bad flags, arguments or local input
//	3  cannot connect, or timed out (Unavailable, DeadlineExceeded)
//	4  unauthenticated or permission denied
package cli
