package node_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/node"
)

// ExampleNew wires a node: the mesh provides the Fabric, jwtauth verifies tokens, and
// the node serves /ws. On shutdown, Drain moves clients elsewhere before Close.
func ExampleNew() {
	var mesh node.Fabric // the cluster (mesh.New in cmd/roomcast)
	verifier, err := jwtauth.New(jwtauth.Config{Keys: []jwtauth.Key{{
		Algorithm: "HS256", Secret: []byte("a secret of at least thirty-two bytes!"),
	}}})
	if err != nil {
		log.Fatal(err)
	}
	namespaces, err := fabric.NewNamespaces([]fabric.Namespace{{Name: "chat", Presence: true, ClientPublish: true}})
	if err != nil {
		log.Fatal(err)
	}
	n, err := node.New(node.Config{
		Name:           "node-1",
		Fabric:         mesh,
		Verifier:       verifier,
		Namespaces:     namespaces,
		AllowedOrigins: []string{"https://app.example.com"},
	})
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: ":8080", Handler: http.NewServeMux(), ReadHeaderTimeout: 5 * time.Second}
	srv.Handler.(*http.ServeMux).Handle("/ws", n)
	go func() { _ = srv.ListenAndServe() }()

	// ... on SIGTERM:
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = n.Drain(ctx)
	_ = n.Close()
	_ = srv.Shutdown(ctx)
}
