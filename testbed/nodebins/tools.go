//go:build tools

// Package nodebins pins the container runtime a real testbed node runs:
// containerd v2 with its runc shim and ctr. It is its own module because
// containerd pins its own gRPC, OpenTelemetry and Kubernetes API versions;
// the build tag keeps the blank imports out of every ordinary build.
package nodebins

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
