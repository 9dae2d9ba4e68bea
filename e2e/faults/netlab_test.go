package faults

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Every object the lab creates is named with this prefix, so a run can sweep what a
// crashed earlier run left behind without touching anything else on the machine.
const (
	labPrefix = "rcft-"
	bridge    = labPrefix + "br0"
	subnet    = "10.77.0."
	hostIP    = subnet + "1" // the host's address on the bridge: clients and publishers
	etcdIP    = subnet + "2"
)

// nodeIP returns the address of node slot i (0-based).
func nodeIP(i int) string { return fmt.Sprintf("%s%d", subnet, 10+i) }

// labUnavailable says why the lab cannot run here ("" when it can): it needs root and
// the ip and nft tools.
func labUnavailable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s not found (apt-get install iproute2 nftables)", tool)
		}
	}
	return ""
}

// requireLab skips the test when the lab cannot run, except in CI (CI=true), where a
// missing lab fails the test so that the proof cannot silently vanish.
func requireLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a lab of real processes; skipped with -short")
	}
	why := labUnavailable()
	if why == "" {
		if buildErr != "" {
			t.Fatal(buildErr)
		}
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("fault tests cannot run in CI: %s", why)
	}
	t.Skipf("fault tests need a network lab: %s", why)
}

// run runs a command and returns its combined output, or an error quoting it.
func run(args ...string) (string, error) {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// netLab is a Linux bridge with one network namespace per node and one for etcd, each
// joined to the bridge by a veth pair; the host has an address on the bridge, so
// clients and publishers in the test process reach every namespace through it.
// Faults are nftables rules inside a namespace's own table, so that healing is
// flushing them.
type netLab struct {
	mu  sync.Mutex
	nss map[string]string // namespace -> its address
}

// newLab sweeps leftovers of earlier runs, creates the bridge and registers the
// teardown with t.Cleanup (which runs even when the test fails).
func newLab(t *testing.T) *netLab {
	t.Helper()
	sweepLab()
	l := &netLab{nss: map[string]string{}}
	t.Cleanup(sweepLab)
	for _, c := range [][]string{
		{"ip", "link", "add", bridge, "type", "bridge"},
		{"ip", "addr", "add", hostIP + "/24", "dev", bridge},
		{"ip", "link", "set", bridge, "up"},
	} {
		if _, err := run(c...); err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	return l
}

// addNS creates namespace labPrefix+name with address ip on the bridge and an empty
// nftables table "rcft" with input and output chains.
func (l *netLab) addNS(t *testing.T, name, ip string) string {
	t.Helper()
	ns := labPrefix + name
	veth := ns // host end; interface and namespace names live in separate spaces
	cmds := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "link", "set", veth, "master", bridge},
		{"ip", "link", "set", veth, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", ns, "nft", "add table inet rcft"},
		{"ip", "netns", "exec", ns, "nft", "add chain inet rcft input { type filter hook input priority 0 ; policy accept ; }"},
		{"ip", "netns", "exec", ns, "nft", "add chain inet rcft output { type filter hook output priority 0 ; policy accept ; }"},
	}
	for _, c := range cmds {
		if _, err := run(c...); err != nil {
			t.Fatalf("lab: %v", err)
		}
	}
	l.mu.Lock()
	l.nss[ns] = ip
	l.mu.Unlock()
	return ns
}

// nft adds one rule (in nft syntax) to a namespace's table.
func (l *netLab) nft(t testing.TB, ns, chain, rule string) {
	t.Helper()
	if _, err := run("ip", "netns", "exec", ns, "nft", "add rule inet rcft "+chain+" "+rule); err != nil {
		t.Fatalf("lab: %v", err)
	}
}

// cut drops every packet between namespace ns and the addresses peers, both ways.
func (l *netLab) cut(t testing.TB, ns string, peers ...string) {
	t.Helper()
	for _, p := range peers {
		l.nft(t, ns, "input", "ip saddr "+p+" drop")
		l.nft(t, ns, "output", "ip daddr "+p+" drop")
	}
}

// isolate drops everything that crosses ns's interface: peers, etcd and clients.
func (l *netLab) isolate(t testing.TB, ns string) {
	t.Helper()
	l.nft(t, ns, "input", `iifname "eth0" drop`)
	l.nft(t, ns, "output", `oifname "eth0" drop`)
}

// loseOutgoing drops pct percent of the packets ns sends to each of peers (random,
// per packet); traffic towards ns is untouched, so the loss is one-way.
func (l *netLab) loseOutgoing(t testing.TB, ns string, pct int, peers ...string) {
	t.Helper()
	for _, p := range peers {
		l.nft(t, ns, "output", fmt.Sprintf("ip daddr %s numgen random mod 100 < %d drop", p, pct))
	}
}

// heal removes every fault rule from every namespace.
func (l *netLab) heal(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for ns := range l.nss {
		for _, chain := range []string{"input", "output"} {
			if _, err := run("ip", "netns", "exec", ns, "nft", "flush chain inet rcft "+chain); err != nil {
				t.Fatalf("lab: %v", err)
			}
		}
	}
}

// sweepLab removes every lab object: processes still running in lab namespaces (only
// processes this package started live there), the namespaces, the host ends of the
// veth pairs and the bridge. Errors are ignored: the objects may not exist.
func sweepLab() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], labPrefix) {
			continue
		}
		pids, _ := exec.Command("ip", "netns", "pids", f[0]).Output()
		for _, pid := range strings.Fields(string(pids)) {
			_ = exec.Command("kill", "-9", pid).Run()
		}
		_ = exec.Command("ip", "netns", "del", f[0]).Run()
	}
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(links), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
		if strings.HasPrefix(name, labPrefix) {
			_ = exec.Command("ip", "link", "del", name).Run()
		}
	}
}
