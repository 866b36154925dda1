// Package toolcache says where the third-party binaries the tests and the
// demo build (Kubernetes, Prometheus, Jaeger, Helm) are cached, so that one
// variable moves all of them.
package toolcache

import (
	"os"
	"path/filepath"
)

// Env names the variable that moves the cache.
const Env = "LBPATH_CACHE"

// Dir is $LBPATH_CACHE, else the user cache directory's lbpath folder
// (~/.cache/lbpath), else a folder under the temporary directory.
func Dir() string {
	if d := os.Getenv(Env); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "lbpath")
	}
	return filepath.Join(os.TempDir(), "lbpath-cache")
}
