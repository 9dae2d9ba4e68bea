package cli

import (
	"encoding/json"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/roomcast/roomcast/internal/jwtauth"
)

func tokenCmd() *cobra.Command {
	var join, publish, read, rooms []string
	var info, secret, secretFile, kid string
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "token USER [--join P ...] [--publish P ...] [--read P ...] [--rooms R ...] [--info JSON] [--ttl 1h] [--secret S | --secret-file F]",
		Short: "Mint a development client token (HS256)",
		Long: `Token signs an HS256 JWT for USER with the node's client secret, for
development and tests; production tokens come from your own auth service. The
secret is --secret, the contents of --secret-file (a trailing newline is
ignored), or the environment variable ROOMCAST_JWT_SECRET, and must be at least
32 bytes. --join, --publish and --read take room patterns (a trailing "*"
matches any suffix); --rooms lists rooms joined automatically on connect; --info
is the public info other members see, as JSON. The token is printed on stdout;
no node is contacted.`,
		Example: `  # A token for alice that may join and publish in chat rooms, valid 1 hour
  export ROOMCAST_JWT_SECRET=$(cat /etc/roomcast/jwt-secret)
  roomcast token alice --join 'chat:*' --publish 'chat:*' --read 'chat:*'

  # Auto-join a room, with public info, for a day
  roomcast token bob --join 'chat:*' --rooms chat:lobby --info '{"name":"Bob"}' --ttl 24h

  # Secret from a file, key id for a node with several keys
  roomcast token carol --secret-file ./dev-secret --kid dev --join '*'`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if a[0] == "" {
				return usageErrorf("empty USER")
			}
			if ttl <= 0 {
				return usageErrorf("--ttl must be positive")
			}
			key, err := tokenSecret(cmd, secret, secretFile)
			if err != nil {
				return err
			}
			claims := jwtauth.Claims{User: a[0], Join: join, Publish: publish, Read: read, Rooms: rooms}
			if info != "" {
				if !json.Valid([]byte(info)) {
					return usageErrorf("--info is not valid JSON")
				}
				claims.Info = json.RawMessage(info)
			}
			tok, err := jwtauth.Mint("HS256", kid, key, claims, ttl)
			if err != nil {
				return usageErrorf("mint token: %v", err)
			}
			g, err := resolveGlobals(cmd)
			if err != nil {
				return err
			}
			out := newPrinter(cmd.OutOrStdout(), g.json)
			if g.json {
				b, err := json.Marshal(struct {
					Token     string `json:"token"`
					User      string `json:"user"`
					ExpiresAt string `json:"expiresAt"`
				}{tok, a[0], time.Now().Add(ttl).UTC().Format(time.RFC3339)})
				if err != nil {
					return err
				}
				return out.line("%s", b)
			}
			return out.line("%s", tok)
		},
	}
	f := c.Flags()
	f.StringSliceVar(&join, "join", nil, "room patterns the client may join (repeatable)")
	f.StringSliceVar(&publish, "publish", nil, "room patterns the client may publish to (repeatable)")
	f.StringSliceVar(&read, "read", nil, "room patterns whose presence and history the client may read (repeatable)")
	f.StringSliceVar(&rooms, "rooms", nil, "rooms joined automatically on connect (repeatable)")
	f.StringVar(&info, "info", "", "public info of the connection, as JSON")
	f.DurationVar(&ttl, "ttl", time.Hour, "lifetime of the token")
	f.StringVar(&secret, "secret", "", "HS256 secret (env "+EnvJWTSecret+")")
	f.StringVar(&secretFile, "secret-file", "", "file holding the HS256 secret")
	f.StringVar(&kid, "kid", "", "key id put in the token header, for nodes configured with key ids")
	return c
}

// tokenSecret picks the signing secret from the flags or the environment.
func tokenSecret(cmd *cobra.Command, secret, file string) ([]byte, error) {
	var s string
	switch {
	case cmd.Flags().Changed("secret") && file != "":
		return nil, usageErrorf("give either --secret or --secret-file, not both")
	case cmd.Flags().Changed("secret"):
		s = secret
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, usageErrorf("read --secret-file: %v", err)
		}
		s = strings.TrimRight(string(b), "\r\n")
	default:
		s = os.Getenv(EnvJWTSecret)
	}
	if s == "" {
		return nil, usageErrorf("no secret: give --secret, --secret-file or set %s", EnvJWTSecret)
	}
	if len(s) < jwtauth.MinSecretLen {
		return nil, usageErrorf("secret is %d bytes; nodes need at least %d", len(s), jwtauth.MinSecretLen)
	}
	return []byte(s), nil
}
