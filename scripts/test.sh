#!/usr/bin/env bash
# Sets up and runs every lbpath test: formatting, vet, generated-code drift,
# unit tests, and the root e2e suite against the real kernel, a real
# Kubernetes control plane and kube-proxy, the real collector, Prometheus and
# Jaeger. CI runs this.
# LBPATH_REQUIRE_E2E=1 turns every "cannot run here" skip into a failure,
# so the e2e suite can never pass by being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
./scripts/setup.sh

echo "== building third-party binaries in the background (cached in ~/.cache/lbpath; cold: ~30 min on 2 cores)"
prelog=$(mktemp)
go run ./testbed/cmd/prebuild >"$prelog" 2>&1 &
prepid=$!

echo "== gofmt / vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...
# The gateway is its own module (collector v0.160), outside ./...
(cd cmd/lbpath-gateway && go vet ./...)

echo "== generated code drift (bpf2go)"
./scripts/check-generated.sh
./scripts/check-committed.sh

echo "== compiling every test binary (in parallel; the e2e run below is serial)"
go test -count=1 -run '^$' ./... >/dev/null

if ! wait "$prepid"; then
  echo "prebuild failed:" >&2; cat "$prelog" >&2; exit 1
fi
grep '^prebuild:' "$prelog" || true
echo "   ($(( $(date +%s) - t0 ))s so far)"

echo "== tests (root e2e included)"
log=$(mktemp)
set +e
LBPATH_REQUIRE_E2E=1 go test -p 1 -count=1 -timeout 60m -v ./... >"$log" 2>&1
rc=$?
set -e
grep -E '^(ok|FAIL|--- FAIL|panic:|\s+--- FAIL)' "$log" || true
if [ $rc -ne 0 ]; then
  echo "tests failed; full log: $log" >&2
  grep -B2 -A20 -E -- '--- FAIL' "$log" | head -200 >&2 || true
  exit $rc
fi
if grep -q -- '--- SKIP' "$log"; then
  echo "a test was skipped; CI must run everything:" >&2
  grep -- '--- SKIP' -A2 "$log" >&2
  exit 1
fi

echo "== benchmarks compile and run once"
go test -run '^$' -bench . -benchtime 1x ./... >/dev/null
echo "all tests passed in $(( $(date +%s) - t0 ))s"
