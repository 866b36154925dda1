// Package k8s puts a real Kubernetes control plane and the real kube-proxy
// into the testbed: etcd, kube-apiserver and kube-controller-manager run on
// the host (built from the Go module proxy by EnsureBinaries), one
// kube-proxy runs in every node namespace as a testbed.NATWriter, and a
// Kubelet stand-in schedules Pods and turns them into pod namespaces with
// the testbed's HTTP server.
//
// Up assembles all of it around Deployment web and Services web and empty,
// with the same addresses the plain testbed uses, so tests written against
// testbed.Cluster's accessors keep working while Deployments, rollouts and
// EndpointSlices become real.
//
// With Options.RealNodes the stand-in gives way to real nodes: in every node
// namespace containerd (built by EnsureNodeBinaries) with runc and the bridge
// CNI plugin, and the real kubelet, in a private mount namespace of the node
// (see RealNode); kube-scheduler places the pods, CoreDNS serves the cluster
// domain, and web's pods run the podserver image with real readiness
// probes. Images are built by deploy/images and imported into each node's
// containerd, so nothing is pulled. Down, and Up or Cleanup after a crash,
// remove every process, mount, cgroup and namespace the nodes created;
// TakeHostSnapshot checks that.
//
// The apiserver listens on testbed.HostIP, the host's end of a veth into the
// LAN (testbed.Options.HostLink), because the node namespaces cannot reach
// the host's loopback. Only one such cluster can run per host.
package k8s
