// Command etcdproc runs one real etcd member (internal/embedetcd, the same server and
// version the nodes' client is built against) as its own process, so that the fault
// tests can put it in a network namespace, kill it with SIGKILL and start it again on
// the same data directory. It prints "ready" on stdout once the member serves and
// stops gracefully on SIGTERM or SIGINT.
//
// Usage: etcdproc --dir DIR --client HOST:PORT --peer HOST:PORT [--name NAME]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/roomcast/roomcast/internal/embedetcd"
)

func main() {
	name := flag.String("name", "faults", "member name")
	dir := flag.String("dir", "", "data directory (kept across restarts)")
	client := flag.String("client", "", "client listen and advertise address host:port")
	peer := flag.String("peer", "", "peer listen and advertise address host:port")
	flag.Parse()
	if *dir == "" || *client == "" || *peer == "" {
		fmt.Fprintln(os.Stderr, "etcdproc: --dir, --client and --peer are required")
		os.Exit(2)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	e, err := embedetcd.Start(*name, *dir, *client, *peer, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdproc:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {
	case <-sig:
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcdproc: server failed:", err)
	}
	e.Close()
}
