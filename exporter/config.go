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
}

// Validate checks the configuration and names the field at fault.
func (c *Config) Validate() error {
	switch c.Protocol {
	case "", "grpc", "http/protobuf":
	default:
		return fmt.Errorf("otlp-protocol: %q is not grpc or http/protobuf", c.Protocol)
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
	if c.Timeout < 0 || c.MetricInterval < 0 || c.QueueSize < 0 {
		return errors.New("otlp-timeout, metric-interval and queue-size must not be negative")
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
	// Read and parse the files now: a CA that cannot be read or a key that
	// does not match its certificate would otherwise surface only as
	// failed exports, long after startup.
	if _, err := c.tlsConfig(); err != nil {
		return err
	}
	return nil
}

// ParseHeaders parses "k1=v1,k2=v2".
func ParseHeaders(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("otlp-headers: %q is not key=value", kv)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
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
