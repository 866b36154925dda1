package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/lbpath/lbpath/testbed"
)

// GatewayAPIVersion is the Gateway API release whose CRDs (standard
// channel) UpGateway installs, from the Go module proxy's copy of
// sigs.k8s.io/gateway-api.
const GatewayAPIVersion = "v1.6.3"

// Names of the objects UpGateway creates, in Namespace.
const (
	// GatewayClassName is the GatewayClass, controller GatewayController.
	GatewayClassName  = "testbed-nginx"
	GatewayController = "lbpath.dev/testbed-nginx-gateway"
	// GatewayName is the Gateway; its proxy's Deployment and LoadBalancer
	// Service are GatewayProxy.
	GatewayName  = "shop-gw"
	GatewayProxy = "shop-gw-nginx"
	// HTTPRouteName routes PathWeb to web and PathAPI to api.
	HTTPRouteName = "shop"
	// GatewayNameLabel is the label Gateway implementations put on the
	// proxy pods of a Gateway (GEP-1762).
	GatewayNameLabel = "gateway.networking.k8s.io/gateway-name"
)

// GatewayLBIP is the Gateway proxy Service's LoadBalancer IP.
var GatewayLBIP = netip.MustParseAddr("203.0.113.13")

var (
	gvrCRD          = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	gvrGatewayClass = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}
	gvrGateway      = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	gvrHTTPRoute    = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
)

// UpGateway deploys a Gateway in front of web and api: the Gateway API's
// real CRDs, GatewayClass testbed-nginx, Gateway shop-gw, HTTPRoute shop
// (PathWeb → web, PathAPI → api), and as the Gateway's data plane a real
// nginx pod (label GatewayNameLabel) behind a LoadBalancer Service. No
// Gateway controller runs here (Traefik v3.7.13, served by the module
// proxy, is a large build not tried: CI's cold time is already over its
// budget), so UpGateway does a controller's part itself: it renders nginx's configuration from the HTTPRoute, and
// writes the Gateway's status.addresses (the LB IP) and conditions and the
// HTTPRoute's parent status, as an implementation would. Everything lbpath
// reads — the objects, their status, the pods, the Services, the traffic —
// is real. It returns once the proxy and api's pods are ready. Only with
// the kubelet stand-in.
func (c *Cluster) UpGateway(ctx context.Context, opt IngressOptions) (*Ingress, error) {
	if err := c.proxyDefaults("gateway", &opt); err != nil {
		return nil, err
	}
	dyn, err := c.dynamic()
	if err != nil {
		return nil, err
	}
	if err := InstallGatewayCRDs(ctx, dyn); err != nil {
		return nil, err
	}
	if err := c.createAPI(ctx, opt.APIReplicas); err != nil {
		return nil, err
	}
	routes := []proxyRoute{{PathWeb, testbed.ServiceWeb, 80}, {PathAPI, APIDeployment, 80}}
	if err := createGatewayObjects(ctx, dyn, routes); err != nil {
		return nil, err
	}
	proxy := nginxProxy{name: GatewayProxy, labels: map[string]string{GatewayNameLabel: GatewayName},
		node: opt.Node, dir: opt.Dir, lbIP: GatewayLBIP}
	out, err := c.runProxy(ctx, proxy, routes, opt.APIReplicas)
	if err != nil {
		return nil, err
	}
	return out, publishGatewayStatus(ctx, dyn)
}

func (c *Cluster) dynamic() (dynamic.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("gateway: kubeconfig: %w", err)
	}
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("gateway: dynamic client: %w", err)
	}
	return d, nil
}

