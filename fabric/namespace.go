package fabric

import (
	"fmt"
	"regexp"
	"sort"
	"sync/atomic"
	"time"
)

// Namespace holds the options of the rooms whose names start with "<Name>:". The
// namespace named "" holds rooms without ':'.
type Namespace struct {
	// Name is the part of room names before ':'.
	Name string `json:"name" yaml:"name"`
	// Presence keeps who is in each room, for presence queries.
	Presence bool `json:"presence" yaml:"presence"`
	// JoinLeave pushes member_joined/member_left to room members and emits join/leave
	// events on a user's first/last connection in a room.
	JoinLeave bool `json:"join_leave" yaml:"join_leave"`
	// HistorySize is how many messages each room retains (0: no history, no recovery).
	HistorySize int `json:"history_size" yaml:"history_size"`
	// HistoryTTL drops retained messages older than this (0: kept until pushed out).
	HistoryTTL time.Duration `json:"history_ttl" yaml:"history_ttl"`
	// ClientPublish lets clients publish (they still need a publish right in their token).
	ClientPublish bool `json:"client_publish" yaml:"client_publish"`
	// MaxMembers caps the users present in one room (0: no cap).
	MaxMembers int `json:"max_members" yaml:"max_members"`
	// IdempotencyWindow is how long publish idempotency keys are remembered
	// (0: the default of 5 minutes).
	IdempotencyWindow time.Duration `json:"idempotency_window" yaml:"idempotency_window"`
}

// DefaultIdempotencyWindow is used when a namespace does not set one.
const DefaultIdempotencyWindow = 5 * time.Minute

// MaxHistorySize bounds HistorySize so a config typo cannot eat the node's memory.
const MaxHistorySize = 100_000

var namespaceName = regexp.MustCompile(`^[A-Za-z0-9_.\-]{0,64}$`)

// Validate checks the options.
func (n *Namespace) Validate() error {
	if !namespaceName.MatchString(n.Name) {
		return fmt.Errorf("namespace %q: name must be 0-64 of [A-Za-z0-9_.-]", n.Name)
	}
	if n.HistorySize < 0 || n.HistorySize > MaxHistorySize {
		return fmt.Errorf("namespace %q: history_size must be 0-%d", n.Name, MaxHistorySize)
	}
	if n.HistoryTTL < 0 || n.MaxMembers < 0 || n.IdempotencyWindow < 0 {
		return fmt.Errorf("namespace %q: negative limit", n.Name)
	}
	return nil
}

// Idempotency returns the effective idempotency window.
func (n *Namespace) Idempotency() time.Duration {
	if n.IdempotencyWindow == 0 {
		return DefaultIdempotencyWindow
	}
	return n.IdempotencyWindow
}

// Namespaces is the live table of namespaces. Lookups are lock-free; Replace swaps the
// whole table atomically, so a reader sees either the old or the new table, never a
// mix.
type Namespaces struct {
	table atomic.Pointer[map[string]*Namespace]
}

// NewNamespaces validates list and returns a table holding it.
func NewNamespaces(list []Namespace) (*Namespaces, error) {
	ns := &Namespaces{}
	if err := ns.Replace(list); err != nil {
		return nil, err
	}
	return ns, nil
}

// Replace validates list and, only if all of it is valid, makes it the live table.
func (ns *Namespaces) Replace(list []Namespace) error {
	m := make(map[string]*Namespace, len(list))
	for i := range list {
		n := list[i]
		if err := n.Validate(); err != nil {
			return err
		}
		if _, dup := m[n.Name]; dup {
			return fmt.Errorf("namespace %q defined twice", n.Name)
		}
		m[n.Name] = &n
	}
	ns.table.Store(&m)
	return nil
}

// Lookup returns the options of room's namespace, or an error with
// CodeUnknownNamespace. The returned value must not be modified.
func (ns *Namespaces) Lookup(room string) (*Namespace, error) {
	name := NamespaceOf(room)
	if n, ok := (*ns.table.Load())[name]; ok {
		return n, nil
	}
	return nil, Errorf(CodeUnknownNamespace, "unknown namespace %q of room %q", name, room)
}

// List returns a copy of the table, ordered by name.
func (ns *Namespaces) List() []Namespace {
	m := *ns.table.Load()
	out := make([]Namespace, 0, len(m))
	for _, n := range m {
		out = append(out, *n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
