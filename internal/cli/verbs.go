package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// Commands returns the CLI verbs, freshly built, ready for root.AddCommand. Give
// the root the global flags with AddGlobalFlags and run it with Execute to get
// the documented exit codes.
func Commands() []*cobra.Command {
	cmds := []*cobra.Command{
		publishCmd(), broadcastCmd(), sendCmd(),
		joinCmd(), leaveCmd(), kickCmd(),
		presenceCmd(), statsCmd(), historyCmd(),
		roomsCmd(), nodesCmd(), eventsCmd(), healthCmd(),
		tokenCmd(),
	}
	for _, c := range cmds {
		// Set on each verb too, so flag mistakes are usage errors even under a
		// root that did not get AddGlobalFlags.
		c.SetFlagErrorFunc(flagError)
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, a []string) error { return classify(run(cmd, a)) }
	}
	return cmds
}

// payloadFlags are the flags choosing how a verb's data is read and sent.
type payloadFlags struct {
	binary bool
	file   string
}

func (p *payloadFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&p.binary, "binary", false, "send the data as opaque bytes instead of JSON")
	fs.StringVar(&p.file, "file", "", `read the data from this file ("-" for stdin) instead of the argument`)
}

// payload builds the payload from the inline data (when has is true) or --file.
// JSON is checked locally so a typo is a usage error, not a server round trip,
// and is sent as json_text so large numbers keep every digit.
func (p *payloadFlags) payload(cmd *cobra.Command, data string, has bool) (*pb.Payload, error) {
	var raw []byte
	switch {
	case has && p.file != "":
		return nil, usageErrorf("give the data either inline or with --file, not both")
	case has:
		raw = []byte(data)
	case p.file == "-":
		b, err := io.ReadAll(cmd.InOrStdin())
		if err != nil {
			return nil, usageErrorf("read stdin: %v", err)
		}
		raw = b
	case p.file != "":
		b, err := os.ReadFile(p.file)
		if err != nil {
			return nil, usageErrorf("read --file: %v", err)
		}
		raw = b
	default:
		return nil, usageErrorf("no data: give it inline (DATA, or --data for broadcast) or with --file")
	}
	if p.binary {
		return &pb.Payload{Kind: &pb.Payload_Binary{Binary: raw}}, nil
	}
	if !json.Valid(raw) {
		return nil, usageErrorf("data is not valid JSON (use --binary to send bytes as they are)")
	}
	return &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: strings.TrimSpace(string(raw))}}, nil
}

// targetFlags select a user's connections or one connection.
type targetFlags struct {
	user string
	conn string
}

func (t *targetFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.user, "user", "", "every connection of this user")
	fs.StringVar(&t.conn, "conn", "", "this connection id")
}

func (t *targetFlags) target() (*pb.Target, error) {
	switch {
	case t.user != "" && t.conn != "":
		return nil, usageErrorf("give either --user or --conn, not both")
	case t.user != "":
		return &pb.Target{Target: &pb.Target_User{User: t.user}}, nil
	case t.conn != "":
		return &pb.Target{Target: &pb.Target_Connection{Connection: t.conn}}, nil
	}
	return nil, usageErrorf("give --user or --conn")
}

func (t *targetFlags) text() string {
	if t.user != "" {
		return "user:" + t.user
	}
	return "conn:" + t.conn
}

func publishCmd() *cobra.Command {
	var pf payloadFlags
	var key string
	c := &cobra.Command{
		Use:   "publish ROOM [DATA]",
		Short: "Publish a message to a room",
		Long: `Publish sends DATA to every member of ROOM and prints the position the room's
owner assigned to it. DATA is JSON unless --binary is given; --file reads it
from a file instead of the argument.`,
		Example: `  # Publish a JSON object
  roomcast publish chat:lobby '{"text":"hello"}'

  # Publish a file's bytes unchanged, as a binary payload
  roomcast publish game:42 --binary --file state.bin

  # A retried publish with the same key is delivered once
  roomcast publish news:eu '"breaking"' --idempotency-key story-1234`,
		Args: args(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			data, has := optArg(a, 1)
			payload, err := pf.payload(cmd, data, has)
			if err != nil {
				return err
			}
			req := &pb.PublishRequest{Room: a[0], Payload: payload, IdempotencyKey: key}
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := pb.NewControlServiceClient(s.cc).Publish(ctx, req)
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				return s.out.table([]string{"ROOM", "EPOCH", "OFFSET"}, [][]string{{
					req.Room, dash(resp.GetPosition().GetEpoch()), u64(resp.GetPosition().GetOffset()),
				}})
			})
		},
	}
	pf.register(c.Flags())
	c.Flags().StringVar(&key, "idempotency-key", "", "retries with the same key are delivered once")
	return c
}

