// Package testbed builds a miniature Kubernetes cluster out of Linux network
// namespaces so that lbpath can be tested against real kernel NAT and real
// conntrack.
//
// The layout is a LAN bridge namespace, an external client namespace, node
// namespaces with Calico-style routed pod veths, pod namespaces running an
// in-process HTTP server, and kube-proxy-shaped NAT in every node. The NAT is
// written by a NATWriter (iptables or nftables, the two kube-proxy modes) so
// that a real kube-proxy can take its place later.
//
// Options.HostLink, NoStaticPods and Cluster.AddPod/RemovePod let package
// testbed/k8s put a real control plane in charge: the apiserver listens on
// the host's end of the LAN, and pods come and go as a kubelet decides.
//
// Every namespace is named "<prefix>-…" and every link lives inside one of
// them, so deleting the namespaces removes everything; Cleanup relies on that
// to clear the leftovers of a crashed run.
package testbed
