package explain

import (
	"bytes"
	"math"
	"testing"
)

// TestRenderIngress renders the chain for a Service behind an ingress
// proxy and compares the whole section: what an SRE reads.
func TestRenderIngress(t *testing.T) {
	r := &Report{Ingress: &Ingress{
		Proxies: []IngressProxy{{Pod: "ingress/ingress-nginx-controller",
			Entries:    []EntryCount{{"loadbalancer", 32}},
			EntryNodes: []NodeCount{{"node-a", 20}, {"node-b", 12}},
			AtProxy:    0.0042, Behind: 0.0030}},
		Backends: []IngressBackend{
			{Ingress: "shop/shop", Route: "/web", ProxyPod: "ingress/ingress-nginx-controller", Pod: "web-1", Requests: 200, Share: 200.0 / 320, BehindP50: 0.0021, BehindP90: 0.0049},
			{Ingress: "shop/shop", Route: "/web", ProxyPod: "ingress/ingress-nginx-controller", Pod: "web-2", Requests: 120, Share: 120.0 / 320, BehindP50: 0.0008, BehindP90: math.NaN()},
		},
	}}
	var b bytes.Buffer
	r.renderIngress(&b)
	want := `
INGRESS  client → LB → entry node → proxy pod → backend pod  (requests through the proxies)
  proxy ingress/ingress-nginx-controller  entered via loadbalancer 32  on node-a 20 · node-b 12
    latency (mean)  at proxy 4.2ms = before the backends 1.2ms + behind 3.0ms
  route           proxy pod                         backend pod   requests   share    behind p50    behind p90
  shop/shop /web  ingress/ingress-nginx-controller  web-1              200     62%         2.1ms         4.9ms
  shop/shop /web  ingress/ingress-nginx-controller  web-2              120     38%         800µs             –
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	// A Service no proxy routes to has no INGRESS section at all.
	b.Reset()
	(&Report{}).renderIngress(&b)
	if b.Len() != 0 {
		t.Errorf("no ingress rendered %q", b.String())
	}
	// A missing side is shown as unknown, never as a number.
	p := IngressProxy{AtProxy: 0.004, Behind: math.NaN()}
	if s := seconds(p.Before()); s != "–" {
		t.Errorf("before with no behind = %s", s)
	}
}
