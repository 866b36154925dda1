// Package testimages declares the container images the real-node testbed
// runs besides lbpath's own: the workload server and the sandbox image.
// They are built like the product images (deploy/images) but never shipped.
package testimages

import "github.com/lbpath/lbpath/deploy/images"

var (
	// PodServer answers every request with its pod name and the peer
	// address it saw (testbed/podhttp); its readiness path is
	// podhttp.ReadyPath. Needs $POD_NAME from the downward API.
	PodServer = images.Image{
		Name:        "podserver",
		Package:     "./testbed/cmd/podserver",
		Description: "lbpath testbed workload: answers with its pod name and the peer address it saw",
		User:        "65532:65532",
	}
	// Pause holds a pod sandbox's namespaces: point containerd's pinned
	// sandbox image at its ref.
	Pause = images.Image{
		Name:        "pause",
		Package:     "./testbed/cmd/pause",
		Description: "lbpath testbed sandbox image: blocks until SIGTERM",
		User:        "65535:65535",
	}
)

// All are the testbed's images, for images.Options.Images.
var All = []images.Image{PodServer, Pause}
