package lbsignals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
)

// probeTarget is one Service's healthCheckNodePort on one node.
type probeTarget struct {
	Namespace, Service, Node string
	// Addr is the node's InternalIP and the Service's healthCheckNodePort;
	// invalid when the node has no InternalIP.
	Addr netip.AddrPort
}

// probeResult is kube-proxy's answer, or why there is none.
type probeResult struct {
	probeTarget
	// Status is the HTTP status code (kube-proxy: 200 when the node has
	// local endpoints and kube-proxy is healthy, else 503); 0 on error.
	Status int
	// LocalEndpoints is the answer's localEndpoints; -1 when the body
	// did not carry it.
	LocalEndpoints int
	// ErrorType classifies a failed probe (error.type); "" on success.
	ErrorType string
}

// Error types of failed probes (error.type values).
const (
	errNoInternalIP    = "no_internal_ip"     // the Node has no InternalIP to probe
	errTimeout         = "timeout"            // no answer within health_check.timeout
	errRefused         = "connection_refused" // nothing listens on the node port
	errConnection      = "connection"         // any other dial or transport error
	errInvalidResponse = "invalid_response"   // not kube-proxy's JSON, or another Service's
)

// maxBody bounds what is read of an answer; kube-proxy's is ~120 bytes.
const maxBody = 64 << 10

// kubeProxyAnswer is the JSON kube-proxy's service health server writes
// (pkg/proxy/healthcheck in kubernetes).
type kubeProxyAnswer struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints *int `json:"localEndpoints"`
}

// prober probes health-check node ports with bounded concurrency.
type prober struct {
	client      *http.Client
	concurrency int
}

func newProber(cfg HealthCheckConfig) *prober {
	tr := &http.Transport{
		Proxy:             nil,  // node addresses are never reached through a proxy
		DisableKeepAlives: true, // one request per node and interval: keep no idle sockets
		DialContext:       (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
	}
	return &prober{client: &http.Client{Transport: tr, Timeout: cfg.Timeout}, concurrency: cfg.Concurrency}
}

// probeAll probes every target and returns one result per target, in order.
func (p *prober) probeAll(ctx context.Context, targets []probeTarget) []probeResult {
	out := make([]probeResult, len(targets))
	sem := make(chan struct{}, p.concurrency)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i] = p.probe(ctx, t)
		}()
	}
	wg.Wait()
	return out
}

// probe asks one node's kube-proxy about one Service, as a cloud load
// balancer's health check does: GET / on the health-check node port.
func (p *prober) probe(ctx context.Context, t probeTarget) probeResult {
	r := probeResult{probeTarget: t, LocalEndpoints: -1}
	if !t.Addr.IsValid() {
		r.ErrorType = errNoInternalIP
		return r
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.Addr.String()+"/", nil)
	if err != nil {
		r.ErrorType = errConnection
		return r
	}
	resp, err := p.client.Do(req)
	if err != nil {
		r.ErrorType = classify(err)
		return r
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		r.ErrorType = classify(err)
		return r
	}
	var a kubeProxyAnswer
	if json.Unmarshal(body, &a) != nil || a.LocalEndpoints == nil ||
		a.Service.Namespace != t.Namespace || a.Service.Name != t.Service {
		// Something answered, but not kube-proxy about this Service: its
		// status code says nothing about the Service's endpoints.
		r.ErrorType = errInvalidResponse
		return r
	}
	r.Status, r.LocalEndpoints = resp.StatusCode, *a.LocalEndpoints
	return r
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errRefused
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return errTimeout
	}
	return errConnection
}

// nodeAddr is the node's first InternalIP with the port, or the zero
// AddrPort when it has none.
func nodeAddr(addrs []string, port int32) netip.AddrPort {
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil {
			return netip.AddrPortFrom(ip.Unmap(), uint16(port))
		}
	}
	return netip.AddrPort{}
}

func (r probeResult) String() string {
	if r.ErrorType != "" {
		return fmt.Sprintf("%s/%s on %s: %s", r.Namespace, r.Service, r.Node, r.ErrorType)
	}
	return fmt.Sprintf("%s/%s on %s: %s, localEndpoints %d", r.Namespace, r.Service, r.Node, strconv.Itoa(r.Status), r.LocalEndpoints)
}
