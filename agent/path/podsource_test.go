package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/podns"
)

// TestNetnsNamesReusedIP: pod 1 held podA, was deleted, and pod 3 took
// the address; a connection that the index places in pod 3's span but
// whose socket was in pod 1's namespace is pod 1's (and the disagreement
// is recorded). Without a namespace answer yet the record waits; late, it
// falls back to the address; a server in the node's namespace and a
// client record are named by address.
func TestNetnsNamesReusedIP(t *testing.T) {
	x := index("Cluster", true)
	x.DeletePod("default", "web-abc-1", t0.Add(time.Minute))
	x.SetPod(&kube.Pod{Namespace: "default", Name: "web-def-1", UID: "3", Node: "node1", IP: podA, Ready: true, ReplicaSet: "web-def", TemplateHash: "def"}, t0.Add(time.Minute))
	r := podns.Static(map[uint64]string{101: "1", 103: "3"})
	n := NewNamer(Config{Node: "node1", Netns: r}, x)
	at := t0.Add(time.Minute + 500*time.Millisecond) // in pod 3's span by the index
	conn := func(cookie uint64) flow.Connection {
		return flow.Connection{Node: "node1", Role: flow.RoleServer, Outcome: flow.OutcomeOK, Start: at, End: at.Add(time.Millisecond),
			Client: netip.AddrPortFrom(podC, 40000), Target: netip.AddrPortFrom(podA, 8080),
			PodSrc: netip.AddrPortFrom(podC, 40000), PodDst: netip.AddrPortFrom(podA, 8080), NetnsCookie: cookie}
	}
	c := conn(101)
	p, complete := n.Name(&c)
	if !complete || p.Pod == nil || p.Pod.Name != "web-abc-1" || p.PodSource != PodFromNetns || !p.PodIPDisagrees {
		t.Fatalf("old pod's namespace: pod %v source %q disagree %v complete %v", p.Pod, p.PodSource, p.PodIPDisagrees, complete)
	}
	if p.Pod.Deployment != "web" || p.Pod.ReplicaSet != "web-abc" {
		t.Errorf("deleted pod named without its deployment: %+v", p.Pod)
	}
	c = conn(103)
	if p, _ := n.Name(&c); p.Pod == nil || p.Pod.Name != "web-def-1" || p.PodSource != PodFromNetns || p.PodIPDisagrees {
		t.Errorf("new pod's namespace: pod %v source %q disagree %v", p.Pod, p.PodSource, p.PodIPDisagrees)
	}
	c = conn(999) // not resolved yet
	if _, complete := n.Name(&c); complete {
		t.Errorf("named before the namespace was resolved")
	}
	if p, complete := n.NameLate(&c); !complete || p.Pod == nil || p.Pod.Name != "web-def-1" || p.PodSource != PodFromIP {
		t.Errorf("late fallback: pod %v source %q complete %v", p.Pod, p.PodSource, complete)
	}
	c = conn(101)
	c.Role, c.NAT = flow.RoleClient, nil
	if p, _ := n.Name(&c); p.PodSource != PodFromIP || p.Pod == nil || p.Pod.Name != "web-def-1" {
		t.Errorf("client record: pod %v source %q (client records are named by address)", p.Pod, p.PodSource)
	}
	var nc NamingCounts
	c = conn(101)
	p, _ = n.Name(&c)
	nc.Add(&p)
	by, dis := nc.Snapshot()
	if by[0].Source != PodFromNetns || by[0].Count != 1 || dis != 1 {
		t.Errorf("counts %+v disagreements %d", by, dis)
	}
}
