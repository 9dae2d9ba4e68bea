package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roomcast/roomcast/internal/jwtauth"
)

const testSecret = "0123456789abcdef0123456789abcdef-test"

func TestToken(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	verifier := func(t *testing.T, kid string) *jwtauth.Verifier {
		v, err := jwtauth.New(jwtauth.Config{Keys: []jwtauth.Key{{ID: kid, Algorithm: "HS256", Secret: []byte(testSecret)}}})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		env  string // ROOMCAST_JWT_SECRET
		args []string
		kid  string
		want jwtauth.Claims
		ttl  time.Duration
	}{
		{
			name: "all claims",
			args: []string{"token", "alice", "--secret", testSecret, "--join", "chat:*", "--join", "news:*",
				"--publish", "chat:*", "--read", "chat:*,news:*", "--rooms", "chat:lobby", "--info", `{"name":"Alice"}`, "--ttl", "2h"},
			want: jwtauth.Claims{User: "alice", Join: []string{"chat:*", "news:*"}, Publish: []string{"chat:*"},
				Read: []string{"chat:*", "news:*"}, Rooms: []string{"chat:lobby"}, Info: json.RawMessage(`{"name":"Alice"}`)},
			ttl: 2 * time.Hour,
		},
		{
			name: "secret from environment",
			env:  testSecret,
			args: []string{"token", "bob"},
			want: jwtauth.Claims{User: "bob"},
			ttl:  time.Hour,
		},
		{
			name: "secret file and kid",
			args: []string{"token", "carol", "--secret-file", secretFile, "--kid", "dev", "--join", "*"},
			kid:  "dev",
			want: jwtauth.Claims{User: "carol", Join: []string{"*"}},
			ttl:  time.Hour,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv(EnvJWTSecret, tt.env)
			}
			res := runCLI(context.Background(), t, "", tt.args...)
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			got, err := verifier(t, tt.kid).Verify(strings.TrimSpace(res.stdout))
			if err != nil {
				t.Fatalf("minted token does not verify: %v", err)
			}
			if got.User != tt.want.User || !slices.Equal(got.Join, tt.want.Join) || !slices.Equal(got.Publish, tt.want.Publish) ||
				!slices.Equal(got.Read, tt.want.Read) || !slices.Equal(got.Rooms, tt.want.Rooms) || string(got.Info) != string(tt.want.Info) {
				t.Errorf("claims %+v, want %+v", got, tt.want)
			}
			if left := time.Until(got.ExpiresAt); left > tt.ttl || left < tt.ttl-time.Minute {
				t.Errorf("expires in %v, want about %v", left, tt.ttl)
			}
		})
	}

	t.Run("json output", func(t *testing.T) {
		res := runCLI(context.Background(), t, "", "-o", "json", "token", "dave", "--secret", testSecret)
		var out struct{ Token, User, ExpiresAt string }
		if err := json.Unmarshal([]byte(res.stdout), &out); err != nil || res.code != 0 {
			t.Fatalf("exit %d, stdout %q: %v", res.code, res.stdout, err)
		}
		if _, err := verifier(t, "").Verify(out.Token); err != nil || out.User != "dave" {
			t.Errorf("token %q for %q: %v", out.Token, out.User, err)
		}
	})

	usage := []struct {
		name string
		env  string
		args []string
	}{
		{"no secret", "", []string{"token", "alice"}},
		{"short secret", "", []string{"token", "alice", "--secret", "short"}},
		{"short secret from environment", "short", []string{"token", "alice"}},
		{"secret and file", "", []string{"token", "alice", "--secret", testSecret, "--secret-file", secretFile}},
		{"missing secret file", "", []string{"token", "alice", "--secret-file", filepath.Join(dir, "nope")}},
		{"invalid info", "", []string{"token", "alice", "--secret", testSecret, "--info", "{nope"}},
		{"no user", "", []string{"token", "--secret", testSecret}},
		{"negative ttl", "", []string{"token", "alice", "--secret", testSecret, "--ttl", "-1h"}},
	}
	for _, tt := range usage {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvJWTSecret, tt.env)
			res := runCLI(context.Background(), t, "", tt.args...)
			if res.code != ExitUsage || res.stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want usage error", res.code, res.stdout, res.stderr)
			}
		})
	}
}
