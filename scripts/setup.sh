#!/usr/bin/env bash
# Installs what lbpath's demo and tests need on a fresh Debian 12 machine
# with Go preinstalled. Idempotent: does nothing when everything is there.
set -euo pipefail

need=()
for pair in clang:clang llvm-strip:llvm bpftool:bpftool iptables:iptables nft:nftables conntrack:conntrack ip:iproute2 runc:runc /usr/lib/cni/bridge:containernetworking-plugins; do
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
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go is not installed (need Go 1.26)" >&2; exit 1; }
