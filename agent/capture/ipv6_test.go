package capture

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/netns"
)

// sh runs one command and fails the test with its output.
func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// IPv6 refusals, both kinds: a closed port's RST (tcp_send_reset on an IPv6
// SYN) and an ip6tables REJECT's ICMPv6 port unreachable (the ICMPv6 route
// lookup paired with the SYN's netfilter drop), each reported once with the
// SYN's addresses and the refusing namespace.
func TestCaptureRefusedIPv6(t *testing.T) {
	_, col := startCapture(t)
	// Two namespaces on a veth: the client "c" and the refusing "r".
	c, r := "lbpcap6-c", "lbpcap6-r"
	for _, ns := range []string{c, r} {
		exec.Command("ip", "netns", "del", ns).Run()
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	sh(t, "ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", r)
	for ns, addr := range map[string]string{c: "fd00:cab::1/64", r: "fd00:cab::2/64"} {
		sh(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.eth0.accept_dad=0",
			"net.ipv6.icmp.ratelimit=0")
		sh(t, "ip", "-n", ns, "addr", "add", addr, "dev", "eth0", "nodad")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	sh(t, "ip", "netns", "exec", r, "ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", "8081", "-j", "REJECT")
	rIno, err := netns.Inode("/var/run/netns/" + r)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(port uint16) {
		err := netns.Do("/var/run/netns/"+c, func() error {
			d := net.Dialer{Timeout: 3 * time.Second}
			conn, err := d.Dial("tcp6", netip.AddrPortFrom(netip.MustParseAddr("fd00:cab::2"), port).String())
			if err == nil {
				conn.Close()
				t.Errorf("dial port %d succeeded", port)
			} else if !strings.Contains(err.Error(), "refused") {
				t.Errorf("dial port %d: %v, want connection refused", port, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, port := range []uint16{8080, 8081} { // closed (RST), rejected (ICMPv6)
		dial(port)
		ref := waitFor(t, col, "refused", func(e Event) bool {
			return e.Type == EventRefused && e.Local == netip.AddrPortFrom(netip.MustParseAddr("fd00:cab::2"), port)
		})
		if ref.Remote.Addr() != netip.MustParseAddr("fd00:cab::1") || ref.Netns != rIno || ref.Err != syscall.ECONNREFUSED {
			t.Errorf("port %d refusal: remote %v netns %d err %v; want from fd00:cab::1 in netns %d, ECONNREFUSED",
				port, ref.Remote, ref.Netns, ref.Err, rIno)
		}
	}
}
