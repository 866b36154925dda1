package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed"
)

// onOffSlot is one column of the on/off harness: no agent (argv nil), this
// tree's agent, the previous release's, or any agent command given in
// LBPATH_BENCH_PEER, each run in the agent's place.
type onOffSlot struct {
	name string
	argv []string
	// lbpath: an lbpath-agent, which says when it is running and is
	// stopped strictly (a non-zero exit fails the benchmark).
	lbpath bool
}

// slotRound is what one round of one slot measured.
type slotRound struct {
	wrk     wrkResult
	cpu     time.Duration // the agent's CPU during the wrk run
	peakKiB int64         // the agent's VmHWM at the end of the round
	bpf     ebpf.ProgramStats
	progs   map[string]ebpf.ProgramStats // bpf by program name
}

// slotStats gathers a slot's rounds.
type slotStats struct {
	rps, p50, cpuPer10k []float64
	peakKiB             int64
	bpf                 *slotRound // the stats round
	errors              []string
}

func (s *slotStats) add(r slotRound) {
	s.rps = append(s.rps, r.wrk.rps)
	s.p50 = append(s.p50, float64(r.wrk.p50))
	if r.wrk.requests > 0 && r.cpu > 0 {
		s.cpuPer10k = append(s.cpuPer10k, r.cpu.Seconds()*1e4/float64(r.wrk.requests))
	}
	s.peakKiB = max(s.peakKiB, r.peakKiB)
	if r.wrk.errors != "" {
		s.errors = append(s.errors, r.wrk.errors)
	}
}

// BenchmarkOverheadOnOff measures what an agent costs a real workload, the
// method of shared/notes/peers-measured-here.md: wrk -t2 -c32 from the
// external client's namespace to the LB IP, through the node's nftables
// DNAT + masquerade (Cluster policy), to two pods on that node running a Go
// HTTP server. In one run, rounds alternate between the slots (the order
// rotates each round, so drift hits all alike): no agent, this tree's agent,
// the previous release's (full mode: the latest v* tag, or
// LBPATH_BENCH_BASELINE=<ref>, built from a temporary git worktree), and
// LBPATH_BENCH_PEER if set (a shell command, run with exec in the agent's
// place; LBPATH_BENCH_NODE_NETNS names the node's namespace for it). Two
// workloads: kept-alive connections (the per-request path) and
// `Connection: close` (a new connection per request). Reported per slot:
// throughput and p50 on/off as ratios of medians, agent CPU-s per 10k
// requests (= connections for the second), peak RSS, and BPF ns per request
// from kernel.bpf_stats_enabled during one extra round (the stats add their
// own cost to every program run, so the ratio rounds run without them).
// LBPATH_BENCH_AA=1 adds a second no-agent slot: the method's own bias.
func BenchmarkOverheadOnOff(b *testing.B) {
	needCluster(b)
	if _, err := exec.LookPath("wrk"); err != nil {
		testenv.Unavailable(b, "wrk not installed (run scripts/setup.sh)")
	}
	cl, err := testbed.Up(context.Background(), testbed.Options{Prefix: "lbh", Mode: testbed.ModeNFTables,
		Policy: testbed.PolicyCluster, Nodes: 1, Pods: []testbed.PodSpec{{Name: "pod-a", Node: 1}, {Name: "pod-b", Node: 1}}})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Down()
	if err := cl.RouteLB(1); err != nil {
		b.Fatal(err)
	}
	// The pods' server closes first (Connection: close), so each pod holds
	// a TIME_WAIT socket for 60 s per connection, all from the node's one
	// masquerade address: at 4k connections/s that is more than the 64k
	// source ports, so the node's random SNAT port soon hits a TIME_WAIT
	// socket whose sequence check fails, the pod answers the SYN with the
	// old connection's ACK, the client resets and retransmits the SYN a
	// second later: 15-20 % of connections, throughput falling to a fifth
	// round after round whatever the slot. Without TIME_WAIT on the pods
	// (the socket closes at the same transition, FIN_WAIT2 -> CLOSE, so the
	// agents' hooks see the same events) rounds stay independent.
	for _, pod := range cl.Pods {
		if out, err := exec.Command("nsenter", "--net="+pod.Netns, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0").CombinedOutput(); err != nil {
			b.Fatalf("sysctl in %s: %v\n%s", pod.Name, err, out)
		}
	}
	sink, err := otlpsink.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Stop()
	sink.Discard()
	slots := onOffSlots(b, cl.Nodes[0].Netns, sink.GRPCAddr)
	rounds, round := 1, time.Second
	if fullScale() {
		rounds, round = 5, 8*time.Second
	}
	if d, err := time.ParseDuration(os.Getenv("LBPATH_BENCH_ROUND")); err == nil {
		round = d // e.g. a longer round for LBPATH_BENCH_PROFILE
	}
	for _, keepAlive := range []bool{true, false} {
		name := "keepalive"
		if !keepAlive {
			name = "fresh-connections"
		}
		b.Run(name, func(b *testing.B) {
			load0 := loadAvg()
			if _, err := runWrk(cl.Client.Netns, cl.Web().LoadBalancerAddr(), keepAlive, time.Second); err != nil {
				b.Fatal(err) // warm-up
			}
			res := make([]slotStats, len(slots))
			one := func(i int, bpfStats bool) slotRound {
				return runSlotRound(b, slots[i], name, cl.Nodes[0].Netns, cl.Client.Netns, cl.Web().LoadBalancerAddr(), keepAlive, round, bpfStats)
			}
			for range b.N {
				for r := range rounds {
					for k := range slots {
						i := (k + r) % len(slots)
						res[i].add(one(i, false))
					}
				}
				for i := range slots {
					if slots[i].argv != nil {
						r := one(i, true)
						res[i].bpf = &r
					}
				}
			}
			reportOnOff(b, name, slots, res, fmt.Sprintf("load average %s before, %s after", load0, loadAvg()))
		})
	}
}

