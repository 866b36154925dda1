package testbed

import (
	"fmt"
	"net"
)

// FreePort returns a TCP port free on host now, for a server the test bed
// starts (Jaeger, Prometheus, the collector, the control plane).
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
