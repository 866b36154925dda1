package kube

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// A rollout reuses an IP: connections are named by the pod that held the
// address when they happened, before and after.
func TestPodIPReuseIsTimeAware(t *testing.T) {
	x := NewIndex(IndexConfig{Slack: 500 * time.Millisecond})
	ip := netip.MustParseAddr("10.244.1.10")
	old := &Pod{Ready: true, Namespace: "default", Name: "web-aaa-1", UID: "u1", IP: ip, ReplicaSet: "web-aaa", TemplateHash: "aaa"}
	x.SetPod(old, at(0))
	x.DeletePod("default", "web-aaa-1", at(100))
	nw := &Pod{Ready: true, Namespace: "default", Name: "web-bbb-1", UID: "u2", IP: ip, ReplicaSet: "web-bbb", TemplateHash: "bbb"}
	x.SetPod(nw, at(105))

	for _, tc := range []struct {
		sec  int
		want string
		ok   bool
	}{{50, "web-aaa-1", true}, {99, "web-aaa-1", true}, {103, "", false}, {106, "web-bbb-1", true}, {5000, "web-bbb-1", true}} {
		p, ok := x.PodAt(ip, at(tc.sec))
		if ok != tc.ok || (ok && p.Name != tc.want) {
			t.Errorf("t=%ds: got %v %v, want %q %v", tc.sec, p, ok, tc.want, tc.ok)
		}
	}
	// The Deployment comes from the ReplicaSet (or its naming rule).
	p, _ := x.PodAt(ip, at(50))
	if p.Deployment != "web" {
		t.Errorf("deployment = %q, want web (from the naming rule)", p.Deployment)
	}
	x.SetReplicaSet("default", "web-bbb", "frontend")
	if p, _ := x.PodAt(ip, at(200)); p.Deployment != "frontend" {
		t.Errorf("deployment = %q, want frontend (from the ReplicaSet owner)", p.Deployment)
	}
	// A rollout on a real node: the old pod turns not ready (t=200), its
	// sandbox goes and the IP is handed to a new pod that serves at once
	// (t=201), while the watch reports the new pod's IP at t=202 and the old
	// pod's deletion later still. A connection at t=201.5 belongs to the new pod.
	ip2 := netip.MustParseAddr("10.244.1.20")
	a := &Pod{Namespace: "default", Name: "a", UID: "ua", IP: ip2, Ready: true}
	x.SetPod(a, at(150))
	notReady := *a
	notReady.Ready = false
	x.SetPod(&notReady, at(200))
	x.SetPod(&Pod{Namespace: "default", Name: "b", UID: "ub", IP: ip2, Ready: true}, at(202))
	x.DeletePod("default", "a", at(205))
	if p, _ := x.PodAt(ip2, at(201).Add(500*time.Millisecond)); p == nil || p.Name != "b" {
		t.Errorf("after the handoff: %v, want b", p)
	}
	if p, _ := x.PodAt(ip2, at(199)); p == nil || p.Name != "a" {
		t.Errorf("before the old pod turned not ready: %v, want a", p)
	}
	// Slack: an informer event that arrives just after the connection began.
	if p, ok := x.PodAt(ip, at(104).Add(700*time.Millisecond)); !ok || p.Name != "web-bbb-1" {
		t.Errorf("within slack: %v %v", p, ok)
	}
}

