package fabric

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxRoomLen is the longest room name accepted, in bytes.
const MaxRoomLen = 200

// ValidateRoom checks a room name: 1-200 bytes of UTF-8 with no whitespace, control
// characters or '*'. The namespace is the part before the first ':'.
func ValidateRoom(room string) error {
	if room == "" {
		return Errorf(CodeBadRequest, "room name is empty")
	}
	if len(room) > MaxRoomLen {
		return Errorf(CodeBadRequest, "room name longer than %d bytes", MaxRoomLen)
	}
	if !utf8.ValidString(room) {
		return Errorf(CodeBadRequest, "room name is not valid utf-8")
	}
	for _, r := range room {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '*' {
			return Errorf(CodeBadRequest, "room name %q contains %q", room, r)
		}
	}
	return nil
}

// NamespaceOf returns the namespace part of a room name ("chat" for "chat:lobby"),
// or "" when the name has no ':'.
func NamespaceOf(room string) string {
	if i := strings.IndexByte(room, ':'); i >= 0 {
		return room[:i]
	}
	return ""
}

// MatchPattern reports whether name matches pattern. A pattern is a literal name, or
// a prefix followed by a single trailing '*' that matches any suffix (including the
// empty one). "*" alone matches everything. Nothing else is a wildcard.
func MatchPattern(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}

// MatchAny reports whether name matches any of the patterns.
func MatchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if MatchPattern(p, name) {
			return true
		}
	}
	return false
}

// ConnID builds a connection id that names its node: "<seq base36>@<node>". Node
// names must not contain '@'.
func ConnID(node string, seq uint64) string {
	return strconv.FormatUint(seq, 36) + "@" + node
}

// NodeOfConn returns the node named in a connection id, or "" if the id is malformed.
func NodeOfConn(conn string) string {
	i := strings.LastIndexByte(conn, '@')
	if i <= 0 || i == len(conn)-1 {
		return ""
	}
	return conn[i+1:]
}
