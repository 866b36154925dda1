#!/usr/bin/env bash
# Sets up (apt packages) and runs `lbpath demo`: a 2-node cluster in network
# namespaces with kube-proxy NAT, the node agents, skewed traffic, a per-pod
# table, teardown. Needs root. Extra flags go to `lbpath demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
go run ./cmd/lbpath demo "$@"
