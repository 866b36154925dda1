package conntrack

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/netns"
)

// attr encodes one netlink attribute (nested ones get NLA_F_NESTED).
func attr(typ uint16, nested bool, v []byte) []byte {
	b := make([]byte, 4, 4+len(v)+3)
	binary.NativeEndian.PutUint16(b, uint16(4+len(v)))
	if nested {
		typ |= unix.NLA_F_NESTED
	}
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// tupleAttr encodes a CTA_TUPLE_* payload the way the kernel does.
func tupleAttr(typ uint16, src, dst netip.AddrPort, proto uint8) []byte {
	ip := cat(attr(ctaIPv4Src, false, src.Addr().AsSlice()), attr(ctaIPv4Dst, false, dst.Addr().AsSlice()))
	if src.Addr().Is6() {
		ip = cat(attr(ctaIPv6Src, false, src.Addr().AsSlice()), attr(ctaIPv6Dst, false, dst.Addr().AsSlice()))
	}
	pr := cat(attr(ctaProtoNum, false, []byte{proto}), attr(ctaProtoSrcPort, false, be16(src.Port())), attr(ctaProtoDstPort, false, be16(dst.Port())))
	return attr(typ, true, cat(attr(ctaTupleIP, true, ip), attr(ctaTupleProto, true, pr)))
}

// dnatPayload is the payload (after the netlink header) of a NEW event for
// client → VIP translated to pod.
func dnatPayload(client, vip, pod netip.AddrPort, proto uint8) []byte {
	return cat([]byte{unix.AF_INET, 0, 0, 0},
		tupleAttr(ctaTupleOrig, client, vip, proto),
		tupleAttr(ctaTupleReply, pod, client, proto),
		attr(3, false, []byte{0, 0, 1, 0x8e}), // CTA_STATUS, skipped
		attr(ctaID, false, binary.BigEndian.AppendUint32(nil, 0xdeadbeef)))
}

var (
	tClient = netip.MustParseAddrPort("10.244.1.200:40000")
	tVIP    = netip.MustParseAddrPort("10.96.0.10:80")
	tPod    = netip.MustParseAddrPort("10.244.2.10:8080")
)

func TestDecodeEvent(t *testing.T) {
	var e Entry
	use, err := decodeEvent(msgCTNew, dnatPayload(tClient, tVIP, tPod, unix.IPPROTO_TCP), 7, &e)
	want := Entry{Type: EntryNew, ID: 0xdeadbeef, Original: Tuple{Src: tClient, Dst: tVIP}, Reply: Tuple{Src: tPod, Dst: tClient}, DNAT: true, TimeNs: 7, Proto: ProtoTCP}
	if err != nil || !use || e != want {
		t.Fatalf("got %+v use=%v err=%v, want %+v", e, use, err, want)
	}
	if use, err := decodeEvent(msgCTDelete, dnatPayload(tClient, tVIP, tPod, unix.IPPROTO_TCP), 7, &e); !use || err != nil || e.Type != EntryDestroy {
		t.Errorf("destroy: %+v use=%v err=%v", e, use, err)
	}
	// UDP translations are used too (flow.UDPTable joins them), marked as UDP.
	wantUDP := want
	wantUDP.Proto = ProtoUDP
	if use, err := decodeEvent(msgCTNew, dnatPayload(tClient, tVIP, tPod, unix.IPPROTO_UDP), 7, &e); !use || err != nil || e != wantUDP {
		t.Errorf("UDP entry: %+v use=%v err=%v, want %+v", e, use, err, wantUDP)
	}
	if use, err := decodeEvent(msgCTNew, dnatPayload(tClient, tVIP, tPod, 132 /* SCTP */), 7, &e); use || err != nil {
		t.Errorf("SCTP entry used: %v %v", use, err)
	}
	if use, err := decodeEvent(msgCTNew, dnatPayload(tClient, tVIP, tVIP, unix.IPPROTO_TCP)[:0], 7, &e); use || err == nil {
		t.Errorf("empty payload: use=%v err=%v", use, err)
	}
	full := dnatPayload(tClient, tVIP, tPod, unix.IPPROTO_TCP)
	// A message cut anywhere either fails, is unusable, or (cut at an
	// attribute boundary after both tuples) still carries the right tuples:
	// never a wrong translation.
	for n := nfgenLen; n < len(full); n++ {
		use, err := decodeEvent(msgCTNew, full[:n], 7, &e)
		if use && (err != nil || e.Original != want.Original || e.Reply != want.Reply) {
			t.Errorf("truncated to %d of %d bytes: decoded as %+v (err %v)", n, len(full), e, err)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { decodeEvent(msgCTNew, full, 7, &e) }); allocs != 0 {
		t.Errorf("decodeEvent allocates %v times per event", allocs)
	}
}

// TestDecodeMatchesTiMo decodes real kernel events (connections DNATed by
// a real nftables rule) with decodeEvent and with ti-mo/conntrack's general
// decoder, which the dump still uses, and requires the same entries.
func TestDecodeMatchesTiMo(t *testing.T) {
	ns := natNetns(t)
	s, err := openEvents(ns, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	serveAndClose(t, ns)
	const conns = 5
	for range conns {
		if err := netns.Do(ns, func() error {
			c, err := net.Dial("tcp4", "10.99.0.1:80")
			if err == nil {
				c.Close()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Destroy the entries too, so DELETE messages are compared as well.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var c *ct.Conn
	if err := netns.Do(ns, func() (err error) { c, err = ct.Dial(nil); return }); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	compared := map[EntryType]int{}
	for ctx.Err() == nil && (compared[EntryNew] < conns || compared[EntryDestroy] < conns) {
		n, _, err := unix.Recvfrom(s.fd, s.buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for b := s.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b))
			var m netlink.Message
			if err := m.UnmarshalBinary(b[:l]); err != nil {
				t.Fatal(err)
			}
			var mine Entry
			use, derr := decodeEvent(binary.NativeEndian.Uint16(b[4:]), b[unix.NLMSG_HDRLEN:l], 1, &mine)
			var ev ct.Event
			if uerr := ev.Unmarshal(m); uerr != nil || ev.Flow == nil {
				t.Fatalf("ti-mo could not decode a kernel event: %v", uerr)
			}
			typ := EntryNew
			if ev.Type == ct.EventDestroy {
				typ = EntryDestroy
			}
			var theirs Entry
			theirUse := fromFlow(ev.Flow, typ, &theirs)
			theirs.TimeNs = 1
			if derr != nil || use != theirUse || (use && mine != theirs) {
				t.Errorf("decodeEvent %+v (use %v, err %v); ti-mo %+v (use %v)", mine, use, derr, theirs, theirUse)
			}
			if use {
				compared[typ]++
			}
			b = b[min(len(b), (l+3)&^3):]
		}
	}
	if compared[EntryNew] < conns || compared[EntryDestroy] < conns {
		t.Fatalf("compared %d new and %d destroy events, want %d each", compared[EntryNew], compared[EntryDestroy], conns)
	}
}

// FuzzDecodeEvent: hostile or corrupt netlink bytes never panic or read out
// of bounds, and a usable entry always has both tuples.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(uint16(msgCTNew), dnatPayload(tClient, tVIP, tPod, unix.IPPROTO_TCP))
	f.Add(uint16(msgCTDelete), dnatPayload(netip.MustParseAddrPort("[fd00::1]:5"), netip.MustParseAddrPort("[fd00::2]:80"), netip.MustParseAddrPort("[fd00::3]:8080"), unix.IPPROTO_TCP))
	f.Add(uint16(msgCTNew), []byte{2, 0, 0, 0, 8, 0, 0x81, 0x80, 4, 0, 1, 0})
	f.Fuzz(func(t *testing.T, typ uint16, b []byte) {
		var e Entry
		use, err := decodeEvent(typ, b, 1, &e)
		if use && (err != nil || !e.Original.Src.IsValid() || !e.Original.Dst.IsValid() || !e.Reply.Src.IsValid() || !e.Reply.Dst.IsValid()) {
			t.Fatalf("usable entry %+v with err %v", e, err)
		}
	})
}

// TestOverflowResyncs: when the consumer stalls and the kernel drops events
// (a tiny socket buffer, a burst of 300 connections), the listener counts
// the overflow, subscribes again and dumps the table, so every connection's
// translation still reaches the join.
func TestOverflowResyncs(t *testing.T) {
	ns := natNetns(t)
	serveAndClose(t, ns)
	l := New(Config{Netns: ns, ReadBuffer: 4096}, nil)
	var mu sync.Mutex
	seen := map[netip.AddrPort]bool{}
	stall := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- l.Run(ctx, func(e *Entry) {
			if !e.Dumped && e.Type == EntryNew {
				<-stall // the first events wait until the burst is over
			}
			mu.Lock()
			seen[e.Original.Src] = true
			mu.Unlock()
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	time.Sleep(200 * time.Millisecond) // subscribed, start-up dump done

	const conns = 300
	var srcs []netip.AddrPort
	if err := netns.Do(ns, func() error {
		for range conns {
			c, err := net.Dial("tcp4", "10.99.0.1:80")
			if err != nil {
				return err
			}
			srcs = append(srcs, netip.MustParseAddrPort(c.LocalAddr().String()))
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	close(stall)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for _, s := range srcs {
			if !seen[s] {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d translations never delivered (overflows %d, dumps %d)", missing, conns, l.Stats.Overflows.Load(), l.Stats.Dumps.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l.Stats.Overflows.Load() == 0 || l.Stats.Dumps.Load() < 2 {
		t.Errorf("overflows %d, dumps %d: the burst did not overflow a 4 KiB buffer, so the resync was not exercised",
			l.Stats.Overflows.Load(), l.Stats.Dumps.Load())
	}
	t.Logf("%d connections: overflows %d, dumps %d, events %d", conns, l.Stats.Overflows.Load(), l.Stats.Dumps.Load(), l.Stats.Events.Load())
}
