package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/netns"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/nodeagents"
)

// fillLimit bounds how many entries fillConntrack may insert: ~400 bytes of
// kernel memory each, so the default nf_conntrack_max of a small machine
// (262144) costs ~100 MiB, freed with the namespace.
const fillLimit = 1 << 19

// setNetnsSysctl writes a per-namespace sysctl inside nsPath and restores it
// at cleanup (the namespace is deleted at the end anyway, but a test that
// reuses it must not inherit the change).
func setNetnsSysctl(t *testing.T, nsPath, key, value string) {
	t.Helper()
	file := filepath.Join("/proc/sys", key)
	var old []byte
	err := netns.Do(nsPath, func() error {
		var err error
		if old, err = os.ReadFile(file); err != nil {
			return err
		}
		return os.WriteFile(file, []byte(value), 0o644)
	})
	if err != nil {
		t.Fatalf("set %s=%s in %s: %v", key, value, nsPath, err)
	}
	t.Cleanup(func() {
		_ = netns.Do(nsPath, func() error { return os.WriteFile(file, old, 0o644) })
	})
}

// fillConntrack fills the conntrack table of the namespace at nsPath to
// nf_conntrack_max with entries the kernel may not evict: assured,
// ESTABLISHED, one hour to live. Only a namespace's own entry count is
// compared with the (host-wide, read-only in a child namespace)
// nf_conntrack_max, so filling one test namespace touches neither the host
// nor the other namespaces, and nothing global needs restoring. It returns
// nf_conntrack_max.
func fillConntrack(t *testing.T, nsPath string) uint64 {
	t.Helper()
	var c *ct.Conn
	if err := netns.Do(nsPath, func() (err error) { c, err = ct.Dial(nil); return err }); err != nil {
		t.Fatalf("dial ctnetlink in %s: %v", nsPath, err)
	}
	defer c.Close()
	g, err := c.StatsGlobal()
	if err != nil {
		t.Fatalf("conntrack stats: %v", err)
	}
	if g.MaxEntries == 0 || g.MaxEntries > fillLimit {
		testenv.Unavailable(t, fmt.Sprintf("nf_conntrack_max is %d; filling more than %d entries would cost too much memory", g.MaxEntries, fillLimit))
	}
	start := time.Now()
	dst := netip.MustParseAddr("100.127.0.1")
	inserted := 0
	for i := 0; ; i++ {
		src := netip.AddrFrom4([4]byte{100, 64, byte(i >> 14), 1})
		// CONFIRMED must be passed: the kernel sets it on a created entry and
		// refuses (EBUSY) a status that would clear it.
		f := ct.NewFlow(syscall.IPPROTO_TCP, ct.StatusAssured|ct.StatusSeenReply|ct.StatusConfirmed, src, dst, uint16(1024+i&0x3fff), 80, 3600, 0)
		f.ProtoInfo.TCP = &ct.ProtoInfoTCP{State: 3} // TCP_CONNTRACK_ESTABLISHED
		if err := c.Create(f); err != nil {
			if errors.Is(err, syscall.ENOMEM) {
				break // the table is full: nothing left to evict
			}
			t.Fatalf("insert conntrack entry %d: %v", i, err)
		}
		inserted++
		if inserted > fillLimit {
			t.Fatalf("inserted %d entries and the table is still not full", inserted)
		}
	}
	g, err = c.StatsGlobal()
	if err != nil {
		t.Fatalf("conntrack stats: %v", err)
	}
	t.Logf("filled %s: inserted %d entries in %v; table %d of %d", filepath.Base(nsPath), inserted,
		time.Since(start).Round(time.Millisecond), g.Entries, g.MaxEntries)
	if g.Entries < g.MaxEntries {
		t.Fatalf("table has %d entries after the kernel refused an insert, max %d", g.Entries, g.MaxEntries)
	}
	return uint64(g.MaxEntries)
}

