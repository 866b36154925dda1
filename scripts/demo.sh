#!/usr/bin/env bash
# Sets up and runs `lbpath demo` (root): a real Kubernetes control plane and
# kube-proxy over a 2-node cluster in network namespaces, the lbpath agents,
# the lbpath-collector and Prometheus, skewed traffic, a slower rollout and
# an Ingress (a real nginx) in front of the Service,
# a per-pod table and `lbpath explain`; then tears everything down.
# First run builds the control plane and Prometheus from the Go module proxy
# (cold: ~10 min); later runs take about 20 s. `--no-kube` runs the small
# demo (kube-proxy-style NAT written directly, no names) in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p .bin
go build -o .bin/ ./cmd/lbpath ./cmd/lbpath-collector
case " $* " in
  *" --no-kube "*) ;;
  *) go run ./testbed/cmd/prebuild -only kubernetes,prometheus ;;
esac
exec .bin/lbpath demo "$@"
