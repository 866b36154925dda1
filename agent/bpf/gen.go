// Package bpf holds lbpath's eBPF programs: the C source, the vmlinux.h it
// is compiled against, and the bpf2go output (committed, so building the
// agent needs no clang).
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type event -type conn -type reqstate Lbpath lbpath.bpf.c -- -I/usr/include -O2 -g -Wall
