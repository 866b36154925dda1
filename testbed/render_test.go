package testbed

import (
	"strings"
	"testing"
)

// These tests need no root: they pin the kube-proxy rule shapes the e2e
// tests depend on, so a refactor that changes them fails fast and readably.

func testState(policy Policy) ServiceState {
	return newCluster(Options{Prefix: "x", Nodes: 2, Pods: DefaultPods(), Policy: policy}).state
}

func wantLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("missing %q in:\n%s", l, out)
		}
	}
}

func TestRenderIPTablesCluster(t *testing.T) {
	out := renderIPTables("node1", testState(PolicyCluster))
	svc := "KUBE-SVC-" + kubeHash("default/web:httptcp", 16)
	ext := "KUBE-EXT-" + kubeHash("default/web:httptcp", 16)
	wantLines(t, out,
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
		"-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
		"-j MASQUERADE --random-fully",
		"-d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j "+svc,
		"-A "+svc+" ! -s 10.244.0.0/16 -d 10.96.0.10/32",
		"--probability 0.3333333333",
		"--probability 0.5000000000",
		"-A "+ext+" -m comment --comment \"masquerade traffic for default/web:http external destinations\" -j KUBE-MARK-MASQ",
		"-A "+ext+" -j "+svc,
		"--dport 30080 -j "+ext,
		"-j DNAT --to-destination 10.244.2.10:8080",
		"-d 10.96.0.11/32 -p tcp -m comment --comment \"default/empty:http has no endpoints\" -m tcp --dport 80 -j REJECT",
	)
	// KUBE-NODEPORTS must be the last nat KUBE-SERVICES rule.
	var last string
	nat := out[strings.Index(out, "*nat"):]
	for _, l := range strings.Split(nat, "\n") {
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") {
			last = l
		}
	}
	if !strings.HasSuffix(last, "-j KUBE-NODEPORTS") {
		t.Errorf("last KUBE-SERVICES rule is %q", last)
	}
}

func TestRenderIPTablesLocalWithoutLocalEndpoints(t *testing.T) {
	st := testState(PolicyLocal)
	out := renderIPTables("node3", st)
	svl := "KUBE-SVL-" + kubeHash("default/web:httptcp", 16)
	wantLines(t, out,
		"-s 10.244.0.0/16 -m comment --comment \"pod traffic for default/web:http external destinations\"",
		"-j "+svl,
		"-d 203.0.113.10/32 -p tcp -m comment --comment \"default/web:http has no local endpoints\" -m tcp --dport 80 -j DROP",
		"--dport 30080 -j DROP",
	)
	if strings.Contains(out, "-A "+svl+" ") {
		t.Errorf("node3 has no pods but %s has rules", svl)
	}
}

func TestRenderNFTables(t *testing.T) {
	out := renderNFTables("node2", testState(PolicyLocal))
	base := "default/web/tcp/http"
	svc := nftHashed("service-", base)
	ext := nftHashed("external-", base)
	local := nftHashed("local-", base)
	wantLines(t, out,
		"add table ip kube-proxy\ndelete table ip kube-proxy\n",
		"type nat hook prerouting priority dstnat; policy accept;",
		"type nat hook output priority -100; policy accept;",
		"type nat hook postrouting priority srcnat; policy accept;",
		"ip daddr . meta l4proto . th dport vmap @service-ips",
		"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
		"mark and 0x4000 == 0 return",
		"masquerade fully-random",
		"ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
		"numgen random mod 3 vmap",
		"chain "+local+" {\n\t\tnumgen random mod 1 vmap { 0 : goto "+nftHashed("endpoint-", base+"__10.244.2.10/8080"),
		"ip saddr 10.244.0.0/16 goto "+svc,
		"goto "+local,
		"meta l4proto tcp dnat to 10.244.2.10:8080",
		"add element ip kube-proxy service-ips { 203.0.113.10 . tcp . 80 : goto "+ext+" }",
		"add element ip kube-proxy service-nodeports { tcp . 30080 : goto "+ext+" }",
		"add element ip kube-proxy no-endpoint-services { 10.96.0.11 . tcp . 80 : goto reject-chain }",
		"add element ip kube-proxy no-endpoint-nodeports { tcp . 30081 : goto reject-chain }",
	)
}
