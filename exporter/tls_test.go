package exporter

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/internal/otlpsink"
	"github.com/lbpath/lbpath/testbed/collectorproc"
	"github.com/lbpath/lbpath/testbed/testbedtest"
)

// pki is a throwaway certificate authority made at test time, so no key
// is ever committed: files are PEM in a temporary directory.
type pki struct {
	dir                   string
	CA, OtherCA           string // CA certificates: the one that signed everything, and a stranger
	ServerCert, ServerKey string // for 127.0.0.1 and localhost
	ClientCert, ClientKey string // client authentication, signed by CA
}

type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	ca := p.issue(t, "ca", &x509.Certificate{Subject: pkix.Name{CommonName: "lbpath test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil)
	p.CA = filepath.Join(p.dir, "ca.pem")
	p.issue(t, "other-ca", &x509.Certificate{Subject: pkix.Name{CommonName: "unrelated CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil)
	p.OtherCA = filepath.Join(p.dir, "other-ca.pem")
	p.issue(t, "server", &x509.Certificate{Subject: pkix.Name{CommonName: "lbpath-collector"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
	p.ServerCert, p.ServerKey = filepath.Join(p.dir, "server.pem"), filepath.Join(p.dir, "server-key.pem")
	p.issue(t, "client", &x509.Certificate{Subject: pkix.Name{CommonName: "lbpath-agent node1"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca)
	p.ClientCert, p.ClientKey = filepath.Join(p.dir, "client.pem"), filepath.Join(p.dir, "client-key.pem")
	return p
}

// issue signs tmpl with parent (self-signed when nil) and writes
// name.pem and name-key.pem.
func (p *pki) issue(t *testing.T, name string, tmpl *x509.Certificate, parent *issued) *issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatalf("issue %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(p.dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	return &issued{cert: cert, key: key}
}

// received reports whether the sink holds a span and an lbpath.connections
// point from node (each export in this test uses its own node name).
func received(sink *otlpsink.Sink, node string) (span, point bool) {
	for _, s := range sink.Spans() {
		if s.Resource["k8s.node.name"] == node {
			span = true
		}
	}
	for _, p := range sink.Points() {
		if p.Metric == MetricConnections && p.Resource["k8s.node.name"] == node {
			point = true
		}
	}
	return span, point
}

// exportOnce sends one connection from node through a fresh exporter and
// flushes both signals; it returns the exporter (shut down) and the flush
// error.
func exportOnce(t *testing.T, cfg Config, node string) (*Exporter, error) {
	t.Helper()
	cfg.Node = node
	cfg.MetricInterval = time.Hour // only the explicit flush exports
	cfg.Timeout = 2 * time.Second
	e, err := New(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatalf("exporter for %s: %v", node, err)
	}
	_, server := twoViews()
	server.Conn.Node = node
	e.Path(&server)
	e.Request(&path.Request{Req: flow.Request{Latency: 10 * time.Millisecond}, Pod: pod, Service: svc})
	ferr := e.ForceFlush(context.Background())
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = e.Shutdown(sctx)
	return e, ferr
}

func waitReceived(t *testing.T, sink *otlpsink.Sink, node string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		span, point := received(sink, node)
		if span && point {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after 10 s the sink has span=%v, lbpath.connections point=%v", node, span, point)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dropped returns the exporter's own loss counter for reason, as the
// lbpath.agent.dropped self-metric reports it.
func dropped(e *Exporter, reason string) uint64 {
	for _, d := range e.Drops() {
		if d.Stage == "export" && d.Reason == reason {
			return d.Count
		}
	}
	return 0
}

// TestOTLPOverTLSToCollector: the agent's exporter sends over real TLS
// (gRPC and HTTP) to the real lbpath-collector process, which forwards to
// a sink. With the right CA spans and metrics arrive; with a CA that did
// not sign the server's certificate nothing arrives and the failure is in
// the drop counters; with the collector requiring client certificates an
// exporter without one fails (counted) and one with it gets through.
func TestOTLPOverTLSToCollector(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the lbpath-collector binary")
	}
	ctx := context.Background()
	p := newPKI(t)
	sink := testbedtest.Sink(t)
	bin := testbedtest.CollectorBinary(t)
	start := func(tls *collectorproc.TLS) *collectorproc.Collector {
		col, err := collectorproc.Start(ctx, bin, collectorproc.Options{SinkHTTP: sink.HTTPAddr, TLS: tls})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(col.Stop)
		return col
	}
	serverTLS := start(&collectorproc.TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey})
	mutualTLS := start(&collectorproc.TLS{CertFile: p.ServerCert, KeyFile: p.ServerKey, ClientCAFile: p.CA})

	for _, proto := range []string{"grpc", "http/protobuf"} {
		endpoint := func(col *collectorproc.Collector) Config {
			if proto == "grpc" {
				return Config{Endpoint: col.OTLPGRPC, Protocol: proto}
			}
			return Config{Endpoint: col.OTLPHTTP, Protocol: proto}
		}
		tag := strings.SplitN(proto, "/", 2)[0]

		// expectRefused exports from node with cfg, expects the flush to fail,
		// the loss to be counted, and — after a good export through the same
		// collector has arrived — nothing from node at the sink.
		expectRefused := func(t *testing.T, cfg Config, node string, good Config) {
			e, err := exportOnce(t, cfg, node)
			if err == nil {
				t.Errorf("%s: flush succeeded; want a TLS failure", node)
			} else {
				t.Logf("%s: export failed as it should: %v", node, err)
			}
			if e.Stats.SpansFailed.Load() == 0 || dropped(e, "spans_failed") == 0 {
				t.Errorf("%s: failed spans not counted (spans_failed stat %d, self-metric %d)", node,
					e.Stats.SpansFailed.Load(), dropped(e, "spans_failed"))
			}
			if e.Stats.MetricsFailed.Load() == 0 || dropped(e, "metric_exports_failed") == 0 {
				t.Errorf("%s: failed metric export not counted", node)
			}
			// A later export that succeeds through the same collector and
			// sink bounds the wait: had the refused data been accepted, it
			// would have arrived first.
			if _, err := exportOnce(t, good, node+"-control"); err != nil {
				t.Fatalf("control export: %v", err)
			}
			waitReceived(t, sink, node+"-control")
			if span, point := received(sink, node); span || point {
				t.Errorf("%s: data arrived over a connection that should have failed (span=%v point=%v)", node, span, point)
			}
		}

		t.Run(tag+"/right-ca", func(t *testing.T) {
			cfg := endpoint(serverTLS)
			cfg.CAFile = p.CA
			e, err := exportOnce(t, cfg, tag+"-right-ca")
			if err != nil {
				t.Fatalf("flush over TLS: %v", err)
			}
			waitReceived(t, sink, tag+"-right-ca")
			if n := e.Stats.SpansFailed.Load() + e.Stats.MetricsFailed.Load(); n != 0 {
				t.Errorf("%d failures counted on a working TLS connection", n)
			}
		})
		t.Run(tag+"/wrong-ca", func(t *testing.T) {
			bad, good := endpoint(serverTLS), endpoint(serverTLS)
			bad.CAFile, good.CAFile = p.OtherCA, p.CA
			expectRefused(t, bad, tag+"-wrong-ca", good)
		})
		t.Run(tag+"/mtls-without-client-cert", func(t *testing.T) {
			bad, good := endpoint(mutualTLS), endpoint(mutualTLS)
			bad.CAFile = p.CA
			good.CAFile, good.CertFile, good.KeyFile = p.CA, p.ClientCert, p.ClientKey
			expectRefused(t, bad, tag+"-mtls-no-cert", good)
		})
		t.Run(tag+"/mtls-with-client-cert", func(t *testing.T) {
			cfg := endpoint(mutualTLS)
			cfg.CAFile, cfg.CertFile, cfg.KeyFile = p.CA, p.ClientCert, p.ClientKey
			e, err := exportOnce(t, cfg, tag+"-mtls-cert")
			if err != nil {
				t.Fatalf("flush over mTLS: %v", err)
			}
			waitReceived(t, sink, tag+"-mtls-cert")
			if n := e.Stats.SpansFailed.Load() + e.Stats.MetricsFailed.Load(); n != 0 {
				t.Errorf("%d failures counted on a working mTLS connection", n)
			}
		})
	}
	if t.Failed() {
		t.Logf("collector (TLS) log:\n%s\ncollector (mTLS) log:\n%s", serverTLS.Log(), mutualTLS.Log())
	}
}

// TestTLSConfigValidate: TLS material is checked at startup and every
// error names the flag at fault.
func TestTLSConfigValidate(t *testing.T) {
	p := newPKI(t)
	notPEM := filepath.Join(t.TempDir(), "not-pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"cert without key", Config{CertFile: p.ClientCert}, "otlp-cert"},
		{"key without cert", Config{KeyFile: p.ClientKey}, "otlp-key"},
		{"missing CA", Config{CAFile: filepath.Join(p.dir, "absent.pem")}, "otlp-ca"},
		{"CA is a directory", Config{CAFile: p.dir}, "otlp-ca"},
		{"CA is not PEM", Config{CAFile: notPEM}, "otlp-ca"},
		{"insecure with CA", Config{Insecure: true, CAFile: p.CA}, "otlp-insecure"},
		{"insecure with client cert", Config{Insecure: true, CertFile: p.ClientCert, KeyFile: p.ClientKey}, "otlp-insecure"},
		{"key of another certificate", Config{CertFile: p.ClientCert, KeyFile: p.ServerKey}, "otlp-cert"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") && !strings.HasPrefix(err.Error(), tc.field+" /") {
			t.Errorf("%s: err %v, want it to start with %s", tc.name, err, tc.field)
		}
	}
	good := Config{CAFile: p.CA, CertFile: p.ClientCert, KeyFile: p.ClientKey}
	if err := good.Validate(); err != nil {
		t.Errorf("valid TLS configuration rejected: %v", err)
	}
}
