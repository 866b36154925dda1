// Command coredns is CoreDNS v1.15 with only the plugins the testbed's
// cluster DNS uses: the kubernetes plugin answers Service and Pod names,
// cache keeps it cheap, errors logs failures, and health/ready are what the
// kube-dns Deployment's probes ask. The full build links ~60 plugins and
// every cloud SDK they pull; this one compiles in a fraction of the time.
// There is no forward plugin: nothing upstream is reachable from the
// testbed's LAN, so names outside the cluster domain are not resolved.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