// onOffSlots lists the harness's slots; the agents run as the chart runs
// them (their own process, the node's namespace, --output none, OTLP export
// to a collector: here a sink that counts and discards, default span
// sampling, request timing on), without Kubernetes.
// LBPATH_BENCH_AGENT_ARGS adds flags to both lbpath slots (later flags win,
// e.g. "--output jsonl" or "--no-request-timing").
func onOffSlots(b *testing.B, nodeNetns, otlpAddr string) []onOffSlot {
	args := []string{"--node", "node1", "--netns", nodeNetns, "--no-kube", "--stats-interval", "0", "--health-addr", "",
		"--output", "none", "--otlp-endpoint", otlpAddr, "--otlp-insecure"}
	args = append(args, strings.Fields(os.Getenv("LBPATH_BENCH_AGENT_ARGS"))...)
	slots := []onOffSlot{{name: "off"}, {name: "lbpath", argv: append([]string{buildAgent(b, releaseFlags...)}, args...), lbpath: true}}
	if bin, ref := baselineAgent(b); bin != "" {
		b.Logf("baseline: %s", ref)
		slots = append(slots, onOffSlot{name: "baseline", argv: append([]string{bin}, args...), lbpath: true})
	}
	if peer := os.Getenv("LBPATH_BENCH_PEER"); peer != "" {
		b.Logf("peer: %s", peer)
		slots = append(slots, onOffSlot{name: "peer", argv: []string{"sh", "-c", "exec " + peer}})
	}
	if os.Getenv("LBPATH_BENCH_AA") != "" {
		slots = append(slots, onOffSlot{name: "off2"})
	}
	os.Setenv("LBPATH_BENCH_NODE_NETNS", nodeNetns)
	return slots
}

