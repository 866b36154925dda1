//go:build tools

// Package helmbin pins the Helm CLI used to render deploy/helm/lbpath. It is
// its own module so that Helm's dependency tree never enters the product's
// go.mod; build with `go build -o /tmp/helm helm.sh/helm/v3/cmd/helm` here.
package helmbin

import _ "helm.sh/helm/v3/cmd/helm"
