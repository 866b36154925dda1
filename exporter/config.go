// Package exporter turns named connections (agent/path) into OpenTelemetry
// spans and metrics and sends them over OTLP (gRPC or HTTP).
package exporter

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Config configures OTLP export. Empty fields fall back to the standard
// OTEL_EXPORTER_OTLP_* environment variables, then to the SDK defaults.
type Config struct {
	// Endpoint is host:port for gRPC or a URL for HTTP.
	Endpoint string
	// Protocol is grpc or http/protobuf.
	Protocol string
	// Insecure disables TLS.
	Insecure bool
	// Headers are sent with every export (e.g. an auth token).
	Headers map[string]string
	// Compression is gzip or none.
	Compression string
	// CAFile verifies the server; CertFile and KeyFile enable mTLS.
	CAFile, CertFile, KeyFile string
	// Timeout bounds one export attempt. Default 10s.
	Timeout time.Duration
	// MetricInterval is how often metrics are pushed. Default 10s.
	MetricInterval time.Duration
	// QueueSize bounds connections waiting to become spans; when the
	// collector is slow or down, what does not fit is dropped and counted.
	// Default 8192.
	QueueSize int
	// ClientAddresses is keep, hash or drop: what client.address carries.
	// Client IPs are personal data in many jurisdictions.
	ClientAddresses string
	// Traces and Metrics switch the two signals. Both on by default
	// (use NoTraces / NoMetrics to switch off).
	NoTraces, NoMetrics bool
	// Cluster is k8s.cluster.name on every resource ("" to omit).
	Cluster string
	// Node is k8s.node.name of the agent's resource.
	Node string
	// Temporality is cumulative (default) or delta; LatencyHistogram is
	// exponential (default) or explicit (views.go).
	Temporality, LatencyHistogram string
	// MaxSeries bounds the attribute sets of each per-pod metric (default
	// DefaultMaxSeries); SeriesExpiry is how long a set may go without a
	// measurement before it counts as stale (default DefaultSeriesExpiry;
	// series.go).
	MaxSeries    int
	SeriesExpiry time.Duration
	// now is the series clock (tests; nil: time.Now).
	now func() time.Time
	// Sampling decides which connections become spans (sampling.go).
	Sampling Sampling
}

// Validate checks the configuration and names the field at fault.
func (c *Config) Validate() error {
	if err := c.validateProtocol(); err != nil {
		return err
	}
	switch c.Compression {
	case "", "gzip", "none":
	default:
		return fmt.Errorf("otlp-compression: %q is not gzip or none", c.Compression)
	}
	switch c.ClientAddresses {
	case "", "keep", "hash", "drop":
	default:
		return fmt.Errorf("client-addresses: %q is not keep, hash or drop", c.ClientAddresses)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("otlp timeout: %v must not be negative", c.Timeout)
	}
	// Zero takes the default; a positive interval below minMetricInterval
	// would make the agent push metrics in a tight loop.
	if c.MetricInterval < 0 || (c.MetricInterval > 0 && c.MetricInterval < minMetricInterval) {
		return fmt.Errorf("metric-interval: %v must be at least %v", c.MetricInterval, minMetricInterval)
	}
	// The queue is allocated whole at start: a huge one is memory the
	// agent takes before it has seen a single connection.
	if c.QueueSize < 0 || c.QueueSize > maxQueueSize {
		return fmt.Errorf("export-queue: %d must be between 1 and %d", c.QueueSize, maxQueueSize)
	}
	if c.CertFile != "" && c.KeyFile == "" {
		return errors.New("otlp-cert: given without otlp-key; mTLS needs both")
	}
	if c.KeyFile != "" && c.CertFile == "" {
		return errors.New("otlp-key: given without otlp-cert; mTLS needs both")
	}
	if c.Insecure && (c.CAFile != "" || c.CertFile != "") {
		return errors.New("otlp-insecure: cannot be combined with otlp-ca / otlp-cert / otlp-key (TLS material for a connection without TLS)")
	}
	if err := c.Sampling.validate(); err != nil {
		return err
	}
	if err := c.validateMetrics(); err != nil {
		return err
	}
	if err := c.validateEndpoint(); err != nil {
		return err
	}
	if err := validateEnv(); err != nil {
		return err
	}
	// Read and parse the files now: a CA that cannot be read or a key that
	// does not match its certificate would otherwise surface only as
	// failed exports, long after startup.
	if _, err := c.tlsConfig(); err != nil {
		return err
	}
	return nil
}

// Bounds of the fields Validate checks.
const (
	minMetricInterval = 100 * time.Millisecond
	maxQueueSize      = 1 << 20
)

// ParseHeaders parses "k1=v1,k2=v2". Names and values are checked against
// what both gRPC metadata and HTTP accept: otherwise every export would be
// refused by the client library, not the agent's start.
func ParseHeaders(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, fmt.Errorf("otlp-headers: %q is not key=value", kv)
		}
		if err := checkHeader(k, v); err != nil {
			return nil, fmt.Errorf("otlp-headers: %w", err)
		}
		out[k] = v
	}
	return out, nil
}

// checkHeader applies gRPC's metadata rules (which are stricter than
// HTTP's): names of letters, digits, '-', '_' and '.', not the reserved
// grpc- prefix; values of printable ASCII.
func checkHeader(k, v string) error {
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("header name %q: character %q is not allowed (letters, digits, '-', '_', '.')", k, r)
		}
	}
	if strings.HasPrefix(strings.ToLower(k), "grpc-") {
		return fmt.Errorf("header name %q: the grpc- prefix is reserved", k)
	}
	for _, r := range v {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("header %q: value has a character outside printable ASCII (%q)", k, r)
		}
	}
	return nil
}

func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("otlp-ca: read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("otlp-ca: %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("otlp-cert / otlp-key: load client key pair: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