// baselineAgent builds the previous release's agent (the latest v* tag, or
// LBPATH_BENCH_BASELINE) from a temporary git worktree into a temporary
// directory; nothing of it stays in the tree. Only in full mode or when
// LBPATH_BENCH_BASELINE asks for it: CI's one quick pass has no slot for it.
func baselineAgent(b *testing.B) (bin, ref string) {
	ref = os.Getenv("LBPATH_BENCH_BASELINE")
	if ref == "" {
		if !fullScale() {
			return "", ""
		}
		out, err := exec.Command("git", "tag", "--list", "v*", "--sort=-v:refname").Output()
		if err != nil {
			b.Logf("git tag: %v (not a git checkout?): no previous-release slot", err)
			return "", ""
		}
		if tags := strings.Fields(string(out)); len(tags) > 0 {
			ref = tags[0]
		} else {
			b.Log("no v* tag: no previous-release slot")
			return "", ""
		}
	}
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	if out, err := exec.Command("git", "worktree", "add", "--detach", src, ref).CombinedOutput(); err != nil {
		b.Fatalf("git worktree add %s: %v\n%s", ref, err, out)
	}
	defer exec.Command("git", "worktree", "remove", "--force", src).Run()
	bin = filepath.Join(dir, "lbpath-agent")
	cmd := exec.Command("go", append(append([]string{"build", "-o", bin}, releaseFlags...), "./cmd/lbpath-agent")...)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v\n%s", ref, err, out)
	}
	return bin, ref
}

// runSlotRound starts the slot's agent (if any), waits until its start-up
// is over, runs wrk, and stops it.
func runSlotRound(b *testing.B, s onOffSlot, workload, nodeNetns, clientNetns string, target netip.AddrPort, keepAlive bool, d time.Duration, bpfStats bool) slotRound {
	// Every round starts from an empty conntrack table on the node: a
	// round of new connections leaves tens of thousands of TIME_WAIT
	// entries (120 s) and the next round then loses a third to three
	// quarters of its throughput to SYN retransmits, whichever slot it is.
	if out, err := exec.Command("nsenter", "--net="+nodeNetns, "conntrack", "-F").CombinedOutput(); err != nil {
		b.Fatalf("conntrack -F in the node namespace: %v\n%s", err, out)
	}
	var p *agentProc
	if s.argv != nil {
		p = startSlot(b, s, workload)
	}
	var progs []ebpf.ProgramID
	var before map[string]ebpf.ProgramStats
	if bpfStats {
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatalf("enable bpf stats: %v", err)
		}
		defer st.Close()
		progs = procProgIDs(procTree(p.cmd.Process.Pid))
		before = progStats(b, progs)
	}
	var cpu0 time.Duration
	if p != nil {
		cpu0 = treeCPU(p.cmd.Process.Pid)
	}
	w, err := runWrk(clientNetns, target, keepAlive, d)
	if err != nil {
		b.Fatal(err)
	}
	r := slotRound{wrk: w}
	if p == nil {
		return r
	}
	r.cpu = treeCPU(p.cmd.Process.Pid) - cpu0
	for _, pid := range procTree(p.cmd.Process.Pid) {
		r.peakKiB += procStatusKiB(pid, "VmHWM")
	}
	if bpfStats {
		r.progs = progStats(b, progs)
		for n, a := range r.progs {
			a.Runtime -= before[n].Runtime
			a.RunCount -= before[n].RunCount
			r.progs[n] = a
			r.bpf.Runtime += a.Runtime
			r.bpf.RunCount += a.RunCount
		}
	}
	stopSlot(b, s, p)
	return r
}

// startSlot starts a slot's agent and waits until it is idle: the start-up
// (program load, the conntrack dump of tens of thousands of entries left by
// earlier rounds) is not cost per request.
func startSlot(b *testing.B, s onOffSlot, workload string) *agentProc {
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	var p *agentProc
	if s.lbpath {
		if dir := os.Getenv("LBPATH_BENCH_PROFILE"); dir != "" && s.name == "lbpath" {
			cmd.Env = append(os.Environ(), "LBPATH_CPUPROFILE="+filepath.Join(dir, workload+".pprof"))
		}
		p = startProc(b, cmd)
		waitLog(b, p, "lbpath-agent running")
	} else {
		p = startProc(b, cmd)
		// A peer says nothing we know of when it is ready: give it the
		// time lbpath's start-up takes here, then wait for idle.
		time.Sleep(3 * time.Second)
		if p.cmd.ProcessState != nil || syscall.Kill(p.cmd.Process.Pid, 0) != nil {
			b.Fatalf("%s exited:\n%s", s.name, p.logText())
		}
	}
	waitIdle(p.cmd.Process.Pid, 10*time.Second)
	return p
}

