// Package nodebins is a tools-only module: it exists so that "go build" can
// resolve containerd, containerd-shim-runc-v2 and ctr at a fixed version.
// See package github.com/lbpath/lbpath/testbed/k8s, which builds them from
// here for the testbed's real nodes.
package nodebins
