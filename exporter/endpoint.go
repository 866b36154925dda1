package exporter

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
)

// The OTLP SDK takes an endpoint it cannot parse without complaint: gRPC
// dials the string as given and every export fails, and an environment
// variable that does not parse is logged once and replaced by
// localhost:4317. Both only show as failed exports, long after start, so
// the endpoint is checked here, where Validate can name the flag.

// envEndpoints are the variables the SDK reads for the endpoint when no
// endpoint is given: the signal-specific ones win over the general one.
var envEndpoints = []string{
	"OTEL_EXPORTER_OTLP_ENDPOINT",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
}

// envProtocol is the standard variable for the protocol; Config.Protocol,
// when set, wins over it.
const envProtocol = "OTEL_EXPORTER_OTLP_PROTOCOL"

// protocol returns the protocol in effect (grpc when nothing is set) and
// the name of the setting it came from, for messages.
func (c *Config) protocol() (proto, from string) {
	if c.Protocol != "" {
		return c.Protocol, "otlp-protocol"
	}
	if v := os.Getenv(envProtocol); v != "" {
		return v, envProtocol
	}
	return "grpc", "otlp-protocol"
}

func (c *Config) isHTTP() bool {
	p, _ := c.protocol()
	return p == "http/protobuf"
}

// validateProtocol checks the protocol in effect, wherever it came from.
func (c *Config) validateProtocol() error {
	p, from := c.protocol()
	switch p {
	case "grpc", "http/protobuf":
		return nil
	case "http/json":
		return fmt.Errorf("%s: %q is not supported by lbpath-agent (grpc or http/protobuf)", from, p)
	}
	return fmt.Errorf("%s: %q is not grpc or http/protobuf", from, p)
}

// validateEndpoint checks the endpoint that export will use: the
// Endpoint field, or when it is empty the OTEL_EXPORTER_OTLP_*ENDPOINT
// variables the SDK falls back to.
func (c *Config) validateEndpoint() error {
	if c.Endpoint == "" {
		for _, name := range envEndpoints {
			if v := os.Getenv(name); v != "" {
				if _, err := parseEndpointURL(v); err != nil {
					return fmt.Errorf("%s: %w (the variable is a URL such as http://collector:4317)", name, err)
				}
			}
		}
		return nil
	}
	if strings.Contains(c.Endpoint, "$(") {
		return fmt.Errorf("otlp-endpoint: %q was not expanded: the Service it names did not exist when the pod started; the container's restart gets its address", c.Endpoint)
	}
	if !c.isHTTP() {
		if strings.Contains(c.grpcEndpoint(), "://") {
			return fmt.Errorf("otlp-endpoint: %q is a URL; with grpc give host:port (e.g. collector:4317) or Kubernetes' tcp://host:port, or use --otlp-protocol http/protobuf", c.Endpoint)
		}
		if err := checkHostPort(c.grpcEndpoint()); err != nil {
			return fmt.Errorf("otlp-endpoint: %w", err)
		}
		return nil
	}
	if !strings.Contains(c.Endpoint, "://") {
		if err := checkHostPort(c.Endpoint); err != nil {
			return fmt.Errorf("otlp-endpoint: %w (or give a URL: http[s]://host[:port][/prefix])", err)
		}
		return nil
	}
	u, err := parseEndpointURL(c.Endpoint)
	if err != nil {
		return fmt.Errorf("otlp-endpoint: %w", err)
	}
	for _, signal := range []string{"/v1/traces", "/v1/metrics"} {
		if strings.HasSuffix(strings.TrimSuffix(u.Path, "/"), signal) {
			return fmt.Errorf("otlp-endpoint: %q ends in %s, but it is a base URL: lbpath appends /v1/traces and /v1/metrics itself", c.Endpoint, signal)
		}
	}
	switch {
	case u.Scheme == "https" && c.Insecure:
		return fmt.Errorf("otlp-insecure: contradicts the https:// endpoint %q", c.Endpoint)
	case u.Scheme == "http" && (c.CAFile != "" || c.CertFile != ""):
		return fmt.Errorf("otlp-endpoint: %q is plain http, so otlp-ca / otlp-cert / otlp-key would not be used; give an https:// URL", c.Endpoint)
	}
	return nil
}

// grpcEndpoint is Endpoint as gRPC dials it: host:port, also when given as
// tcp://host:port, the form of Kubernetes' Service link variable
// <SERVICE>_PORT_<port>_TCP. The chart gives the agents that variable, the
// collector Service's ClusterIP (bracketed when IPv6), so their exports
// need no DNS lookup: an agent measuring the cluster DNS must not add its
// own queries to it.
func (c *Config) grpcEndpoint() string { return strings.TrimPrefix(c.Endpoint, "tcp://") }

// parseEndpointURL accepts http[s]://host[:port][/path] and nothing the
// SDK would silently drop (user info, query, fragment).
func parseEndpointURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL: %w", s, unwrapURLError(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: scheme must be http or https", s)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%q carries credentials, which OTLP would not send; use --otlp-headers", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q has a query or fragment, which OTLP would drop", s)
	}
	if err := checkHost(u.Hostname()); err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	if p := u.Port(); p != "" {
		if err := checkPort(p); err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
	}
	return u, nil
}

// unwrapURLError drops url.Error's repetition of the operation and input.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// checkHostPort accepts host:port with a non-empty host and a numeric port.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, unwrapAddrError(err))
	}
	if err := checkHost(host); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	if err := checkPort(port); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	return nil
}

func unwrapAddrError(err error) error {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return errors.New(ae.Err)
	}
	return err
}

// checkHost accepts an IP address or a DNS name (RFC 1123 labels; '_' as
// some service names use it).
func checkHost(h string) error {
	if h == "" {
		return errors.New("no host")
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if len(h) > 253 {
		return fmt.Errorf("host name longer than 253 characters")
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q has an empty or over-long label", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("host %q is neither an IP address nor a DNS name (character %q)", h, r)
			}
		}
	}
	return nil
}

func checkPort(p string) error {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	return nil
}

// httpURL turns a validated http/protobuf endpoint into the signal's URL:
// host:port gets a scheme from Insecure, and a URL is a base to which the
// signal path is appended (as the SDK does with OTEL_EXPORTER_OTLP_ENDPOINT).
func httpURL(endpoint string, insecure bool, signal string) string {
	if !strings.Contains(endpoint, "://") {
		scheme := "https://"
		if insecure {
			scheme = "http://"
		}
		return scheme + endpoint + signal
	}
	u, err := url.Parse(endpoint)
	if err != nil { // Validate rejected it already; keep the SDK's own error path
		return endpoint
	}
	u.Path = path.Join("/", u.Path, signal)
	return u.String()
}
