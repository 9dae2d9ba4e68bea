package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

func eventsCmd() *cobra.Command {
	var types []string
	var room, user, group string
	var buffer uint32
	c := &cobra.Command{
		Use:   "events [--type T ...] [--room PATTERN] [--user U] [--group G]",
		Short: "Follow events as they happen, until interrupted",
		Long: `Events follows the node's event stream and prints one line per event until
Ctrl-C (exit code 0). Types: connect, disconnect, join, leave, client_message,
kick (and gap, which reports events this stream missed because it fell behind).
A room PATTERN may end in "*" to match any suffix; events without a room
(connect, disconnect) only pass when no --room is given. Streams sharing a
--group share the events, each event going to one of them. --timeout does not
apply to the stream.`,
		Example: `  # Everything
  roomcast events

  # Joins and leaves of chat rooms
  roomcast events --type join --type leave --room 'chat:*'

  # Client messages as JSON lines, load-balanced over a group of workers
  roomcast events --type client_message --group workers -o json | jq .event.payload`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &pb.StreamEventsRequest{RoomPattern: room, User: user, Group: group, Buffer: buffer}
			for _, t := range types {
				for _, part := range strings.Split(t, ",") {
					et, err := parseEventType(part)
					if err != nil {
						return err
					}
					req.Types = append(req.Types, et)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cmd.SetContext(ctx)
			return withSession(cmd, true, func(ctx context.Context, s *session) error {
				stream, err := pb.NewControlServiceClient(s.cc).StreamEvents(ctx, req)
				if err != nil {
					return endOfStream(ctx, err)
				}
				for {
					resp, err := stream.Recv()
					if err != nil {
						return endOfStream(ctx, err)
					}
					if s.out.json {
						err = s.out.proto(resp)
					} else {
						err = s.out.line("%s", eventLine(resp.GetEvent()))
					}
					if err != nil {
						return err
					}
				}
			})
		},
	}
	c.Flags().StringSliceVar(&types, "type", nil, "only events of this type (repeatable, or comma-separated)")
	c.Flags().StringVar(&room, "room", "", `only events of rooms matching this pattern (a trailing "*" matches any suffix)`)
	c.Flags().StringVar(&user, "user", "", "only events of this user")
	c.Flags().StringVar(&group, "group", "", "consumer group: streams of one group share the events")
	c.Flags().Uint32Var(&buffer, "buffer", 0, "server-side buffer in events (0: the server's default, 1024)")
	return c
}

// endOfStream turns the end of an event stream into the command's result: an
// interrupt or a server closing the stream cleanly is success.
func endOfStream(ctx context.Context, err error) error {
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		return nil
	}
	return err
}

// parseEventType accepts "join", "JOIN", "client-message", "EVENT_TYPE_JOIN".
func parseEventType(s string) (pb.EventType, error) {
	n := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), "-", "_"))
	n = strings.TrimPrefix(n, "EVENT_TYPE_")
	if v, ok := pb.EventType_value["EVENT_TYPE_"+n]; ok && v != 0 {
		return pb.EventType(v), nil
	}
	var names []string
	for name, v := range pb.EventType_value {
		if v != 0 {
			names = append(names, enumText(name, "EVENT_TYPE_"))
		}
	}
	sort.Strings(names)
	return 0, usageErrorf("unknown event type %q: want one of %s", s, strings.Join(names, ", "))
}

// eventLine renders an event as one grep-friendly line: time, type, then
// key=value for the fields that are set.
func eventLine(e *pb.Event) string {
	var b strings.Builder
	b.WriteString(timeText(e.GetTime()))
	b.WriteByte(' ')
	b.WriteString(enumText(e.GetType().String(), "EVENT_TYPE_"))
	kv := func(k, v string) {
		if v != "" {
			b.WriteString(" " + k + "=" + v)
		}
	}
	kv("node", e.GetNode())
	kv("room", e.GetRoom())
	kv("user", e.GetUser())
	kv("conn", e.GetConnection())
	if e.GetCode() != 0 {
		kv("code", u32(e.GetCode()))
	}
	if e.GetReason() != "" {
		kv("reason", strconv.Quote(e.GetReason()))
	}
	if e.GetMissed() != 0 {
		kv("missed", u64(e.GetMissed()))
	}
	if e.GetPayload() != nil {
		kv("payload", payloadText(e.GetPayload()))
	}
	return b.String()
}

func healthCmd() *cobra.Command {
	var service string
	c := &cobra.Command{
		Use:   "health [--service NAME]",
		Short: "Check a node's health (grpc.health.v1)",
		Long: `Health asks the node's grpc.health.v1 service for its serving status and
prints it. It exits with 0 when the status is SERVING and 1 otherwise (for
example NOT_SERVING while the node drains), or 3 when the node cannot be
reached.`,
		Example: `  # Is the node up?
  roomcast health --addr 10.0.0.5:9090

  # In a readiness script
  roomcast health --timeout 2s >/dev/null || echo "not ready"`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := grpc_health_v1.NewHealthClient(s.cc).Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: service})
				if err != nil {
					return err
				}
				if s.out.json {
					err = s.out.proto(resp)
				} else {
					err = s.out.line("%s", resp.GetStatus())
				}
				if err != nil {
					return err
				}
				if resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
					return &exitError{code: ExitServerError, msg: "node is " + resp.GetStatus().String()}
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&service, "service", "", `service name to check ("" for the whole node)`)
	return c
}