func broadcastCmd() *cobra.Command {
	var pf payloadFlags
	var key, data string
	c := &cobra.Command{
		Use:   "broadcast ROOM... (--data DATA | --file FILE)",
		Short: "Publish one message to many rooms",
		Long: `Broadcast sends the same data to each ROOM. Each room succeeds or fails on its
own; the command prints one line per room and exits with 1 when any room failed.`,
		Example: `  # Announce in three rooms
  roomcast broadcast chat:lobby chat:help chat:random --data '{"text":"maintenance at 18:00"}'

  # Binary data from stdin
  cat frame.bin | roomcast broadcast game:1 game:2 --binary --file -`,
		Args: args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			payload, err := pf.payload(cmd, data, cmd.Flags().Changed("data"))
			if err != nil {
				return err
			}
			req := &pb.BroadcastRequest{Rooms: a, Payload: payload, IdempotencyKey: key}
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := pb.NewControlServiceClient(s.cc).Broadcast(ctx, req)
				if err != nil {
					return err
				}
				failed := 0
				rows := make([][]string, 0, len(resp.GetResults()))
				for _, r := range resp.GetResults() {
					errText := "-"
					if e := r.GetError(); e != nil {
						failed++
						errText = enumText(e.GetCode().String(), "ERROR_CODE_") + ": " + e.GetMessage()
					}
					rows = append(rows, []string{
						r.GetRoom(), dash(r.GetPosition().GetEpoch()), u64(r.GetPosition().GetOffset()), errText,
					})
				}
				if s.out.json {
					err = s.out.proto(resp)
				} else {
					err = s.out.table([]string{"ROOM", "EPOCH", "OFFSET", "ERROR"}, rows)
				}
				if err != nil {
					return err
				}
				if failed > 0 {
					return &exitError{code: ExitServerError, msg: fmt.Sprintf("broadcast failed in %d of %d rooms", failed, len(resp.GetResults()))}
				}
				return nil
			})
		},
	}
	pf.register(c.Flags())
	c.Flags().StringVar(&data, "data", "", "the data (JSON unless --binary)")
	c.Flags().StringVar(&key, "idempotency-key", "", "idempotency key, applied per room")
	return c
}

func sendCmd() *cobra.Command {
	var pf payloadFlags
	var t targetFlags
	c := &cobra.Command{
		Use:   "send (--user USER | --conn CONN) [DATA]",
		Short: "Push a direct message to a user or a connection",
		Long: `Send pushes DATA directly to every connection of a user (--user) or to one
connection (--conn), outside any room. For a user it prints how many connections
it reached (0 when the user is offline); for a connection, an unknown or closed
connection is an error (NotFound).`,
		Example: `  # Notify every tab of user alice
  roomcast send --user alice '{"type":"notice","text":"your export is ready"}'

  # Push to one connection
  roomcast send --conn n1-7f3a9c '{"type":"ping"}'`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			target, err := t.target()
			if err != nil {
				return err
			}
			data, has := optArg(a, 0)
			payload, err := pf.payload(cmd, data, has)
			if err != nil {
				return err
			}
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				client := pb.NewControlServiceClient(s.cc)
				if user := target.GetUser(); user != "" {
					resp, err := client.SendToUser(ctx, &pb.SendToUserRequest{User: user, Payload: payload})
					if err != nil {
						return err
					}
					if s.out.json {
						return s.out.proto(resp)
					}
					return s.out.table([]string{"TARGET", "CONNECTIONS"}, [][]string{{t.text(), u32(resp.GetConnections())}})
				}
				resp, err := client.SendToConnection(ctx, &pb.SendToConnectionRequest{Connection: target.GetConnection(), Payload: payload})
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				// A direct send to a connection reports no count: it was queued or it failed.
				return s.out.table([]string{"TARGET", "STATUS"}, [][]string{{t.text(), "sent"}})
			})
		},
	}
	pf.register(c.Flags())
	t.register(c.Flags())
	return c
}

