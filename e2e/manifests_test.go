package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/lbpath/lbpath/internal/testenv"
	"github.com/lbpath/lbpath/testbed/k8s"
)

// TestManifestsServerSideDryRun: every object of the rendered manifests is
// accepted by a real kube-apiserver in a server-side dry-run apply (schema,
// defaults, admission), as `kubectl apply --dry-run=server` would.
func TestManifestsServerSideDryRun(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bins, err := k8s.EnsureBinaries(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := k8s.Start(ctx, k8s.ControlPlaneOptions{Binaries: bins, Name: "lbpath-dryrun", BindAddress: netip.MustParseAddr("127.0.0.1"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	dyn, err := dynamic.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	raw, err := os.ReadFile(filepath.Join("..", "deploy", "manifests", "lbpath.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decode manifests: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, &u)
		}
	}
	if len(objs) < 6 {
		t.Fatalf("only %d objects in the manifests", len(objs))
	}
	// The namespace the chart installs into must exist for a dry run.
	for _, o := range objs {
		if ns := o.GetNamespace(); ns != "" {
			_, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			if err != nil && !isAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Errorf("%s %s: no API for it: %v", gvk, o.GetName(), err)
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if o.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		data, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ri.Patch(ctx, o.GetName(), "application/apply-patch+yaml", data, metav1.PatchOptions{
			FieldManager: "lbpath-test", DryRun: []string{metav1.DryRunAll}, Force: ptrTo(true)}); err != nil {
			t.Errorf("server-side dry-run apply of %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		} else {
			t.Logf("accepted: %s %s/%s", gvk.Kind, o.GetNamespace(), o.GetName())
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

func isAlreadyExists(err error) bool {
	return err != nil && (bytes.Contains([]byte(err.Error()), []byte("already exists")))
}
