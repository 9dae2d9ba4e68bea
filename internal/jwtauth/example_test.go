package jwtauth_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/roomcast/roomcast/internal/jwtauth"
)

func Example() {
	secret := []byte("a-development-secret-of-at-least-32-bytes")
	v, err := jwtauth.New(jwtauth.Config{
		Keys:     []jwtauth.Key{{ID: "dev", Algorithm: "HS256", Secret: secret}},
		Audience: "roomcast",
	})
	if err != nil {
		panic(err)
	}
	token, err := jwtauth.Mint("HS256", "dev", secret,
		jwtauth.Claims{User: "alice", Join: []string{"chat:*"}}, time.Hour,
		jwtauth.WithAudience("roomcast"))
	if err != nil {
		panic(err)
	}
	c, err := v.Verify(token)
	fmt.Println(c.User, c.Join, err)

	expired, _ := jwtauth.Mint("HS256", "dev", secret,
		jwtauth.Claims{User: "alice", ExpiresAt: time.Now().Add(-time.Hour)}, 0,
		jwtauth.WithAudience("roomcast"))
	_, err = v.Verify(expired)
	fmt.Println(errors.Is(err, jwtauth.ErrExpired))
	// Output:
	// alice [chat:*] <nil>
	// true
}
