package k8s

import (
	"os"
	"strings"
	"testing"
)

// TestSetupFetchesGatewayAPI: the setup script prefetches the Gateway API
// release UpGateway installs, so tests never download it mid-run.
func TestSetupFetchesGatewayAPI(t *testing.T) {
	b, err := os.ReadFile("../../scripts/setup.sh")
	if err != nil {
		t.Fatal(err)
	}
	if want := "sigs.k8s.io/gateway-api@" + GatewayAPIVersion; !strings.Contains(string(b), want) {
		t.Errorf("scripts/setup.sh does not download %s", want)
	}
}