// stopSlot ends a slot's agent with SIGTERM; lbpath must exit 0, a peer
// gets 10 s before it is killed.
func stopSlot(b *testing.B, s onOffSlot, p *agentProc) {
	if s.lbpath {
		p.stop(b)
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			b.Logf("%s exited with %v", s.name, err)
		}
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
		b.Logf("%s did not stop within 10 s of SIGTERM: killed", s.name)
	}
}

// waitLog waits up to 15 s for marker in p's log.
func waitLog(b *testing.B, p *agentProc, marker string) {
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.logText(), marker) {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			b.Fatalf("agent did not start:\n%s", p.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reportOnOff reports each agent slot's ratios to the no-agent slot, and
// logs them as a table.
func reportOnOff(b *testing.B, workload string, slots []onOffSlot, res []slotStats, load string) {
	med := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		s := slices.Clone(v)
		slices.Sort(s)
		return s[len(s)/2]
	}
	per := "request"
	if workload == "fresh-connections" {
		per = "connection"
	}
	var tab strings.Builder
	fmt.Fprintf(&tab, "%s (%s)\n| slot | req/s (median) | throughput on/off | same-round on/off | p50 on/off | agent CPU-s per 10k | peak RSS MiB | BPF ns per %s | BPF runs per %s |\n|---|---|---|---|---|---|---|---|---|\n",
		workload, load, per, per)
	off := res[0]
	b.ReportMetric(med(off.rps), "req/s-off")
	for i, s := range slots {
		r := res[i]
		tp, p50 := med(r.rps)/med(off.rps), med(r.p50)/med(off.p50)
		// Each round's ratio to that round's no-agent run, the median of
		// those: less sensitive to the machine's drift between rounds.
		var paired []float64
		for k := range min(len(r.rps), len(off.rps)) {
			paired = append(paired, r.rps[k]/off.rps[k])
		}
		var bpfNs, bpfRuns float64
		if r.bpf != nil && r.bpf.wrk.requests > 0 {
			bpfNs = float64(r.bpf.bpf.Runtime.Nanoseconds()) / float64(r.bpf.wrk.requests)
			bpfRuns = float64(r.bpf.bpf.RunCount) / float64(r.bpf.wrk.requests)
		}
		fmt.Fprintf(&tab, "| %s | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f | %.0f | %.1f |\n",
			s.name, med(r.rps), tp, med(paired), p50, med(r.cpuPer10k), float64(r.peakKiB)/1024, bpfNs, bpfRuns)
		if len(r.errors) > 0 {
			fmt.Fprintf(&tab, "  %s: wrk errors %q\n", s.name, r.errors)
		}
		if i == 0 {
			continue
		}
		b.ReportMetric(tp, s.name+"-throughput-on/off")
		b.ReportMetric(med(paired), s.name+"-same-round-on/off")
		b.ReportMetric(p50, s.name+"-p50-on/off")
		if s.argv != nil {
			b.ReportMetric(med(r.cpuPer10k), s.name+"-cpu-s/10k")
			b.ReportMetric(float64(r.peakKiB)/1024, s.name+"-peak-MiB")
			b.ReportMetric(bpfNs, s.name+"-bpf-ns/"+per)
		}
	}
	for i, s := range slots {
		fmt.Fprintf(&tab, "  %s rounds: req/s %.0f\n", s.name, res[i].rps)
		if r := res[i].bpf; r != nil && r.wrk.requests > 0 {
			fmt.Fprintf(&tab, "  %s BPF per %s:", s.name, per)
			for _, n := range slices.Sorted(maps.Keys(r.progs)) {
				if st := r.progs[n]; st.RunCount > 0 {
					fmt.Fprintf(&tab, " %s %.1f runs × %.0f ns;", n, float64(st.RunCount)/float64(r.wrk.requests),
						float64(st.Runtime.Nanoseconds())/float64(st.RunCount))
				}
			}
			tab.WriteString("\n")
		}
	}
	b.Log("\n" + tab.String())
}

// wrkResult is one wrk run's outcome.
type wrkResult struct {
	rps      float64
	requests int64
	p50      time.Duration
	errors   string // wrk's socket-error and non-2xx lines, if any
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkReqs   = regexp.MustCompile(`(\d+) requests in`)
	wrkP50    = regexp.MustCompile(`(?m)^\s+50%\s+([\d.]+)(us|ms|s)\s*$`)
	wrkErrors = regexp.MustCompile(`(?m)^\s*(Socket errors:.*|Non-2xx or 3xx responses:.*)$`)
)

// runWrk runs wrk -t2 -c32 for d (whole seconds, at least 1) from the
// namespace nsPath against target, kept-alive or with `Connection: close`
// (a new connection per request).
func runWrk(nsPath string, target netip.AddrPort, keepAlive bool, d time.Duration) (wrkResult, error) {
	args := []string{"--net=" + nsPath, "wrk", "-t2", "-c32", fmt.Sprintf("-d%ds", max(1, int(d.Seconds()))), "--latency"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	out, err := exec.Command("nsenter", append(args, "http://"+target.String()+"/")...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w\n%s", err, out)
	}
	return parseWrk(string(out))
}

func parseWrk(out string) (wrkResult, error) {
	var w wrkResult
	m1, m2, m3 := wrkRPS.FindStringSubmatch(out), wrkReqs.FindStringSubmatch(out), wrkP50.FindStringSubmatch(out)
	if m1 == nil || m2 == nil || m3 == nil {
		return w, fmt.Errorf("wrk output not understood:\n%s", out)
	}
	w.rps, _ = strconv.ParseFloat(m1[1], 64)
	w.requests, _ = strconv.ParseInt(m2[1], 10, 64)
	v, _ := strconv.ParseFloat(m3[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m3[2]]
	w.p50 = time.Duration(v * float64(unit))
	for _, m := range wrkErrors.FindAllStringSubmatch(out, -1) {
		w.errors = strings.TrimSpace(w.errors + " " + m[1])
	}
	if w.requests == 0 {
		return w, fmt.Errorf("wrk served no request:\n%s", out)
	}
	return w, nil
}

// procTree is pid and its live descendants (a peer command may fork).
func procTree(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
		if err != nil {
			continue
		}
		// Fields after the command (which may contain spaces): state, ppid.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			children[pp] = append(children[pp], c)
		}
	}
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

func treeCPU(pid int) time.Duration {
	var t time.Duration
	for _, p := range procTree(pid) {
		t += cpuTime(p)
	}
	return t
}

// procProgIDs are the BPF programs the processes hold, by program or link
// descriptor (both show prog_id in fdinfo): the agent's own programs,
// whatever they are called.
func procProgIDs(pids []int) []ebpf.ProgramID {
	var ids []ebpf.ProgramID
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "prog_id:"); ok {
					if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil && !slices.Contains(ids, ebpf.ProgramID(id)) {
						ids = append(ids, ebpf.ProgramID(id))
					}
				}
			}
		}
	}
	return ids
}

// progStats are the programs' run time and count, by name (programs of
// one name, e.g. one per interface, summed).
func progStats(b *testing.B, ids []ebpf.ProgramID) map[string]ebpf.ProgramStats {
	out := map[string]ebpf.ProgramStats{}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			b.Fatalf("program %d: %v", id, err)
		}
		st, err := p.Stats()
		name := fmt.Sprint(id)
		if info, ierr := p.Info(); ierr == nil && info.Name != "" {
			name = info.Name
		}
		p.Close()
		if err != nil {
			b.Fatalf("stats of program %d: %v", id, err)
		}
		sum := out[name]
		sum.Runtime += st.Runtime
		sum.RunCount += st.RunCount
		out[name] = sum
	}
	return out
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// waitIdle waits until pid has used less than 10 ms of CPU in 300 ms, or
// for at most limit.
func waitIdle(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		c0 := cpuTime(pid)
		time.Sleep(300 * time.Millisecond)
		if cpuTime(pid)-c0 < 10*time.Millisecond {
			return
		}
	}
}
