// Package k8sbins is a tools-only module: it exists so that "go build" can
// resolve kube-apiserver, kube-controller-manager, kube-scheduler,
// kube-proxy, kubelet and etcd at fixed versions. See package
// github.com/lbpath/lbpath/testbed/k8s, which builds them from here.
package k8sbins
