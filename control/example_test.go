package control_test

import (
	"log"
	"net"

	"github.com/roomcast/roomcast/control"
)

// Example wires the control API: a fabric (the mesh, in roomcast node), bearer
// tokens, reflection, and a listener. It is compiled, not run.
func Example() {
	var fab control.Fabric // the mesh implements it
	s, err := control.New(control.Config{
		Fabric:     fab,
		Tokens:     []string{"a-long-random-token"},
		Reflection: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", ":9090")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := s.Serve(l); err != nil {
			log.Print(err)
		}
	}()
	// On shutdown: report NOT_SERVING, drain, then stop.
	s.SetServing(false)
	s.GracefulStop()
}
