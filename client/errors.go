package client

import (
	"errors"
	"fmt"
	"strings"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// Client-side errors, for errors.Is.
var (
	// ErrClosed is returned by every method once the client is closed, by Close or
	// by a close code that forbids reconnecting.
	ErrClosed = errors.New("client: closed")
	// ErrQueueFull is returned by a command issued while offline when the offline
	// queue is full. The command was not queued.
	ErrQueueFull = errors.New("client: offline queue full")
	// ErrConnectionLost is returned by a command that was sent but not answered
	// before the connection broke: the server may or may not have applied it.
	ErrConnectionLost = errors.New("client: connection lost before the reply")
	// ErrTimeout is returned by a command that got no result within the command
	// timeout.
	ErrTimeout = errors.New("client: command timed out")
	// ErrNotSubscribed is returned by a Subscription's methods after it ended.
	ErrNotSubscribed = errors.New("client: subscription ended")
)

// Error is a command failure reported by the server.
type Error struct {
	// Code classifies the failure.
	Code pb.ErrorCode
	// Message is the server's detail, for logs; never parse it.
	Message string
	// Temporary is true when retrying the same command later may succeed.
	Temporary bool
}

func (e *Error) Error() string {
	name := strings.ToLower(strings.TrimPrefix(e.Code.String(), "ERROR_CODE_"))
	if e.Message == "" {
		return "roomcast: " + name
	}
	return fmt.Sprintf("roomcast: %s: %s", name, e.Message)
}

// Is makes errors.Is match an *Error with the same code, and the sentinels of package
// fabric: errors.Is(err, fabric.ErrPermissionDenied).
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		return t.Code == e.Code
	case *fabric.Error:
		return int32(t.Code) == int32(e.Code)
	}
	return false
}

func errorFromPB(pe *pb.Error) *Error {
	return &Error{Code: pe.GetCode(), Message: pe.GetMessage(), Temporary: pe.GetTemporary()}
}

// CloseError reports that the server closed the connection.
type CloseError struct {
	// Code is the WebSocket close code (see fabric.CloseCode).
	Code fabric.CloseCode
	// Reason is the server's reason, when it gave one.
	Reason string
	// Reconnect reports whether the client reconnects after this close.
	Reconnect bool
}

func (e *CloseError) Error() string {
	s := fmt.Sprintf("client: server closed the connection: %d %s", int(e.Code), e.Code)
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// Is makes a CloseError that stopped the client match ErrClosed.
func (e *CloseError) Is(target error) bool { return target == ErrClosed && !e.Reconnect }

// LeftError ends a Subscription the server removed from its room.
type LeftError struct {
	// Room is the room left.
	Room string
	// Reason is the server's reason, e.g. "backend".
	Reason string
}

func (e *LeftError) Error() string {
	return fmt.Sprintf("client: removed from %s: %s", e.Room, e.Reason)
}
