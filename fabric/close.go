package fabric

// CloseCode is a WebSocket close code of the public contract (roomcast.v1.CloseCode).
type CloseCode int

// Close codes; see roomcast.v1.CloseCode for their meaning.
const (
	CloseNormal             CloseCode = 1000
	CloseProtocolError      CloseCode = 1002
	CloseInvalidPayload     CloseCode = 1007
	CloseMessageTooBig      CloseCode = 1009
	CloseInternalError      CloseCode = 1011
	CloseShutdown           CloseCode = 4000
	CloseSlow               CloseCode = 4001
	CloseHeartbeatTimeout   CloseCode = 4002
	CloseKicked             CloseCode = 4003
	CloseTokenExpired       CloseCode = 4004
	CloseRateLimited        CloseCode = 4005
	CloseOverloaded         CloseCode = 4006
	CloseBadFrame           CloseCode = 4007
	CloseUnauthorized       CloseCode = 4500
	CloseAuthTimeout        CloseCode = 4501
	CloseForbidden          CloseCode = 4502
	CloseTooManyConnections CloseCode = 4503
	CloseConnectExpected    CloseCode = 4504
)

// Reconnect reports whether a client closed with this code should reconnect: every
// code outside 4500-4999 says yes.
func (c CloseCode) Reconnect() bool { return c < 4500 || c > 4999 }

// Immediate reports whether the client should reconnect at once (with jitter only)
// rather than with backoff: the node is draining and another node will take it.
func (c CloseCode) Immediate() bool { return c == CloseShutdown }

// String names the code in logs and metrics labels.
func (c CloseCode) String() string {
	if s, ok := closeNames[c]; ok {
		return s
	}
	return "other"
}

var closeNames = map[CloseCode]string{
	CloseNormal: "normal", CloseProtocolError: "protocol_error", CloseInvalidPayload: "invalid_payload",
	CloseMessageTooBig: "message_too_big", CloseInternalError: "internal_error", CloseShutdown: "shutdown",
	CloseSlow: "slow", CloseHeartbeatTimeout: "heartbeat_timeout", CloseKicked: "kicked",
	CloseTokenExpired: "token_expired", CloseRateLimited: "rate_limited", CloseOverloaded: "overloaded",
	CloseBadFrame: "bad_frame", CloseUnauthorized: "unauthorized", CloseAuthTimeout: "auth_timeout",
	CloseForbidden: "forbidden", CloseTooManyConnections: "too_many_connections",
	CloseConnectExpected: "connect_expected",
}
