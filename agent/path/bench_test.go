package path

import (
	"net/netip"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
)

// BenchmarkName is the naming cost per connection attempt, by kind: the
// classification of the node's own traffic runs on every connection no
// pod claims, and waiting ones are re-named every tick.
func BenchmarkName(b *testing.B) {
	x, local, fresh := cluster(&testing.T{})
	n := NewNamer(Config{Node: "node1", Local: local, Current: fresh.CurrentAt}, x)
	lo := netip.MustParseAddr("127.0.0.1")
	for _, bc := range []struct {
		name string
		c    flow.Connection
		late bool
	}{
		{"pod", conn(flow.RoleClient, ap(node1, 40000), ap(podA, 8080)), false},
		{"loopback", conn(flow.RoleClient, ap(lo, 40000), ap(lo, 8080)), false},
		{"kubelet", conn(flow.RoleServer, ap(node2, 50000), ap(node1, 10250)), false},
		{"external_waiting", conn(flow.RoleClient, ap(node1, 40000), internet), false},
		{"external_late", conn(flow.RoleClient, ap(node1, 40000), internet), true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := bc.c
			c.Start = t0.Add(time.Minute)
			b.ReportAllocs()
			for b.Loop() {
				if bc.late {
					n.NameLate(&c)
				} else {
					n.Name(&c)
				}
			}
		})
	}
}
