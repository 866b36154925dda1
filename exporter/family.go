package exporter

import "net/netip"

// networkType is the semantic-convention network.type of a connection: the
// family of the address the client addressed (a dual-stack Service is
// reached in either).
func networkType(a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return "ipv4"
	}
	return "ipv6"
}