func TestServiceEntries(t *testing.T) {
	x := NewIndex(IndexConfig{})
	x.SetNode(&Node{Name: "node1", InternalIP: netip.MustParseAddr("192.168.77.11")}, at(0))
	svc := &Service{Namespace: "default", Name: "web", Type: "LoadBalancer", Created: at(0),
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []ServicePort{{Port: 80, NodePort: 30080, TargetPort: 8080}}, ExternalTrafficPolicy: "Cluster"}
	x.SetService(svc, at(0))
	if s, _ := x.Service("default", "web"); s.LBPendingSince != at(0) {
		t.Errorf("pending since %v, want creation", s.LBPendingSince)
	}
	// The cloud assigns the LB IP later.
	withLB := *svc
	withLB.LBIngress = []netip.Addr{netip.MustParseAddr("203.0.113.10")}
	withLB.LBPendingSince = time.Time{}
	x.SetService(&withLB, at(60))

	cases := []struct {
		addr  string
		t     int
		entry Entry
		ok    bool
	}{
		{"10.96.0.10:80", 10, EntryClusterIP, true},
		{"192.168.77.11:30080", 10, EntryNodePort, true},
		{"203.0.113.10:80", 10, "", false}, // before the LB IP existed
		{"203.0.113.10:80", 70, EntryLoadBalancer, true},
		{"10.96.0.10:81", 70, "", false},
		{"192.168.77.99:30080", 70, "", false}, // not a node address
	}
	for _, c := range cases {
		s, e, ok := x.ServiceAt(netip.MustParseAddrPort(c.addr), at(c.t))
		if ok != c.ok || e != c.entry || (ok && s.Name != "web") {
			t.Errorf("%s at %ds: %v %q %v, want %q %v", c.addr, c.t, s, e, ok, c.entry, c.ok)
		}
	}
	x.SetEndpointSlice("default/web-x", "default/web", []uint16{8080}, []Endpoint{
		{IP: netip.MustParseAddr("10.244.1.10"), Node: "node1", Ready: true, PodName: "a"},
		{IP: netip.MustParseAddr("10.244.2.10"), Node: "node2", Ready: false, Terminating: true, PodName: "b"},
	}, at(0))
	if all, local := x.ReadyEndpoints("default/web", "node2"); all != 1 || local != 0 {
		t.Errorf("ready endpoints all=%d node2=%d, want 1 0", all, local)
	}
	if svcName, ep, ok := x.EndpointAt(netip.MustParseAddrPort("10.244.2.10:8080"), at(1)); !ok || svcName != "default/web" || !ep.Terminating {
		t.Errorf("endpoint: %s %+v %v", svcName, ep, ok)
	}
	x.DeleteEndpointSlice("default/web-x", at(10))
	if all, _ := x.ReadyEndpoints("default/web", ""); all != 0 {
		t.Errorf("after delete: %d ready", all)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	x := NewIndex(IndexConfig{MaxSpans: 3, History: time.Minute})
	ip := netip.MustParseAddr("10.0.0.1")
	for i := range 10 {
		p := &Pod{Namespace: "ns", Name: fmt.Sprint("p", i), UID: fmt.Sprint(i), IP: ip}
		x.SetPod(p, at(i*10))
		x.DeletePod("ns", p.Name, at(i*10+5))
	}
	if n := len(x.podByIP[ip]); n != 3 {
		t.Errorf("%d spans kept, want 3", n)
	}
	if x.Stats.Pruned.Load() != 7 {
		t.Errorf("pruned %d, want 7", x.Stats.Pruned.Load())
	}
	// Past History, closed spans go away entirely.
	x.SetPod(&Pod{Namespace: "ns", Name: "late", UID: "late", IP: netip.MustParseAddr("10.0.0.2")}, at(10000))
	x.DeletePod("ns", "late", at(10001))
	x.SetPod(&Pod{Namespace: "ns", Name: "later", UID: "later", IP: netip.MustParseAddr("10.0.0.2")}, at(20000))
	if n := len(x.podByIP[netip.MustParseAddr("10.0.0.2")]); n != 1 {
		t.Errorf("expired history kept: %d spans", n)
	}
}

// Hostile objects: huge labels, thousands of ports, garbage addresses must
// neither crash the conversion nor survive the strip.
func TestHostileObjects(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n", Labels: map[string]string{"big": huge, "pod-template-hash": "h"},
		OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "rs-h", Controller: ptr(true)}},
		Annotations:     map[string]string{"a": huge}, ManagedFields: make([]metav1.ManagedFieldsEntry, 1000)}}
	pod.Status.PodIP = "not-an-ip"
	for i := range 5000 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Ports: []corev1.ContainerPort{{ContainerPort: int32(i), HostPort: int32(70000 + i)}}})
	}
	s, err := strip(pod)
	if err != nil {
		t.Fatal(err)
	}
	sp := s.(*corev1.Pod)
	if len(sp.Labels) != 1 || sp.Annotations != nil || sp.ManagedFields != nil {
		t.Errorf("strip kept labels %d annotations %v managed %d", len(sp.Labels), sp.Annotations != nil, len(sp.ManagedFields))
	}
	p := PodFrom(sp)
	again, _ := strip(sp)
	if p2 := PodFrom(again.(*corev1.Pod)); p2.ReplicaSet != p.ReplicaSet || p2.TemplateHash != p.TemplateHash {
		t.Errorf("strip is not idempotent: %+v vs %+v", p2, p)
	}
	if p.IP.IsValid() || len(p.HostPorts) != 0 {
		t.Errorf("invalid IP or out-of-range host ports accepted: %v %d", p.IP, len(p.HostPorts))
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "s", Namespace: "n"}}
	for i := range 3000 {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Port: int32(i + 1), NodePort: int32(-i), TargetPort: intstr.FromInt32(int32(i))})
	}
	svc.Spec.ClusterIPs = []string{"garbage", "10.96.0.1"}
	ss := ServiceFrom(svc)
	if len(ss.ClusterIPs) != 1 || len(ss.Ports) != 1 { // only port 1 has a valid (0) NodePort
		t.Errorf("clusterIPs %d ports %d", len(ss.ClusterIPs), len(ss.Ports))
	}
	NewIndex(IndexConfig{}).SetService(ss, at(0))
}

