package conntrack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/internal/testenv"
)

// natNetns makes a throwaway namespace where connections to 10.99.0.1:80
// are DNATed to 127.0.0.1:8080 by a real nftables rule.
func natNetns(t *testing.T) string {
	t.Helper()
	testenv.Root(t)
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Unavailable(t, tool+" not installed")
		}
	}
	name := fmt.Sprintf("lbp-cttest-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", name).Run()
	run("ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "set", "lo", "up")
	run("ip", "-n", name, "addr", "add", "10.99.0.1/32", "dev", "lo")
	cmd := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(`table ip t {
  chain out { type nat hook output priority -100; ip daddr 10.99.0.1 tcp dport 80 dnat to 127.0.0.1:8080; }
}`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	return "/var/run/netns/" + name
}

// runListener runs a Listener on ns until the test ends and returns it
// with a function listing the entries it reported so far.
func runListener(t *testing.T, ns string) (*Listener, func() []Entry) {
	t.Helper()
	var mu sync.Mutex
	var got []Entry
	l := New(Config{Netns: ns}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, func(e *Entry) { mu.Lock(); got = append(got, *e); mu.Unlock() }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	time.Sleep(200 * time.Millisecond) // let it subscribe
	return l, func() []Entry { mu.Lock(); defer mu.Unlock(); return slices.Clone(got) }
}

// serveAndClose listens on the DNAT target (127.0.0.1:8080) in ns and
// closes every connection it accepts, until the test ends.
func serveAndClose(t *testing.T, ns string) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(ns, func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:8080"); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func TestListenerReportsDNAT(t *testing.T) {
	ns := natNetns(t)
	serveAndClose(t, ns)

	// A connection made before the listener starts must be found by the dump.
	var before net.Conn
	if err := netns.Do(ns, func() (err error) { before, err = net.Dial("tcp4", "10.99.0.1:80"); return }); err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	l, entries := runListener(t, ns)

	var after net.Conn
	if err := netns.Do(ns, func() (err error) { after, err = net.Dial("tcp4", "10.99.0.1:80"); return }); err != nil {
		t.Fatal(err)
	}
	after.Close()

	find := func(local net.Addr, dumped bool) (Entry, bool) {
		src := netip.MustParseAddrPort(local.String())
		for _, e := range entries() {
			if e.Original.Src == src && e.Dumped == dumped && e.Type == EntryNew {
				return e, true
			}
		}
		return Entry{}, false
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, ok1 := find(before.LocalAddr(), true)
		_, ok2 := find(after.LocalAddr(), false)
		if ok1 && ok2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entries missing: dumped=%v event=%v; got %+v", ok1, ok2, entries())
		}
		time.Sleep(20 * time.Millisecond)
	}
	e, _ := find(after.LocalAddr(), false)
	if e.Original.Dst != netip.MustParseAddrPort("10.99.0.1:80") {
		t.Errorf("original dst = %v", e.Original.Dst)
	}
	if e.Reply.Src != netip.MustParseAddrPort("127.0.0.1:8080") {
		t.Errorf("reply src = %v, want the DNAT target", e.Reply.Src)
	}
	if !e.DNAT || e.SNAT {
		t.Errorf("DNAT=%v SNAT=%v, want DNAT only", e.DNAT, e.SNAT)
	}
	if ps := e.PodSide(); ps.Dst != e.Reply.Src || ps.Src != e.Reply.Dst {
		t.Errorf("PodSide = %v", ps)
	}
	if l.Stats.Dumps.Load() != 1 || l.Stats.Overflows.Load() != 0 {
		t.Errorf("dumps=%d overflows=%d", l.Stats.Dumps.Load(), l.Stats.Overflows.Load())
	}
}

// Table reads the namespace's own entry count and the host-wide limit: a
// connection through the DNAT rule adds an entry that Table sees.
func TestTableStats(t *testing.T) {
	ns := natNetns(t)
	l := New(Config{Netns: ns}, nil)
	before, err := l.Table()
	if err != nil {
		t.Fatal(err)
	}
	if before.Max == 0 {
		t.Errorf("nf_conntrack_max not reported: %+v", before)
	}
	var ln net.Listener
	if err := netns.Do(ns, func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:8080"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var c net.Conn
	if err := netns.Do(ns, func() (err error) { c, err = net.Dial("tcp4", "10.99.0.1:80"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	after, err := l.Table()
	if err != nil {
		t.Fatal(err)
	}
	if after.Entries < before.Entries+1 {
		t.Errorf("entries %d after a new DNATed connection, %d before", after.Entries, before.Entries)
	}
	if after.Drops() != 0 {
		t.Errorf("drops %d in a fresh namespace with one connection", after.Drops())
	}
}

// TestPortRemapIsNotSNAT: the kernel's own clash remap is not SNAT. A
// socket from 127.0.0.1:P to the DNAT target directly owns the reply tuple
// 8080 → P; a second socket from the same 127.0.0.1:P through the DNAT
// rule would need that reply tuple too, so nf_nat rewrites its source port.
// The server sees the client's address with another port: the entry is a
// DNAT with a port remap, and the client's address is not lost (SNAT false).
// This is what a client reusing a port towards one pod through two Service
// addresses (NodePort and LoadBalancer, say) gets on a real node.
func TestPortRemapIsNotSNAT(t *testing.T) {
	ns := natNetns(t)
	seen := make(chan netip.AddrPort, 2)
	var ln net.Listener
	if err := netns.Do(ns, func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:8080"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			seen <- netip.MustParseAddrPort(c.RemoteAddr().String())
			defer c.Close() // held until the test ends: the first entry must stay
		}
	}()

	_, entries := runListener(t, ns)

	// Both sockets bind the same source: SO_REUSEADDR lets two
	// non-listening TCP sockets share it.
	reuse := func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
		if err != nil {
			return err
		}
		return serr
	}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40123}
	var direct, viaNAT net.Conn
	if err := netns.Do(ns, func() (err error) {
		d := net.Dialer{LocalAddr: local, Control: reuse}
		if direct, err = d.Dial("tcp4", "127.0.0.1:8080"); err != nil {
			return err
		}
		viaNAT, err = d.Dial("tcp4", "10.99.0.1:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	defer viaNAT.Close()
	first, second := <-seen, <-seen
	if first != netip.MustParseAddrPort(local.String()) {
		t.Fatalf("the direct connection's server saw %v, want %v", first, local)
	}
	if second.Addr() != first.Addr() || second.Port() == first.Port() {
		t.Fatalf("the kernel did not remap the clashing port: server saw %v", second)
	}

	src := netip.MustParseAddrPort(local.String())
	var e Entry
	deadline := time.Now().Add(5 * time.Second)
	for found := false; !found; {
		for _, g := range entries() {
			if g.Type == EntryNew && g.Original.Src == src && g.Original.Dst == netip.MustParseAddrPort("10.99.0.1:80") {
				e, found = g, true
			}
		}
		if !found && time.Now().After(deadline) {
			t.Fatalf("no entry for %v → 10.99.0.1:80; got %+v", src, entries())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !e.DNAT || e.SNAT || !e.PortRemap {
		t.Errorf("DNAT=%v SNAT=%v PortRemap=%v, want DNAT and a port remap, no SNAT", e.DNAT, e.SNAT, e.PortRemap)
	}
	if ps := e.PodSide(); ps.Src != second {
		t.Errorf("pod side source %v, want what the server saw, %v", ps.Src, second)
	}
}
