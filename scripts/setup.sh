#!/usr/bin/env bash
# Installs what lbpath's demo and tests need on a fresh Debian 12 machine
# with Go preinstalled. Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
for pair in clang:clang llvm-strip:llvm bpftool:bpftool iptables:iptables nft:nftables conntrack:conntrack ip:iproute2 runc:runc /usr/lib/cni/bridge:containernetworking-plugins nginx:nginx wrk:wrk; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${need[*]}) and not root; run as root" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # nginx is the testbed's ingress proxy (testbed/k8s UpIngress), started
  # in a pod's namespace by the tests; on a host without a policy-rc.d,
  # keep apt from starting it as a host service on port 80.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$policy" ] || rm -f "$policy"
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go is not installed (need Go 1.26)" >&2; exit 1; }
# The Gateway API's CRDs (testbed/k8s UpGateway reads them from the module
# cache; keep in step with k8s.GatewayAPIVersion).
go mod download sigs.k8s.io/gateway-api@v1.6.3