// BenchmarkIndexMemory reports bytes per object for 5,000 pods and 2,000
// Services as the agent keeps them: the stripped API object in the
// informer cache plus the index entries.
func BenchmarkIndexMemory(b *testing.B) {
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		store, x := buildCluster(5000, 2000)
		runtime.GC()
		runtime.ReadMemStats(&after)
		bytes := float64(after.HeapAlloc - before.HeapAlloc)
		b.ReportMetric(bytes/7000, "bytes/object")
		b.ReportMetric(bytes/(1<<20), "MiB/5k-pods-2k-svcs")
		runtime.KeepAlive(store)
		runtime.KeepAlive(x)
	}
}

// buildCluster makes realistic full API objects (labels, annotations,
// managed fields), strips them as the informer transform does, keeps the
// stripped ones (the informer store) and indexes them.
func buildCluster(pods, svcs int) ([]any, *Index) {
	x := NewIndex(IndexConfig{})
	var store []any
	now := time.Now()
	for i := range pods {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%d-7d9f8b6c5d-%05d", i%svcs, i), Namespace: "team-" + fmt.Sprint(i%40),
			UID: types.UID(fmt.Sprintf("uid-%d", i)), Labels: map[string]string{"app": "a", "pod-template-hash": "7d9f8b6c5d", "team": "x", "version": "v1"},
			Annotations:     map[string]string{"kubectl.kubernetes.io/restartedAt": now.String(), "prometheus.io/scrape": "true"},
			ManagedFields:   make([]metav1.ManagedFieldsEntry, 3),
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: fmt.Sprintf("app-%d-7d9f8b6c5d", i%svcs), Controller: ptr(true)}}}}
		p.Spec.NodeName = fmt.Sprintf("node-%d", i%100)
		p.Spec.Containers = []corev1.Container{{Name: "app", Image: "registry/app:v1", Env: make([]corev1.EnvVar, 10), Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}
		p.Status.PodIP = fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}, {Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}
		s, _ := strip(p)
		store = append(store, s)
		x.SetPod(PodFrom(s.(*corev1.Pod)), now)
	}
	for i := range svcs {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%d", i), Namespace: "team-" + fmt.Sprint(i%40),
			Labels: map[string]string{"app": "a"}, Annotations: map[string]string{"x": "y"}, ManagedFields: make([]metav1.ManagedFieldsEntry, 2)}}
		s.Spec.Type = corev1.ServiceTypeClusterIP
		s.Spec.ClusterIP = fmt.Sprintf("10.96.%d.%d", i/256, i%256)
		s.Spec.ClusterIPs = []string{s.Spec.ClusterIP}
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}
		st, _ := strip(s)
		store = append(store, st)
		x.SetService(ServiceFrom(st.(*corev1.Service)), now)
	}
	return store, x
}

func ptr[T any](v T) *T { return &v }
