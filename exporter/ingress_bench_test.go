package exporter

import (
	"context"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
)

// BenchmarkIngressEdge: the user-space cost of the ingress edge (issue
// 15): one proxy's outbound connection and one request behind it recorded
// into the metrics, without and with the hop named, in one run (the
// difference is the edge: its series admission and three instruments).
// The edge has no BPF part: it is built from the records the agents
// already make, so its kernel cost is zero.
func BenchmarkIngressEdge(b *testing.B) {
	hop := &kube.IngressHop{Kind: kube.KindIngress, Ingress: "default/shop", Class: "nginx", Route: "/web",
		ProxyService: "default/ingress-nginx", ProxyPod: "default/ingress-nginx-controller-1"}
	for _, tc := range []struct {
		name string
		hop  *kube.IngressHop
	}{{"without", nil}, {"with", hop}} {
		b.Run(tc.name, func(b *testing.B) {
			sink, err := otlpsink.Start()
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Stop()
			sink.Discard()
			ctx := context.Background()
			e, err := New(ctx, Config{Endpoint: sink.GRPCAddr, Insecure: true, Node: "node1", MetricInterval: time.Hour, NoTraces: true}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer e.Shutdown(ctx)
			client, _ := twoViews()
			client.Conn.Role = flow.RoleClient
			client.Ingress = tc.hop
			req := path.Request{Req: flow.Request{Latency: 3 * time.Millisecond}, Pod: pod, Service: svc, Ingress: tc.hop}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				e.Path(&client)
				e.Request(&req)
			}
		})
	}
}
