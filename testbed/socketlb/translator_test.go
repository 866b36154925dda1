package socketlb

import (
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/internal/testenv"
)

// TestTranslatorFamiliesAndUDP: in a fresh network namespace, the attached
// translator rewrites connect() to an IPv4 ClusterIP, an IPv6 ClusterIP
// and a v4-mapped IPv4 ClusterIP on an AF_INET6 socket, for TCP and for
// connected UDP, to the backend the kernel then reports as the socket's
// peer (getpeername), and counts each rewrite; a Service without backends
// and a namespace not allowed are left alone.
func TestTranslatorFamiliesAndUDP(t *testing.T) {
	testenv.Root(t)
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a process in a new netns: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ns := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/net"
	if out, err := exec.Command("nsenter", "--net="+ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	tr, err := Attach()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })

	vip4 := netip.MustParseAddrPort("10.96.7.7:80")
	vip6 := netip.MustParseAddrPort("[fd00:96::7]:80")
	empty := netip.MustParseAddrPort("10.96.7.8:80")
	err = netns.Do(ns, func() error {
		// Dialled before the namespace is allowed: untouched.
		if err := tr.SetService(UDP, vip4, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}); err != nil {
			return err
		}
		if got := peerAfterConnect(t, UDP, unix.AF_INET, vip4); got != vip4 {
			t.Errorf("a namespace not allowed was translated to %v", got)
		}
		if c, _ := tr.Counts(); c.All != 0 {
			t.Errorf("a namespace not allowed was translated: %+v", c)
		}
		if err := tr.AllowNetns(ns); err != nil {
			return err
		}
		for _, proto := range []Proto{TCP, UDP} {
			checkFamilies(t, tr, proto, vip4, vip6, empty)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.Counts()
	if err != nil {
		t.Fatal(err)
	}
	// Per transport: IPv4, IPv6 and v4-mapped were rewritten (two by connect6).
	if want := (Counts{All: 6, V6: 4, UDP: 3}); c != want {
		t.Errorf("counts %+v, want %+v", c, want)
	}
}

func checkFamilies(t *testing.T, tr *Translator, proto Proto, vip4, vip6, empty netip.AddrPort) {
	t.Helper()
	be4 := listen(t, proto, "127.0.0.1:0")
	be6 := listen(t, proto, "[::1]:0")
	for _, s := range []struct {
		vip netip.AddrPort
		be  []netip.AddrPort
	}{{vip4, []netip.AddrPort{be4}}, {vip6, []netip.AddrPort{be6}}, {empty, nil}} {
		if err := tr.SetService(proto, s.vip, s.be); err != nil {
			t.Fatal(err)
		}
		got, err := tr.Backends(proto, s.vip)
		if err != nil || len(got) != len(s.be) || (len(got) == 1 && got[0] != s.be[0]) {
			t.Fatalf("%s %v: map holds %v (%v), want %v", proto, s.vip, got, err, s.be)
		}
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(vip4.Addr().As16()), vip4.Port())
	for _, c := range []struct {
		family int
		dial   netip.AddrPort
		want   netip.AddrPort
	}{
		{unix.AF_INET, vip4, be4},
		{unix.AF_INET6, vip6, be6},
		{unix.AF_INET6, mapped, netip.AddrPortFrom(netip.AddrFrom16(be4.Addr().As16()), be4.Port())},
		{unix.AF_INET, empty, empty},
	} {
		if got := peerAfterConnect(t, proto, c.family, c.dial); got != c.want {
			t.Errorf("%s connect(%v): peer %v, want %v", proto, c.dial, got, c.want)
		}
	}
}

// peerAfterConnect connects a socket of family to dst and returns its
// peer; a TCP connect to the Service without backends is refused or
// unreachable, and its peer is what was dialled.
func peerAfterConnect(t *testing.T, proto Proto, family int, dst netip.AddrPort) netip.AddrPort {
	t.Helper()
	typ := unix.SOCK_STREAM
	if proto == UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: dst.Addr().As16(), Port: int(dst.Port())}
	if family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return dst // not translated: no route to the VIP in this namespace
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch p := peer.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), uint16(p.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(p.Addr), uint16(p.Port))
	}
	t.Fatalf("peer %T", peer)
	return netip.AddrPort{}
}

func listen(t *testing.T, proto Proto, addr string) netip.AddrPort {
	t.Helper()
	if proto == UDP {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().(*net.TCPAddr).AddrPort()
}