func joinCmd() *cobra.Command {
	return membershipCmd(membershipVerb{
		use:   "join ROOM (--user USER | --conn CONN)",
		short: "Join a user's connections, or one connection, to a room",
		long: `Join subscribes connections to ROOM on the server side; each is told with a
"joined" push. It prints how many connections newly joined.`,
		example: `  # Put every connection of alice into a support room
  roomcast join support:ticket-981 --user alice

  # Join one connection
  roomcast join chat:lobby --conn n1-7f3a9c`,
		call: func(ctx context.Context, c pb.ControlServiceClient, room string, t *pb.Target) (proto.Message, uint32, error) {
			resp, err := c.JoinRoom(ctx, &pb.JoinRoomRequest{Room: room, Target: t})
			return resp, resp.GetConnections(), err
		},
	})
}

func leaveCmd() *cobra.Command {
	return membershipCmd(membershipVerb{
		use:   "leave ROOM (--user USER | --conn CONN)",
		short: "Remove a user's connections, or one connection, from a room",
		long: `Leave unsubscribes connections from ROOM; each is told with a "left" push. It
prints how many connections left.`,
		example: `  # Take alice out of a room on every device
  roomcast leave support:ticket-981 --user alice

  # Remove one connection
  roomcast leave chat:lobby --conn n1-7f3a9c`,
		call: func(ctx context.Context, c pb.ControlServiceClient, room string, t *pb.Target) (proto.Message, uint32, error) {
			resp, err := c.LeaveRoom(ctx, &pb.LeaveRoomRequest{Room: room, Target: t})
			return resp, resp.GetConnections(), err
		},
	})
}

// membershipVerb describes join and leave, which differ only in their words and RPC.
type membershipVerb struct {
	use, short, long, example string
	call                      func(ctx context.Context, c pb.ControlServiceClient, room string, t *pb.Target) (proto.Message, uint32, error)
}

func membershipCmd(v membershipVerb) *cobra.Command {
	var t targetFlags
	c := &cobra.Command{
		Use:     v.use,
		Short:   v.short,
		Long:    v.long,
		Example: v.example,
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			target, err := t.target()
			if err != nil {
				return err
			}
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, n, err := v.call(ctx, pb.NewControlServiceClient(s.cc), a[0], target)
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				return s.out.table([]string{"ROOM", "TARGET", "CONNECTIONS"}, [][]string{{a[0], t.text(), u32(n)}})
			})
		},
	}
	t.register(c.Flags())
	return c
}

func kickCmd() *cobra.Command {
	var t targetFlags
	var code uint32
	var reason string
	var reconnect bool
	c := &cobra.Command{
		Use:   "kick (--user USER | --conn CONN) [--code N] [--reason R] [--reconnect]",
		Short: "Disconnect a connection or every connection of a user",
		Long: `Kick closes connections with a WebSocket close code. Without --reconnect the
client is told not to come back (code 4502 by default, or one in 4500-4999);
with --reconnect it may reconnect (code 4003 by default, or one in 4000-4499).`,
		Example: `  # Ban alice's current sessions
  roomcast kick --user alice --reason "terms of service"

  # Bounce one connection, letting it reconnect
  roomcast kick --conn n1-7f3a9c --reconnect --reason "moving you"

  # Custom close code
  roomcast kick --user bob --code 4510 --reason "account suspended"`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			target, err := t.target()
			if err != nil {
				return err
			}
			req := &pb.KickRequest{Target: target, Code: code, Reason: reason, Reconnect: reconnect}
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := pb.NewControlServiceClient(s.cc).Kick(ctx, req)
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				return s.out.table([]string{"TARGET", "CONNECTIONS"}, [][]string{{t.text(), u32(resp.GetConnections())}})
			})
		},
	}
	t.register(c.Flags())
	c.Flags().Uint32Var(&code, "code", 0, "WebSocket close code (0: the default for --reconnect or not)")
	c.Flags().StringVar(&reason, "reason", "", "reason sent to the client (at most 120 bytes)")
	c.Flags().BoolVar(&reconnect, "reconnect", false, "allow the client to reconnect")
	return c
}

func presenceCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "presence ROOM",
		Short: "List a room's members",
		Long:  `Presence lists the users in ROOM, each with their connections and public info.`,
		Example: `  roomcast presence chat:lobby

  # Just the user ids
  roomcast presence chat:lobby -o json | jq -r '.members[].user'`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := pb.NewControlServiceClient(s.cc).GetPresence(ctx, &pb.GetPresenceRequest{Room: a[0]})
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				rows := make([][]string, 0, len(resp.GetMembers()))
				for _, m := range resp.GetMembers() {
					rows = append(rows, []string{m.GetUser(), dash(strings.Join(m.GetConnections(), ",")), dash(valueText(m.GetInfo()))})
				}
				return s.out.table([]string{"USER", "CONNECTIONS", "INFO"}, rows)
			})
		},
	}
}

func statsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats ROOM",
		Short: "Count a room's users and connections",
		Long:  `Stats prints how many distinct users and connections are in ROOM.`,
		Example: `  roomcast stats chat:lobby

  roomcast stats chat:lobby -o json | jq .users`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := pb.NewControlServiceClient(s.cc).GetPresenceStats(ctx, &pb.GetPresenceStatsRequest{Room: a[0]})
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				return s.out.table([]string{"ROOM", "USERS", "CONNECTIONS"}, [][]string{{a[0], u32(resp.GetUsers()), u32(resp.GetConnections())}})
			})
		},
	}
}

func historyCmd() *cobra.Command {
	var sinceEpoch string
	var sinceOffset uint64
	var limit uint32
	var reverse bool
	c := &cobra.Command{
		Use:   "history ROOM [--since-epoch E --since-offset N] [--limit N] [--reverse]",
		Short: "Read a room's retained messages",
		Long: `History prints the messages ROOM retains (in namespaces that keep history),
oldest first unless --reverse, and the room's current position. With
--since-epoch and --since-offset only later messages are shown; a position of
another epoch is refused by the server (FailedPrecondition).`,
		Example: `  # The whole retained history
  roomcast history chat:lobby

  # The 10 newest messages
  roomcast history chat:lobby --limit 10 --reverse

  # What came after a known position
  roomcast history chat:lobby --since-epoch 7c1e2f --since-offset 41`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			req := &pb.GetHistoryRequest{Room: a[0], Limit: limit, Reverse: reverse}
			switch {
			case sinceEpoch != "":
				req.Since = &pb.Position{Epoch: sinceEpoch, Offset: sinceOffset}
			case cmd.Flags().Changed("since-offset"):
				return usageErrorf("--since-offset needs --since-epoch")
			}
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				resp, err := pb.NewControlServiceClient(s.cc).GetHistory(ctx, req)
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(resp)
				}
				rows := make([][]string, 0, len(resp.GetMessages()))
				for _, m := range resp.GetMessages() {
					rows = append(rows, []string{
						m.GetEpoch(), u64(m.GetOffset()), unixMsText(m.GetTimeUnixMs()),
						publisherText(m.GetPublisher()), payloadText(m.GetPayload()),
					})
				}
				if err := s.out.table([]string{"EPOCH", "OFFSET", "TIME", "PUBLISHER", "PAYLOAD"}, rows); err != nil {
					return err
				}
				return s.out.line("position: epoch %s offset %d", dash(resp.GetPosition().GetEpoch()), resp.GetPosition().GetOffset())
			})
		},
	}
	c.Flags().StringVar(&sinceEpoch, "since-epoch", "", "only messages after this position: its epoch")
	c.Flags().Uint64Var(&sinceOffset, "since-offset", 0, "only messages after this position: its offset")
	c.Flags().Uint32Var(&limit, "limit", 0, "maximum number of messages (0: the server's maximum)")
	c.Flags().BoolVar(&reverse, "reverse", false, "newest first")
	return c
}

// publisherText renders a message's publisher: "user/conn", or "-" for a backend.
func publisherText(p *pb.ClientInfo) string {
	switch {
	case p.GetUser() == "" && p.GetConnection() == "":
		return "-"
	case p.GetConnection() == "":
		return p.GetUser()
	}
	return p.GetUser() + "/" + p.GetConnection()
}

