// Package tcnodeport is the testbed's TC NodePort load balancer: tc
// programs on each node's LAN device that translate node-IP:NodePort to a
// backend pod and back, as Cilium's kube-proxy replacement does in
// bpf_host, with the client's address kept (DSR). No netfilter rule and no
// conntrack entry records the translation, so lbpath can be proved on a
// datapath where NAT happens and is invisible to it.
package tcnodeport

//go:generate go tool bpf2go -tags linux -target bpfel NodePort nodeport.bpf.c -- -I/usr/include -I../../agent/bpf -O2 -g -Wall
