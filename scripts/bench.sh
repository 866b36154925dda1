#!/usr/bin/env bash
# Runs every benchmark at the sizes issue 6 names and keeps the raw output
# (root; sets itself up like the test command). Results land in
# bench/results-<date>.txt; docs/PERFORMANCE.md quotes them. ~15 min.
#   ./scripts/bench.sh            all of them
#   ./scripts/bench.sh Memory     only benchmarks matching a regexp
# The on/off harness (e2e BenchmarkOverheadOnOff; docs/PERFORMANCE.md,
# "Issue 14") also measures, in the same run:
#   the previous release: the latest v* tag, built from a temporary git
#     worktree; LBPATH_BENCH_BASELINE=<ref> picks another ref
#   a peer agent: LBPATH_BENCH_PEER='<shell command>' runs it (with exec) in
#     the agent's slot; $LBPATH_BENCH_NODE_NETNS is the node's namespace, e.g.
#     LBPATH_BENCH_PEER='nsenter --net=$LBPATH_BENCH_NODE_NETNS env SAMPLING=1 /opt/netobserv/agent'
#   LBPATH_BENCH_AGENT_ARGS='--output jsonl' adds flags to both lbpath slots;
#   LBPATH_BENCH_PROFILE=<dir> writes this tree's agent's CPU profiles there
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
go run ./testbed/cmd/prebuild -only kubernetes >/dev/null
pattern="${1:-.}"
out="bench/results-$(date -u +%Y%m%d-%H%M%S).txt"
mkdir -p bench
{
  echo "# $(date -u) kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
  # User space: per-event figures need many iterations; the processors'
  # batches are large (40k points), so a few seconds each.
  go test -run '^$' -bench "$pattern" -skip IndexMemory -benchtime 20000x -benchmem ./agent/... ./exporter/
  go test -run '^$' -bench "IndexMemory.*$pattern|$pattern.*IndexMemory" -benchtime 3x ./agent/kube/
  go test -run '^$' -bench "$pattern" -benchtime 3s -benchmem ./processor/...
  # The collector's lbsignals receiver: one collection of a large cluster
  # (tens of ms each), so a few seconds.
  go test -run '^$' -bench "$pattern" -benchtime 3s -benchmem ./receiver/...
  # Real kernel: cost per program over 2000 fresh connections, then the
  # whole-agent benchmarks once each at full scale.
  export LBPATH_REQUIRE_E2E=1 LBPATH_BENCH_FULL=1
  go test -run '^$' -bench "KernelCost.*$pattern|$pattern.*KernelCost" -benchtime 2000x -timeout 30m -v ./e2e/
  go test -run '^$' -bench "$pattern" -skip KernelCost -benchtime 1x -timeout 60m -v ./e2e/
} 2>&1 | tee "$out"
echo "results: $out"
