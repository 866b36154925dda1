package exporter

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// The OTLP SDK also reads OTEL_EXPORTER_OTLP_* variables for what the
// flags leave unset. A value it cannot use it logs once and ignores: a CA
// file that does not parse leaves the system roots, "True " leaves TLS on,
// a header without "=" is dropped. The export then fails, or goes out
// without what was asked, long after start. validateEnv reads them the
// way the SDK does and names the variable instead.

// envSignals are the prefixes after OTEL_EXPORTER_OTLP_: the general
// variables and the per-signal ones the SDK prefers.
var envSignals = []string{"", "TRACES_", "METRICS_"}

func validateEnv() error {
	for _, sig := range envSignals {
		name := func(s string) string { return "OTEL_EXPORTER_OTLP_" + sig + s }
		if v := os.Getenv(name("INSECURE")); v != "" && !strings.EqualFold(v, "true") && !strings.EqualFold(v, "false") {
			return fmt.Errorf("%s: %q is not true or false (the SDK would take it as false)", name("INSECURE"), v)
		}
		if v := os.Getenv(name("COMPRESSION")); v != "" && v != "gzip" && v != "none" {
			return fmt.Errorf("%s: %q is not gzip or none (the SDK would send uncompressed)", name("COMPRESSION"), v)
		}
		if v := os.Getenv(name("HEADERS")); v != "" {
			if err := checkEnvHeaders(v); err != nil {
				return fmt.Errorf("%s: %w", name("HEADERS"), err)
			}
		}
		if p := os.Getenv(name("CERTIFICATE")); p != "" {
			pem, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("%s: %w", name("CERTIFICATE"), err)
			}
			if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				return fmt.Errorf("%s: %s holds no PEM certificate", name("CERTIFICATE"), p)
			}
		}
		cert, key := os.Getenv(name("CLIENT_CERTIFICATE")), os.Getenv(name("CLIENT_KEY"))
		switch {
		case cert != "" && key == "":
			return fmt.Errorf("%s: given without %s; mTLS needs both", name("CLIENT_CERTIFICATE"), name("CLIENT_KEY"))
		case key != "" && cert == "":
			return fmt.Errorf("%s: given without %s; mTLS needs both", name("CLIENT_KEY"), name("CLIENT_CERTIFICATE"))
		case cert != "":
			if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
				return fmt.Errorf("%s / %s: %w", name("CLIENT_CERTIFICATE"), name("CLIENT_KEY"), err)
			}
		}
		// The agent picks one exporter for both signals from
		// --otlp-protocol or OTEL_EXPORTER_OTLP_PROTOCOL; a per-signal
		// protocol would be silently ignored.
		if sig != "" && os.Getenv(name("PROTOCOL")) != "" {
			return fmt.Errorf("%s: not supported by lbpath-agent; set --otlp-protocol or %s", name("PROTOCOL"), envProtocol)
		}
	}
	return nil
}

// checkEnvHeaders reads "k=v,k2=v2" as the SDK does (values URL-escaped)
// and applies the flag's rules to each pair.
func checkEnvHeaders(s string) error {
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return fmt.Errorf("%q is not key=value", kv)
		}
		uv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("header %q: value is not URL-escaped: %w", k, err)
		}
		if err := checkHeader(k, uv); err != nil {
			return err
		}
	}
	return nil
}
