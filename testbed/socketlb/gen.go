// Package socketlb is the testbed's socket load balancer: a cgroup/connect4
// program that translates a Service's ClusterIP to a backend inside
// connect(), as Cilium's socket-LB does, so that lbpath can be proved on a
// datapath where no conntrack entry exists.
package socketlb

//go:generate go tool bpf2go -tags linux -target bpfel Translator translator.bpf.c -- -I/usr/include -I../../agent/bpf -O2 -g -Wall