// InstallGatewayCRDs creates the standard channel's GatewayClass, Gateway
// and HTTPRoute CRDs of GatewayAPIVersion and waits until they are
// established.
func InstallGatewayCRDs(ctx context.Context, dyn dynamic.Interface) error {
	dir, err := gatewayAPIDir(ctx)
	if err != nil {
		return err
	}
	for _, res := range []string{"gatewayclasses", "gateways", "httproutes"} {
		raw, err := os.ReadFile(filepath.Join(dir, "config", "crd", "standard", "gateway.networking.k8s.io_"+res+".yaml"))
		if err != nil {
			return fmt.Errorf("gateway: CRD %s: %w", res, err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(raw, &u.Object); err != nil {
			return fmt.Errorf("gateway: decode CRD %s: %w", res, err)
		}
		if _, err := dyn.Resource(gvrCRD).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("gateway: create CRD %s: %w", res, err)
		}
		if err := waitEstablished(ctx, dyn, u.GetName()); err != nil {
			return err
		}
	}
	return nil
}

// gatewayAPIDir is the module cache's copy of sigs.k8s.io/gateway-api.
func gatewayAPIDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", "sigs.k8s.io/gateway-api@"+GatewayAPIVersion).Output()
	if err != nil {
		return "", fmt.Errorf("gateway: go mod download sigs.k8s.io/gateway-api@%s: %w", GatewayAPIVersion, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return "", fmt.Errorf("gateway: go mod download printed no module directory (%v): %s", err, out)
	}
	return m.Dir, nil
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		u, err := dyn.Resource(gvrCRD).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway: CRD %s not established: %w (last error %v)", name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func createGatewayObjects(ctx context.Context, dyn dynamic.Interface, routes []proxyRoute) error {
	var rules []any
	for _, r := range routes {
		rules = append(rules, map[string]any{
			"matches":     []any{map[string]any{"path": map[string]any{"type": "PathPrefix", "value": r.path}}},
			"backendRefs": []any{map[string]any{"name": r.service, "port": int64(r.port)}},
		})
	}
	objs := []struct {
		gvr schema.GroupVersionResource
		obj map[string]any
	}{
		{gvrGatewayClass, map[string]any{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
			"metadata": map[string]any{"name": GatewayClassName},
			"spec":     map[string]any{"controllerName": GatewayController}}},
		{gvrGateway, map[string]any{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
			"metadata": map[string]any{"name": GatewayName, "namespace": Namespace},
			"spec": map[string]any{"gatewayClassName": GatewayClassName,
				"listeners": []any{map[string]any{"name": "http", "port": int64(80), "protocol": "HTTP"}}}}},
		{gvrHTTPRoute, map[string]any{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
			"metadata": map[string]any{"name": HTTPRouteName, "namespace": Namespace},
			"spec":     map[string]any{"parentRefs": []any{map[string]any{"name": GatewayName}}, "rules": rules}}},
	}
	for _, o := range objs {
		ri := dyn.Resource(o.gvr)
		var err error
		if ns, _, _ := unstructured.NestedString(o.obj, "metadata", "namespace"); ns != "" {
			_, err = ri.Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: o.obj}, metav1.CreateOptions{})
		} else {
			_, err = ri.Create(ctx, &unstructured.Unstructured{Object: o.obj}, metav1.CreateOptions{})
		}
		if err != nil {
			return fmt.Errorf("gateway: create %s: %w", o.gvr.Resource, err)
		}
	}
	return nil
}

// publishGatewayStatus writes what an implementation reports once it
// programmed the data plane: the Gateway's address (the proxy Service's LB
// IP) and Accepted/Programmed, the HTTPRoute's Accepted/ResolvedRefs on
// its parent.
func publishGatewayStatus(ctx context.Context, dyn dynamic.Interface) error {
	now := time.Now().UTC().Format(time.RFC3339)
	cond := func(typ, reason string, gen int64) map[string]any {
		return map[string]any{"type": typ, "status": string(corev1.ConditionTrue), "reason": reason, "message": "",
			"lastTransitionTime": now, "observedGeneration": gen}
	}
	gw, err := dyn.Resource(gvrGateway).Namespace(Namespace).Get(ctx, GatewayName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("gateway: get Gateway: %w", err)
	}
	gen := gw.GetGeneration()
	gw.Object["status"] = map[string]any{
		"addresses":  []any{map[string]any{"type": "IPAddress", "value": GatewayLBIP.String()}},
		"conditions": []any{cond("Accepted", "Accepted", gen), cond("Programmed", "Programmed", gen)},
	}
	if _, err := dyn.Resource(gvrGateway).Namespace(Namespace).UpdateStatus(ctx, gw, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("gateway: publish Gateway status: %w", err)
	}
	hr, err := dyn.Resource(gvrHTTPRoute).Namespace(Namespace).Get(ctx, HTTPRouteName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("gateway: get HTTPRoute: %w", err)
	}
	gen = hr.GetGeneration()
	hr.Object["status"] = map[string]any{"parents": []any{map[string]any{
		"parentRef":      map[string]any{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GatewayName},
		"controllerName": GatewayController,
		"conditions":     []any{cond("Accepted", "Accepted", gen), cond("ResolvedRefs", "ResolvedRefs", gen)},
	}}}
	if _, err := dyn.Resource(gvrHTTPRoute).Namespace(Namespace).UpdateStatus(ctx, hr, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("gateway: publish HTTPRoute status: %w", err)
	}
	return nil
}
