// Command k8sbins builds the control-plane binaries the Kubernetes test bed
// runs (kube-apiserver, kube-controller-manager, kube-proxy, etcd) into the
// cache, so that a later test run does not spend minutes building them:
//
//	go run ./testbed/k8s/cmd/k8sbins
//
// It prints the directory holding them.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/lbpath/lbpath/testbed/k8s"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b, err := k8s.EnsureBinaries(ctx, log)
	if err != nil {
		log.Error("build kubernetes binaries", "err", err)
		os.Exit(1)
	}
	fmt.Println(b.Dir)
}