// TestConntrackFull: node1's conntrack table is full while traffic enters
// through node2's NodePort (externalTrafficPolicy Cluster: DNAT + SNAT) and
// the client pod on node1 dials the ClusterIP. The kernel drops every SYN
// that needs a new entry on node1, before any socket or NAT entry exists.
// What must hold: the agents keep running; connections that got through
// (to pod-c on node2) are recorded with their NAT join; connections node1
// dropped are failed client records (outcome timeout, no NAT) where the
// client is on a node, node2's truthful forward record where node2 DNATed
// them, and never server records; node1's exported
// lbpath.node.conntrack.drops rose by at least the number of failed
// connections and its entries gauge shows the table full.
func TestConntrackFull(t *testing.T) {
	needCluster(t)
	cl := upCluster(t, "lbpctf", testbed.ModeIPTables, testbed.PolicyCluster)
	full, other := cl.Node(1), cl.Node(2)
	// The client pod's kernel gives up a SYN after one retransmission
	// (~3 s): the connect fails with ETIMEDOUT from the kernel, not from a
	// timer in the test.
	setNetnsSysctl(t, cl.ClientPod.Netns, "net/ipv4/tcp_syn_retries", "1")
	max := fillConntrack(t, full.Netns)

	sink, err := otlpsink.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Stop)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	set, err := nodeagents.Start(cl, nodeagents.Options{
		Flow:   flow.Config{JoinWait: 500 * time.Millisecond},
		Export: &exporter.Config{Endpoint: sink.GRPCAddr, Insecure: true, MetricInterval: 500 * time.Millisecond, NoTraces: true},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := set.Stop(); err != nil {
			t.Errorf("agents: %v", err)
		}
	})
	before, err := set.Agents[0].ConntrackTable()
	if err != nil {
		t.Fatalf("read node1 conntrack table: %v", err)
	}
	if before.Entries < max {
		t.Fatalf("node1 table %d of %d entries before the traffic: not full", before.Entries, max)
	}

	web := cl.Web()
	ctx := context.Background()
	const external, fromPod = 15, 4
	results := make([]testbed.Result, external+fromPod)
	var wg sync.WaitGroup
	for i := range external {
		wg.Go(func() {
			// 2 s: one SYN retransmission; a connection to pod-c needs a
			// few milliseconds.
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			results[i] = cl.Request(rctx, cl.Client.Netns, web.NodePortAddr(other), 100, 1000)
		})
	}
	for i := range fromPod {
		wg.Go(func() {
			// No dial timeout of our own (testbed.DialFrom has one): the
			// kernel's SYN retries decide.
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			r := testbed.Result{Start: time.Now()}
			r.Err = netns.Do(cl.ClientPod.Netns, func() error {
				var d net.Dialer
				c, err := d.DialContext(rctx, "tcp4", web.ClusterAddr().String())
				if err == nil {
					c.Close()
				}
				return err
			})
			results[external+i] = r
		})
	}
	wg.Wait()

	var okExt []expectation
	failedExt, failedPod := 0, 0
	for i, r := range results {
		switch {
		case r.Err == nil && i < external:
			if r.Pod != "pod-c" {
				t.Errorf("request %d answered by %s, which runs on the full node", i, r.Pod)
			}
			okExt = append(okExt, expectation{res: r, entryNode: other.Name, snat: true})
		case r.Err == nil:
			t.Errorf("client pod connection %d got through node1's full table", i)
		case i < external:
			failedExt++
		default:
			if !errors.Is(r.Err, syscall.ETIMEDOUT) {
				t.Errorf("client pod connection %d: %v, want the kernel's ETIMEDOUT", i, r.Err)
			}
			failedPod++
		}
	}
	t.Logf("external via %s: %d ok, %d failed; client pod via ClusterIP: %d failed", other.Name, len(okExt), failedExt, failedPod)
	if len(okExt) == 0 || failedExt == 0 {
		t.Fatalf("want both outcomes through %s's NodePort (pod-c on %s gets through, pods on %s do not): %d ok, %d failed",
			other.Name, other.Name, full.Name, len(okExt), failedExt)
	}

	// Connections that got through: recorded with their NAT join.
	ms := waitMerged(t, set, okExt)
	for _, e := range okExt {
		if m, ok := findMerged(ms, e.res); ok {
			checkConnection(t, cl, m, e)
		}
	}

	podIPs := map[netip.Addr]string{}
	for _, p := range cl.Pods {
		podIPs[p.IP] = p.Node.Name
	}
	var fwd, podTimeouts int
	// The wait ends as soon as every record is in; 15 s, not 5, because in
	// the whole suite's run 3 of the 4 client records were not in after 5 s
	// (alone, 5 of 5 runs had them at once). Not an allowance on what is
	// checked: missing or wrong records still fail.
	deadline := time.Now().Add(15 * time.Second)
	for {
		fwd, podTimeouts = 0, 0
		for _, r := range set.Records() {
			switch {
			case r.Role == flow.RoleClient && r.Node == full.Name && r.Target == web.ClusterAddr():
				if r.Outcome != flow.OutcomeTimeout || r.NAT != nil || r.Retransmits == 0 || r.Error != "ETIMEDOUT" {
					t.Errorf("client pod's dropped connection recorded as %s (error %q, NAT %v, retransmits %d), want timeout, ETIMEDOUT, no NAT, retransmits",
						r.Outcome, r.Error, r.NAT, r.Retransmits)
				}
				podTimeouts++
			case r.Role == flow.RoleForward && r.Node == other.Name && r.NAT != nil && r.NAT.Original.Dst == web.NodePortAddr(other):
				if podIPs[r.PodDst.Addr()] == full.Name {
					fwd++
				}
			case r.Role == flow.RoleServer && r.Outcome != flow.OutcomeOK:
				t.Errorf("server record with outcome %s: %+v", r.Outcome, r)
			case r.PodSrc.Addr() == testbed.ClientPodIP && r.Role != flow.RoleClient:
				t.Errorf("record of a dropped client pod connection on %s as %s: %+v", r.Node, r.Role, r)
			}
		}
		if (fwd >= failedExt && podTimeouts >= failedPod) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if podTimeouts != failedPod {
		t.Errorf("%d client records of the client pod's timed-out connections, want %d", podTimeouts, failedPod)
	}
	// node2 did translate the external connections it sent to node1's
	// pods: its forward records are the truth as node2 saw it.
	if fwd != failedExt {
		t.Errorf("%d forward records on %s towards pods on %s, want one per failed external connection (%d)", fwd, other.Name, full.Name, failedExt)
	}
	for _, r := range set.Records() {
		if r.Role == flow.RoleServer && r.Node == full.Name && r.Start.After(results[0].Start) {
			t.Errorf("server record on the full node during the test: %+v", r)
		}
	}

	after, err := set.Agents[0].ConntrackTable()
	if err != nil {
		t.Fatalf("read node1 conntrack table: %v", err)
	}
	failed := uint64(failedExt + failedPod)
	t.Logf("node1 conntrack: entries %d of %d, drop %d -> %d, early_drop %d, insert_failed %d (%d connections failed)",
		after.Entries, after.Max, before.Drop, after.Drop, after.EarlyDrop, after.InsertFailed, failed)
	if after.Drop-before.Drop < failed {
		t.Errorf("node1 conntrack drop counter rose by %d, fewer than the %d failed connections", after.Drop-before.Drop, failed)
	}

	// The agent exports it: the last exported points of node1.
	deadline = time.Now().Add(5 * time.Second)
	for {
		var drops, entries float64
		for _, p := range sink.Points() {
			if p.Resource["k8s.node.name"] != full.Name {
				continue
			}
			switch p.Metric {
			case exporter.MetricConntrackDrops:
				if p.Attrs["lbpath.reason"] == "drop" {
					drops = p.Value
				}
			case exporter.MetricConntrackEntries:
				entries = p.Value
			}
		}
		if drops >= float64(before.Drop+failed) && entries >= float64(max) {
			t.Logf("exported for %s: %s{drop}=%v, %s=%v", full.Name, exporter.MetricConntrackDrops, drops, exporter.MetricConntrackEntries, entries)
			break
		}
		if time.Now().After(deadline) {
			names := map[string]bool{}
			for _, p := range sink.Points() {
				names[fmt.Sprint(p.Metric, p.Resource["k8s.node.name"], p.Attrs, p.Value)] = true
			}
			t.Logf("points: %v", names)
			t.Errorf("exported for %s: drops %v (want >= %d), entries %v (want %d)", full.Name, drops, before.Drop+failed, entries, max)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}
