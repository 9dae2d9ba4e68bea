package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/roomcast/roomcast/client"
	"github.com/roomcast/roomcast/fabric"
)

// Connect, join a room, publish to it and read its messages.
func Example() {
	c, err := client.New("ws://localhost:8080/ws", client.WithToken("a-jwt"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	sub, err := c.Join(ctx, "chat:lobby", client.WithJoinHandler(func(j client.JoinInfo) {
		if j.Gap() {
			// Reconnected without recovery: reload the room from the application.
			log.Printf("re-sync %s", j.Room)
		}
	}))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sub.Publish(ctx, client.JSON([]byte(`{"text":"hello"}`))); err != nil {
		log.Fatal(err)
	}
	for m := range sub.Messages() {
		fmt.Printf("%s@%d: %s\n", m.Room, m.Pos.Offset, m.Payload.Data)
	}
}

// A token function is called before every connect and before the token expires.
func ExampleWithTokenFunc() {
	fetch := func(ctx context.Context) (string, error) {
		// Ask the application's backend for a fresh token.
		return "a-fresh-jwt", nil
	}
	c, err := client.New("wss://rt.example.com/ws",
		client.WithTokenFunc(fetch),
		client.WithBackoff(time.Second, 30*time.Second),
		client.WithStateHandler(func(sc client.StateChange) {
			log.Printf("%v -> %v (%v)", sc.From, sc.To, sc.Err)
		}),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Server errors are *client.Error values that also match the fabric sentinels.
func ExampleError() {
	c, err := client.New("ws://localhost:8080/ws", client.WithToken("a-jwt"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_, err = c.Publish(context.Background(), "news:today", client.JSON([]byte(`"hi"`)))
	var e *client.Error
	switch {
	case errors.Is(err, fabric.ErrPermissionDenied):
		log.Print("not allowed to publish here")
	case errors.As(err, &e) && e.Temporary:
		log.Print("try again later")
	case errors.Is(err, client.ErrClosed):
		log.Print("the client is closed")
	}
}

// Direct messages arrive on a channel (or a handler, WithDirectHandler).
func ExampleWithDirectChan() {
	direct := make(chan fabric.Payload, 16)
	c, err := client.New("ws://localhost:8080/ws", client.WithToken("a-jwt"), client.WithDirectChan(direct))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	go func() {
		for p := range direct {
			fmt.Printf("direct: %s\n", p.Data)
		}
	}()
}
