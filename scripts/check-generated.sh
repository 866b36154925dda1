#!/usr/bin/env bash
# Regenerates the bpf2go output and fails if it differs from what is
# committed: the .go and .o must always come from their .bpf.c.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null 2>&1; then
  echo "check-generated: clang missing, cannot regenerate" >&2
  exit 1
fi
files=(agent/bpf/lbpath_bpfel.go agent/bpf/lbpath_bpfel.o agent/bpf/udp_bpfel.go agent/bpf/udp_bpfel.o
  agent/bpf/connect_bpfel.go agent/bpf/connect_bpfel.o testbed/socketlb/translator_bpfel.go testbed/socketlb/translator_bpfel.o
  testbed/tcnodeport/nodeport_bpfel.go testbed/tcnodeport/nodeport_bpfel.o)
before=$(sha256sum "${files[@]}")
go generate ./agent/bpf/ ./testbed/socketlb/ ./testbed/tcnodeport/
after=$(sha256sum "${files[@]}")
if [ "$before" != "$after" ]; then
  echo "generated eBPF code drifted from its .bpf.c (agent/bpf, testbed/socketlb, testbed/tcnodeport); commit the regenerated files:" >&2
  git status --short -- agent/bpf testbed/socketlb testbed/tcnodeport >&2 || true
  exit 1
fi
echo "generated eBPF code is up to date"
