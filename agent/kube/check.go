package kube

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
)

// The files rest.InClusterConfig reads (fixed paths in client-go).
const (
	inClusterToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	inClusterCA    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// Check loads the configuration the agent will reach the API server with
// (the kubeconfig, or the in-cluster service account) and builds a client
// from it without contacting the server. A configuration that is missing
// or broken would otherwise surface only as watches failing forever, so
// the agent calls this at start and exits 2 with its message, which starts
// with the flag ("kubeconfig:") or "in-cluster config:".
func (c Config) Check() error {
	var rc *rest.Config
	var err error
	if c.Kubeconfig != "" {
		rc, err = c.checkKubeconfig()
	} else {
		rc, err = checkInCluster()
	}
	if err != nil {
		return err
	}
	if _, err := kubernetes.NewForConfig(rc); err != nil {
		return fmt.Errorf("%s: build a client: %w", c.source(), err)
	}
	return nil
}

func (c Config) source() string {
	if c.Kubeconfig != "" {
		return "kubeconfig"
	}
	return "in-cluster config"
}

func (c Config) checkKubeconfig() (*rest.Config, error) {
	data, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if _, err := clientcmd.Load(data); err != nil {
		return nil, fmt.Errorf("kubeconfig: %s does not parse: %w", c.Kubeconfig, err)
	}
	// Resolves the current context and validates it, including that the
	// certificate and key files it names can be read.
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %s: %w", c.Kubeconfig, err)
	}
	return rc, nil
}

// checkInCluster names what rest.InClusterConfig needs and lacks; it only
// logs an unreadable CA and goes on without it, so that is checked here.
func checkInCluster() (*rest.Config, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	switch {
	case host == "" && port == "":
		return nil, errors.New("in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (outside a cluster give --kubeconfig, or --no-kube)")
	case host == "":
		return nil, errors.New("in-cluster config: KUBERNETES_SERVICE_HOST is not set (KUBERNETES_SERVICE_PORT is)")
	case port == "":
		return nil, errors.New("in-cluster config: KUBERNETES_SERVICE_PORT is not set (KUBERNETES_SERVICE_HOST is)")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("in-cluster config: KUBERNETES_SERVICE_PORT %q is not a port", port)
	}
	if tok, err := os.ReadFile(inClusterToken); err != nil {
		return nil, fmt.Errorf("in-cluster config: service account token: %w (is automountServiceAccountToken off?)", err)
	} else if len(tok) == 0 {
		return nil, fmt.Errorf("in-cluster config: service account token %s is empty", inClusterToken)
	}
	if _, err := certutil.NewPool(inClusterCA); err != nil {
		return nil, fmt.Errorf("in-cluster config: cluster CA: %w", err)
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	return rc, nil
}
