package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/exporter"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// TestIngressNginx: a real nginx (Debian's) runs as the ingress proxy pod
// behind a LoadBalancer Service, described by an IngressClass and an
// Ingress in the real API server, and routes /web and /api to Services web
// and api (real kube-proxy). 32 concurrent clients send requests through
// the LB IP; each backend pod's count on the aggregate edge (proxy pod →
// backend Service → backend pod) must equal exactly the requests that pod
// answered (X-Pod, the ground truth), both in lbpath.ingress.requests
// (counted at the backend pod) and lbpath.ingress.connections (counted at
// the proxy's node: nginx sends each request on its own upstream
// connection). No per-request link is made (see docs/ARCHITECTURE.md), so
// per-request precision is reported as n/a, the edge's precision and
// recall are printed.
func TestIngressNginx(t *testing.T) {
	c := upK8s(t, "lbing", k8s.Options{PoolSize: 6})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ing, err := c.UpIngress(ctx, k8s.IngressOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	sink := testbedtest.Sink(t)
	set := startExportingAgents(t, c, sink.GRPCAddr)
	for _, a := range set.Agents {
		if !waitFor(t, 20*time.Second, func() bool { return a.Watcher().IngressSynced() && a.Watcher().Ingress.Len() == 1 }) {
			t.Fatal("an agent never learnt the Ingress")
		}
	}

	truth, total := ingressLoad(t, c, ing, 32, 20)
	t.Logf("ground truth: %d requests, per backend pod %v", total, truth)

	var got map[string][2]float64
	ok := waitFor(t, 30*time.Second, func() bool {
		got = ingressEdge(sink.Points())
		for pod, n := range truth {
			if got[pod] != [2]float64{float64(n), float64(n)} {
				return false
			}
		}
		return len(got) == len(truth)
	})
	named := 0.0
	for pod, v := range got {
		if truth[pod] > 0 {
			named += min(v[0], float64(truth[pod]))
		}
	}
	t.Logf("nginx: aggregate edge precision %.4f recall %.4f (requests named to their backend pod / made); per-request links: none made (n/a)",
		precision(named, got), named/float64(total))
	if !ok {
		t.Errorf("aggregate edge per backend pod [requests, connections] = %v, want %v for both", got, truth)
	}
	// Link precision as exported: every outbound connection joined to the
	// aggregate edge (exactly the lbpath.ingress.connections points, any
	// outcome), none linked per request (stated as 0, not absent).
	links := ingressLinks(sink.Points())
	t.Logf("lbpath.ingress.links by lbpath.link %v; lbpath.ingress.connections (any outcome) %v", links, links[""])
	if pr, seen := links["per_request"]; !seen || pr != 0 {
		t.Errorf("lbpath.ingress.links{per_request} = %v (exported: %v), want an exported 0", pr, seen)
	}
	if links["aggregate"] != links[""] || links[""] < float64(total) {
		t.Errorf("lbpath.ingress.links{aggregate} = %v, want the %v outbound edge connections (≥ %d requests, one upstream connection each)", links["aggregate"], links[""], total)
	}
}

// ingressLinks sums the newest cumulative point of each
// lbpath.ingress.links series by lbpath.link over all agents, and under ""
// those of lbpath.ingress.connections (every outcome).
func ingressLinks(points []otlpsink.Point) map[string]float64 {
	last := map[string]otlpsink.Point{}
	for _, p := range points {
		if p.Metric == exporter.MetricIngressLinks || p.Metric == exporter.MetricIngressConns {
			last[fmt.Sprint(p.Metric, p.Resource, p.Attrs)] = p
		}
	}
	out := map[string]float64{}
	for _, p := range last {
		k := ""
		if p.Metric == exporter.MetricIngressLinks {
			k = fmt.Sprint(p.Attrs["lbpath.link"])
		}
		out[k] += p.Value
	}
	return out
}

// ingressLoad runs clients concurrent keep-alive clients from the external
// client through the proxy's LB IP, each sending perClient requests
// alternately to /web and /api, and returns the requests each backend pod
// answered (X-Pod); every answer must come from the routed Service's pods.
func ingressLoad(t *testing.T, c *k8s.Cluster, ing *k8s.Ingress, clients, perClient int) (map[string]int, int) {
	t.Helper()
	truth := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, clients*perClient)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := c.TB.HTTPClient(c.TB.Client.Netns, true)
			for j := range perClient {
				p := k8s.PathWeb
				if (i+j)%2 == 1 {
					p = k8s.PathAPI
				}
				pod, err := ingressGet(hc, fmt.Sprintf("http://%s%s/%d/%d", ing.LB, p, i, j))
				if err == nil && !strings.HasPrefix(pod, ing.Backends[p]+"-") {
					err = fmt.Errorf("%s answered by pod %s, not a pod of %s", p, pod, ing.Backends[p])
				}
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				truth[pod]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return truth, clients * perClient
}

func ingressGet(hc *http.Client, url string) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return resp.Header.Get(testbed.HeaderPod), nil
}

// ingressEdge reads the aggregate edge per backend pod from the newest
// cumulative point of each series: [lbpath.ingress.requests,
// lbpath.ingress.connections that closed ok] of Ingress shop.
func ingressEdge(points []otlpsink.Point) map[string][2]float64 {
	type series struct {
		metric, pod string
		v           float64
	}
	last := map[string]series{}
	for _, p := range points {
		if p.Metric != exporter.MetricIngressRequests && p.Metric != exporter.MetricIngressConns {
			continue
		}
		if p.Attrs["lbpath.ingress.name"] != k8s.Namespace+"/"+k8s.IngressName {
			continue
		}
		if p.Metric == exporter.MetricIngressConns && p.Attrs["lbpath.outcome"] != string(flow.OutcomeOK) {
			continue
		}
		key := fmt.Sprint(p.Metric, p.Resource, p.Attrs)
		last[key] = series{p.Metric, fmt.Sprint(p.Attrs["k8s.pod.name"]), p.Value}
	}
	out := map[string][2]float64{}
	for _, s := range last {
		v := out[s.pod]
		if s.metric == exporter.MetricIngressRequests {
			v[0] += s.v
		} else {
			v[1] += s.v
		}
		out[s.pod] = v
	}
	return out
}

// precision is the share of the edge's requests named to a pod that
// answered at least that many.
func precision(named float64, got map[string][2]float64) float64 {
	all := 0.0
	for _, v := range got {
		all += v[0]
	}
	if all == 0 {
		return 0
	}
	return named / all
}
