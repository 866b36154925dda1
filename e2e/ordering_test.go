package e2e

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/testbed"
)

// streamItem is one recorded event and when the replay delivers it.
type streamItem struct {
	at   uint64 // CLOCK_MONOTONIC ns of delivery
	sock *capture.Event
	nat  *conntrack.Entry
}

// replayStreams feeds recorded socket events and NAT entries into a fresh
// flow.Table in delivery order, advancing its clock between them, as the
// agent would have had each stream been late by the given function.
// Order within each stream is kept: the ring buffer and the netlink
// socket are each FIFO, only their relative lag varies.
func replayStreams(t *testing.T, node string, socks []capture.Event, nats []conntrack.Entry,
	sockAt, natAt func(ts uint64) uint64) ([]flow.Connection, *flow.Table) {
	t.Helper()
	var items []streamItem
	for i := range socks {
		items = append(items, streamItem{at: sockAt(socks[i].TimeNs), sock: &socks[i]})
	}
	for i := range nats {
		e := nats[i]
		e.TimeNs = natAt(e.TimeNs) // the agent stamps an entry when it reads it
		items = append(items, streamItem{at: e.TimeNs, nat: &e})
	}
	sort.SliceStable(items, func(a, b int) bool { return items[a].at < items[b].at })
	var out []flow.Connection
	tb := flow.NewTable(flow.Config{Node: node, JoinWait: time.Second}, capture.NewClock(), func(c *flow.Connection) {
		out = append(out, *c)
	})
	var last uint64
	for _, it := range items {
		tb.Tick(it.at)
		if it.sock != nil {
			tb.Socket(it.sock)
		} else {
			tb.NAT(it.nat)
		}
		last = it.at
	}
	tb.Tick(last + uint64(3*time.Second))
	tb.Flush()
	return out, tb
}

