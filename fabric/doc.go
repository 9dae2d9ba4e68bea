// Package fabric is roomcast's shared vocabulary: rooms, payloads, positions,
// messages, members, events, namespaces, close codes and errors.
//
// Every other package may import fabric; fabric imports nothing of roomcast. It holds
// plain values and pure functions, plus Namespaces, whose live table may be replaced
// atomically while readers use it (safe for concurrent use).
package fabric
