// Command prebuild builds, once, the real third-party binaries the tests and
// the demo run — the Kubernetes control plane, kube-proxy and kubelet,
// containerd, CoreDNS, Prometheus, Jaeger and Helm — from the Go module proxy into ~/.cache/lbpath (or
// $LBPATH_CACHE). Each is skipped when already cached. The builds run
// concurrently: on two cores that keeps both busy through the link steps.
// "gateway" builds the lbpath-gateway image once into a scratch directory:
// not cached here (it is lbpath's own, built from the tree each time), but
// its third-party packages (collector v0.160, contrib loadbalancing
// exporter: ~2.5 min cold) then come from Go's build cache when the e2e
// tests build the images.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lbpath/lbpath/deploy/images"
	"github.com/lbpath/lbpath/deploy/manifests"
	"github.com/lbpath/lbpath/testbed/jaeger"
	"github.com/lbpath/lbpath/testbed/k8s"
	"github.com/lbpath/lbpath/testbed/prometheus"
)

func main() {
	only := flag.String("only", "", "comma-separated subset: kubernetes,containerd,coredns,prometheus,jaeger,helm,gateway (default all)")
	flag.Parse()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	builds := map[string]func() error{
		"kubernetes": func() error {
			_, err := k8s.EnsureBinaries(ctx, log)
			return err
		},
		"containerd": func() error { _, err := k8s.EnsureContainerd(ctx, log); return err },
		"coredns":    func() error { _, err := k8s.EnsureCoreDNS(ctx, log); return err },
		"prometheus": func() error { _, err := prometheus.EnsureBinary(ctx, log); return err },
		"jaeger":     func() error { _, err := jaeger.EnsureBinary(ctx, log); return err },
		"helm":       func() error { _, err := manifests.Helm(ctx); return err },
		"gateway":    func() error { return warmGateway(ctx) },
	}
	if *only != "" {
		keep := map[string]bool{}
		for _, n := range strings.Split(*only, ",") {
			if _, ok := builds[n]; !ok {
				fmt.Fprintf(os.Stderr, "prebuild: only: unknown binary %q\n", n)
				os.Exit(2)
			}
			keep[n] = true
		}
		for n := range builds {
			if !keep[n] {
				delete(builds, n)
			}
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := false
	for name, build := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := build()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = true
				fmt.Fprintf(os.Stderr, "prebuild: %s: %v\n", name, err)
				return
			}
			fmt.Fprintf(os.Stderr, "prebuild: %s ready (%.0fs)\n", name, time.Since(start).Seconds())
		}()
	}
	wg.Wait()
	if failed {
		os.Exit(1)
	}
}

// warmGateway builds the lbpath-gateway image with the flags the tests' image
// builds use, into a directory it then removes.
func warmGateway(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "lbpath-prebuild-gateway-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, im := range images.Product {
		if im.Name == "lbpath-gateway" {
			_, err := images.Build(ctx, images.Options{OutDir: dir, Images: []images.Image{im}})
			return err
		}
	}
	return fmt.Errorf("no lbpath-gateway in images.Product")
}
