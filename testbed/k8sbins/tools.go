//go:build tools

// Package k8sbins pins the Kubernetes and etcd commands the k8s test bed
// runs. It is a separate module so that k8s.io/kubernetes and its large
// dependency graph never enter the product's go.mod; the build tag keeps
// the blank imports out of every ordinary build.
package k8sbins

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
