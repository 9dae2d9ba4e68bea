package fabric

import (
	"errors"
	"fmt"
)

// Code classifies an error. Values equal the roomcast.v1.ErrorCode enum of the public
// contract, so edges translate them without a table.
type Code int32

// Error codes; see roomcast.v1.ErrorCode for their meaning.
const (
	CodeInternal         Code = 100
	CodeBadRequest       Code = 101
	CodeUnknownCommand   Code = 102
	CodeUnknownNamespace Code = 103
	CodePermissionDenied Code = 104
	CodeNotJoined        Code = 105
	CodeAlreadyJoined    Code = 106
	CodeLimitExceeded    Code = 107
	CodeRoomFull         Code = 108
	CodeRateLimited      Code = 109
	CodeNotAvailable     Code = 110
	CodeNotFound         Code = 111
	CodeTokenExpired     Code = 112
	CodeUnavailable      Code = 113
	CodeTooLarge         Code = 114
)

// Temporary reports whether a request failing with this code may succeed unchanged
// when retried later.
func (c Code) Temporary() bool {
	return c == CodeInternal || c == CodeRateLimited || c == CodeUnavailable
}

// Error is a coded error. Two *Error values match with errors.Is when their codes are
// equal, so callers test against the sentinels below whatever the message says.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrNotFound) true for any *Error with CodeNotFound.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Code == e.Code
}

// Errorf returns an *Error with code and a formatted message.
func Errorf(code Code, format string, args ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first *Error in err's chain, or CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// Sentinels, one per code, for errors.Is.
var (
	ErrInternal         = &Error{CodeInternal, "internal error"}
	ErrBadRequest       = &Error{CodeBadRequest, "bad request"}
	ErrUnknownCommand   = &Error{CodeUnknownCommand, "unknown command"}
	ErrUnknownNamespace = &Error{CodeUnknownNamespace, "unknown namespace"}
	ErrPermissionDenied = &Error{CodePermissionDenied, "permission denied"}
	ErrNotJoined        = &Error{CodeNotJoined, "not joined"}
	ErrAlreadyJoined    = &Error{CodeAlreadyJoined, "already joined"}
	ErrLimitExceeded    = &Error{CodeLimitExceeded, "limit exceeded"}
	ErrRoomFull         = &Error{CodeRoomFull, "room full"}
	ErrRateLimited      = &Error{CodeRateLimited, "rate limited"}
	ErrNotAvailable     = &Error{CodeNotAvailable, "not available"}
	ErrNotFound         = &Error{CodeNotFound, "not found"}
	ErrTokenExpired     = &Error{CodeTokenExpired, "token expired"}
	ErrUnavailable      = &Error{CodeUnavailable, "unavailable"}
	ErrTooLarge         = &Error{CodeTooLarge, "too large"}
)
