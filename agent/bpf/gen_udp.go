package bpf

// The UDP flow programs (udp.bpf.c) have their own object and loader so
// that they load, fail and degrade on their own (agent/capture/udp.go).
//go:generate go tool bpf2go -tags linux -target bpfel -type udp_event -type udp_flow -type udp_key Udp udp.bpf.c -- -I/usr/include -O2 -g -Wall
