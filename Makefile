# The README's two commands are the entry points; these targets wrap them and
# the release build.
.PHONY: demo test bench build images

demo:
	./scripts/demo.sh

test:
	./scripts/test.sh

# Full-scale benchmarks (root, ~15 min): see docs/PERFORMANCE.md.
bench:
	./scripts/bench.sh

# Release binaries: no symbol table or DWARF (about 12 MiB less resident
# binary per agent), reproducible paths.
build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o .bin/ ./cmd/lbpath-agent ./cmd/lbpath-collector ./cmd/lbpath

# Container images of lbpath-agent and lbpath-collector as OCI archives in
# .bin/images (no Docker daemon, no network; reproducible: same tree, same
# digests). Flags: IMAGES_FLAGS="-registry r -tag t -out dir".
images:
	go run ./deploy/images/cmd/images $(IMAGES_FLAGS)
