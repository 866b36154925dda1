package bpf

// The connect() destination capture (connect.bpf.c): its own object, loaded
// and degrading on its own beside lbpath.bpf.c.
//go:generate go tool bpf2go -tags linux -target bpfel -type connect_event Connect connect.bpf.c -- -I/usr/include -O2 -g -Wall
