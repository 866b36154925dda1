package main

// The images are a static binary on an empty base: no CA bundle in
// /etc/ssl. Without these roots, OTLP over TLS to a publicly signed endpoint
// (a hosted trace or metrics backend) fails to verify. The fallback is used
// only when the system has no roots of its own, so a mounted bundle or
// SSL_CERT_FILE still wins.
import _ "golang.org/x/crypto/x509roots/fallback"
