// Command coredns is CoreDNS v1.15 with only the plugins the testbed's
// cluster DNS uses: the kubernetes plugin answers Service and Pod names,
// cache keeps it cheap, errors logs failures, health/ready are what the
// kube-dns Deployment's probes ask, and chaos answers `CH TXT hostname.bind`
// with the answering pod's name (its UTS hostname): the ground truth of
// which CoreDNS pod answered a query, for the e2e tests' UDP checks. The
// full build links ~60 plugins and every cloud SDK they pull; this one
// compiles in a fraction of the time. Changing this list needs a new
// corednsBuild in testbed/k8s/nodebins.go (the cached binary's key).
// There is no forward plugin: nothing upstream is reachable from the
// testbed's LAN, so names outside the cluster domain are not resolved.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/chaos"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