// TestEventOrderingSkew: socket events and conntrack entries recorded from
// the real kernel (the client pod on node1 dials the ClusterIP; kube-proxy
// style DNAT picks pods on node1 and node2) are replayed into the join
// table with one stream late relative to the other: conntrack 800 ms late,
// the ring buffer 800 ms late, the conntrack reader stalled for 800 ms
// mid-traffic, and every entry delivered twice (event, then a resync
// dump). Every variant must give exactly one client record per connection
// joined with its own NAT entry, exactly one joined server record for
// connections to node1's pods, and no forward records. A lag beyond
// JoinWait (1.5 s) is replayed too and its cost is asserted: the server
// records lose their join and the entries turn into forward records.
func TestEventOrderingSkew(t *testing.T) {
	needCluster(t)
	cl := upCluster(t, "lbpord", testbed.ModeIPTables, testbed.PolicyCluster)
	n1 := cl.Node(1)
	ours := map[uint32]bool{}
	for _, ns := range []string{n1.Netns, cl.ClientPod.Netns} {
		ino, err := netns.Inode(ns)
		if err != nil {
			t.Fatal(err)
		}
		ours[ino] = true
	}
	for _, p := range cl.Pods {
		if p.Node == n1 {
			ino, err := netns.Inode(p.Netns)
			if err != nil {
				t.Fatal(err)
			}
			ours[ino] = true
		}
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	capt, err := capture.Open(capture.Config{}, log)
	if err != nil {
		t.Fatalf("open capture: %v", err)
	}
	defer capt.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var socks []capture.Event
	var nats []conntrack.Entry
	var wg sync.WaitGroup
	wg.Go(func() {
		err := capt.Run(ctx, func(e *capture.Event) {
			if ours[e.Netns] && e.Type != capture.EventRequest {
				mu.Lock()
				socks = append(socks, *e)
				mu.Unlock()
			}
		}, func(err error) { t.Errorf("decode: %v", err) })
		if err != nil {
			t.Errorf("capture: %v", err)
		}
	})
	ct := conntrack.New(conntrack.Config{Netns: n1.Netns}, log)
	wg.Go(func() {
		if err := ct.Run(ctx, func(e *conntrack.Entry) {
			if !e.Dumped && e.Type == conntrack.EntryNew {
				mu.Lock()
				nats = append(nats, *e)
				mu.Unlock()
			}
		}); err != nil {
			t.Errorf("conntrack: %v", err)
		}
	})
	time.Sleep(300 * time.Millisecond) // subscribed and dumped

	web := cl.Web()
	const n = 12
	var results []testbed.Result
	for i := range n {
		r := cl.Request(context.Background(), cl.ClientPod.Netns, web.ClusterAddr(), 50+i, 100+i*10)
		if r.Err != nil {
			t.Fatalf("request %d: %v", i, r.Err)
		}
		results = append(results, r)
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // last closes and entries delivered
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("recorded %d socket events and %d NAT entries for %d connections", len(socks), len(nats), n)

	podAddr := map[string]netip.AddrPort{}
	onN1 := map[string]bool{}
	for _, p := range cl.Pods {
		podAddr[p.Name] = netip.AddrPortFrom(p.IP, p.Port)
		onN1[p.Name] = p.Node == n1
	}
	check := func(t *testing.T, recs []flow.Connection) {
		t.Helper()
		for _, r := range results {
			var cli, srv []flow.Connection
			for _, c := range recs {
				switch {
				case c.Role == flow.RoleClient && c.PodSrc == r.Local:
					cli = append(cli, c)
				case c.Role == flow.RoleServer && c.PodSrc == r.SeenRemote && c.PodDst == podAddr[r.Pod]:
					srv = append(srv, c)
				}
			}
			if len(cli) != 1 {
				t.Errorf("%v (pod %s): %d client records, want 1", r.Local, r.Pod, len(cli))
			} else if c := cli[0]; c.NAT == nil || c.NAT.Original.Src != r.Local || c.NAT.Original.Dst != r.Remote ||
				c.NAT.Reply.Src != podAddr[r.Pod] || c.Target != r.Remote || c.PodDst != podAddr[r.Pod] {
				t.Errorf("%v (pod %s): client record not joined with its NAT: %+v NAT %+v", r.Local, r.Pod, c, c.NAT)
			}
			want := 0
			if onN1[r.Pod] {
				want = 1
			}
			if len(srv) != want {
				t.Errorf("%v (pod %s on node1: %v): %d server records, want %d", r.Local, r.Pod, onN1[r.Pod], len(srv), want)
			} else if want == 1 && (srv[0].NAT == nil || srv[0].NAT.Original.Src != r.Local || srv[0].Target != r.Remote) {
				t.Errorf("%v (pod %s): server record not joined with its NAT: %+v", r.Local, r.Pod, srv[0])
			}
		}
		for _, c := range recs {
			if c.Role == flow.RoleForward {
				t.Errorf("forward record although every translation had a local socket: %+v", c)
			}
		}
	}
	const lag = uint64(800 * time.Millisecond)
	same := func(ts uint64) uint64 { return ts }
	late := func(ts uint64) uint64 { return ts + lag }
	var first uint64
	for _, e := range socks {
		if first == 0 || e.TimeNs < first {
			first = e.TimeNs
		}
	}
	stallFrom := first + uint64(100*time.Millisecond)
	stalled := func(ts uint64) uint64 { // the conntrack reader paused for lag
		if ts >= stallFrom && ts < stallFrom+lag {
			return stallFrom + lag
		}
		return ts
	}
	twice := append(append([]conntrack.Entry(nil), nats...), nats...)
	for i := len(nats); i < len(twice); i++ {
		twice[i].Dumped = true
	}
	cases := []struct {
		name           string
		nats           []conntrack.Entry
		sockAt, natAt  func(uint64) uint64
		wantDuplicates int
	}{
		{"as recorded", nats, same, same, 0},
		{"conntrack 800ms late", nats, same, late, 0},
		{"ring buffer 800ms late", nats, late, same, 0},
		{"conntrack reader stalled 800ms", nats, same, stalled, 0},
		{"every entry twice (event + dump)", twice, same, same, len(nats)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs, tb := replayStreams(t, n1.Name, socks, tc.nats, tc.sockAt, tc.natAt)
			check(t, recs)
			if d := int(tb.Stats.DuplicateNAT.Load()); d != tc.wantDuplicates {
				t.Errorf("%d duplicate NAT entries counted, want %d", d, tc.wantDuplicates)
			}
			if nat, open, pend := tb.Sizes(); open != 0 || pend != 0 {
				t.Errorf("after the replay: %d NAT entries, %d open sockets, %d pending records; want no open or pending", nat, open, pend)
			}
		})
	}
	// Beyond JoinWait the join is lost, and that is visible, not silent:
	// server sockets close before their entry arrives and are emitted
	// without NAT (no_nat), and the entries, claimed by no open socket,
	// become forward records.
	t.Run("conntrack 1.5s late (beyond JoinWait)", func(t *testing.T) {
		tooLate := func(ts uint64) uint64 { return ts + uint64(1500*time.Millisecond) }
		recs, tb := replayStreams(t, n1.Name, socks, nats, same, tooLate)
		var unjoined int
		for _, c := range recs {
			if c.Role != flow.RoleForward && c.NAT == nil {
				unjoined++
			}
		}
		if unjoined == 0 || int(tb.Stats.NoNAT.Load()) != unjoined {
			t.Errorf("%d records without NAT, no_nat counter %d: a lag beyond JoinWait must lose joins and count them", unjoined, tb.Stats.NoNAT.Load())
		}
		t.Logf("lag 1.5s > JoinWait 1s: %d of %d records lost their join (no_nat=%d), %d forward records",
			unjoined, len(recs), tb.Stats.NoNAT.Load(), tb.Stats.Forwarded.Load())
	})
}