func roomsCmd() *cobra.Command {
	var prefix, token string
	var pageSize uint32
	var all bool
	c := &cobra.Command{
		Use:   "rooms [--prefix P] [--page-size N] [--all]",
		Short: "List rooms that have members or retained history",
		Long: `Rooms lists rooms in name order, one page at a time; --all follows every page
(and prints them as one list). Without --all, when more rooms remain, a hint
with the next --page-token is printed on stderr.`,
		Example: `  # The first page
  roomcast rooms

  # Every chat room
  roomcast rooms --prefix chat: --all

  # Names only, for a script
  roomcast rooms --all -o json | jq -r '.rooms[].name'`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				client := pb.NewControlServiceClient(s.cc)
				merged := &pb.ListRoomsResponse{}
				err := eachPage(token, all, func(pageToken string) (string, error) {
					resp, err := client.ListRooms(ctx, &pb.ListRoomsRequest{Prefix: prefix, PageSize: pageSize, PageToken: pageToken})
					if err != nil {
						return "", err
					}
					merged.Rooms = append(merged.Rooms, resp.GetRooms()...)
					merged.NextPageToken = resp.GetNextPageToken()
					return resp.GetNextPageToken(), nil
				})
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(merged)
				}
				rows := make([][]string, 0, len(merged.GetRooms()))
				for _, r := range merged.GetRooms() {
					rows = append(rows, []string{
						r.GetName(), u32(r.GetUsers()), u32(r.GetConnections()),
						dash(r.GetPosition().GetEpoch()), u64(r.GetPosition().GetOffset()), dash(r.GetOwner()),
					})
				}
				if err := s.out.table([]string{"NAME", "USERS", "CONNECTIONS", "EPOCH", "OFFSET", "OWNER"}, rows); err != nil {
					return err
				}
				if merged.GetNextPageToken() != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "more rooms: use --page-token %s, or --all\n", merged.GetNextPageToken())
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&prefix, "prefix", "", "only rooms whose name starts with this")
	c.Flags().Uint32Var(&pageSize, "page-size", 0, "rooms per page (0: the server's default, 100; at most 1000)")
	c.Flags().StringVar(&token, "page-token", "", "continue from a previous page")
	c.Flags().BoolVar(&all, "all", false, "follow every page")
	return c
}

func nodesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List the nodes of the cluster",
		Long:  `Nodes lists every node of the cluster with its state, addresses and load.`,
		Example: `  roomcast nodes

  # Nodes that are not active
  roomcast nodes -o json | jq -r '.nodes[] | select(.state != "NODE_STATE_ACTIVE") | .name'`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withSession(cmd, false, func(ctx context.Context, s *session) error {
				client := pb.NewControlServiceClient(s.cc)
				merged := &pb.ListNodesResponse{}
				err := eachPage("", true, func(pageToken string) (string, error) {
					resp, err := client.ListNodes(ctx, &pb.ListNodesRequest{PageToken: pageToken})
					if err != nil {
						return "", err
					}
					merged.Nodes = append(merged.Nodes, resp.GetNodes()...)
					return resp.GetNextPageToken(), nil
				})
				if err != nil {
					return err
				}
				if s.out.json {
					return s.out.proto(merged)
				}
				rows := make([][]string, 0, len(merged.GetNodes()))
				for _, n := range merged.GetNodes() {
					rows = append(rows, []string{
						n.GetName(), enumText(n.GetState().String(), "NODE_STATE_"),
						dash(n.GetClientAddress()), dash(n.GetControlAddress()), dash(n.GetVersion()),
						u32(n.GetConnections()), u32(n.GetRooms()), u32(n.GetShards()), timeText(n.GetStartedAt()),
					})
				}
				return s.out.table([]string{"NAME", "STATE", "CLIENT", "CONTROL", "VERSION", "CONNECTIONS", "ROOMS", "SHARDS", "STARTED"}, rows)
			})
		},
	}
}

// eachPage calls page with token, then with each next-page token it returns, until
// a page has no next token; with all false it stops after the first page. A server
// that hands back the token it was just given would make the loop endless, so that
// is a server error.
func eachPage(token string, all bool, page func(token string) (next string, err error)) error {
	for {
		next, err := page(token)
		if err != nil {
			return err
		}
		if !all || next == "" {
			return nil
		}
		if next == token {
			return &exitError{code: ExitServerError, msg: "server repeated the same page token"}
		}
		token = next
	}
}

// optArg returns a[i] and whether it is present.
func optArg(a []string, i int) (string, bool) {
	if i < len(a) {
		return a[i], true
	}
	return "", false
}
