package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpath/lbpath/testbed"
)

// Names of the objects UpIngress creates, in Namespace.
const (
	// IngressClassName is the IngressClass, controller IngressController.
	IngressClassName  = "nginx"
	IngressController = "k8s.io/ingress-nginx"
	// IngressName is the Ingress routing PathWeb to web and PathAPI to api.
	IngressName = "shop"
	// IngressProxy is the proxy's Deployment and LoadBalancer Service.
	IngressProxy = "ingress-nginx-controller"
	// APIDeployment is the second backend's Deployment and Service.
	APIDeployment = "api"
	// PathWeb and PathAPI are the Ingress's two Prefix paths.
	PathWeb = "/web"
	PathAPI = "/api"
)

// IngressLBIP is the proxy Service's LoadBalancer IP by default.
var IngressLBIP = netip.MustParseAddr("203.0.113.12")

// IngressOptions configure UpIngress.
type IngressOptions struct {
	// Dir holds nginx's configuration, pid and temporary files; required.
	Dir string
	// Node is the proxy pod's node (1-based); default 1.
	Node int
	// APIReplicas of Deployment api; default 2.
	APIReplicas int32
}

// Ingress is a real nginx (Debian's) proxying from a LoadBalancer Service
// to Services web and api, described by an IngressClass and an Ingress.
type Ingress struct {
	// LB is the proxy Service's LB IP and port as the client dials it.
	LB netip.AddrPort
	// ProxyPod is the name of the proxy's pod.
	ProxyPod string
	// Backends maps each Ingress path to its Service name.
	Backends map[string]string
}

// UpIngress deploys the ingress in front of web: Deployment and Service
// api (the second backend), IngressClass nginx, Ingress shop, the proxy's
// Deployment (nginx run by the kubelet stand-in in the pod's network
// namespace; its config is what ingress-nginx's controller would render
// from the Ingress) and its LoadBalancer Service, whose LB IP is published
// on the Service and, as ingress-nginx's --publish-service does, on the
// Ingress's status. It returns once the proxy and api's pods are ready.
// Only with the kubelet stand-in.
func (c *Cluster) UpIngress(ctx context.Context, opt IngressOptions) (*Ingress, error) {
	if err := c.proxyDefaults("ingress", &opt); err != nil {
		return nil, err
	}
	if err := c.createAPI(ctx, opt.APIReplicas); err != nil {
		return nil, err
	}
	ing, err := c.createIngress(ctx)
	if err != nil {
		return nil, err
	}
	proxy := nginxProxy{name: IngressProxy, labels: map[string]string{"app.kubernetes.io/name": "ingress-nginx"},
		node: opt.Node, dir: opt.Dir, lbIP: IngressLBIP}
	out, err := c.runProxy(ctx, proxy, ingressRoutes(ing), opt.APIReplicas)
	if err != nil {
		return nil, err
	}
	ing.Status.LoadBalancer.Ingress = []networkingv1.IngressLoadBalancerIngress{{IP: IngressLBIP.String()}}
	if _, err := c.Client.NetworkingV1().Ingresses(Namespace).UpdateStatus(ctx, ing, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("ingress: publish status of %s: %w", IngressName, err)
	}
	return out, nil
}

// proxyDefaults checks what an nginx proxy needs and fills opt's defaults.
func (c *Cluster) proxyDefaults(what string, opt *IngressOptions) error {
	if c.Kubelet == nil {
		return fmt.Errorf("%s: needs the kubelet stand-in (not RealNodes)", what)
	}
	if opt.Dir == "" {
		return fmt.Errorf("%s: IngressOptions.Dir is required", what)
	}
	if _, err := exec.LookPath("nginx"); err != nil {
		return fmt.Errorf("%s: nginx not found (apt-get install nginx; scripts/setup.sh installs it): %w", what, err)
	}
	if opt.Node == 0 {
		opt.Node = 1
	}
	if opt.APIReplicas == 0 {
		opt.APIReplicas = 2
	}
	return nil
}

// runProxy renders routes into nginx's configuration, runs the proxy pod
// behind its LoadBalancer Service, routes its LB IP to the cluster and
// waits until the proxy and api's replicas are ready and the LB IP answers.
func (c *Cluster) runProxy(ctx context.Context, p nginxProxy, routes []proxyRoute, apiReplicas int32) (*Ingress, error) {
	conf, err := c.nginxConf(ctx, routes, p.dir)
	if err != nil {
		return nil, err
	}
	p.conf = conf
	if err := c.createProxy(ctx, p); err != nil {
		return nil, err
	}
	if err := c.TB.RouteLBIP(p.lbIP); err != nil {
		return nil, err
	}
	out := &Ingress{LB: netip.AddrPortFrom(p.lbIP, 80), Backends: map[string]string{}}
	for _, r := range routes {
		out.Backends[r.path] = r.service
	}
	if out.ProxyPod, err = c.waitReady(ctx, p.name, 1); err != nil {
		return nil, err
	}
	if _, err := c.waitReady(ctx, APIDeployment, int(apiReplicas)); err != nil {
		return nil, err
	}
	return out, c.waitLBAnswers(ctx, out.LB)
}

// createAPI creates Deployment api (the stand-in's pod servers) and its
// ClusterIP Service, port 80.
func (c *Cluster) createAPI(ctx context.Context, replicas int32) error {
	labels := map[string]string{WebLabel: APIDeployment}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: APIDeployment, Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: c.standInTemplate(labels)},
	}
	if _, err := c.Client.AppsV1().Deployments(Namespace).Create(ctx, d, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		return nil // an Ingress and a Gateway share the backends
	} else if err != nil {
		return fmt.Errorf("ingress: create Deployment %s: %w", APIDeployment, err)
	}
	return c.createService(ctx, APIDeployment, corev1.ServiceTypeClusterIP, labels, netip.Addr{})
}

// createService creates Service name (port 80 → the pod port); a
// LoadBalancer's status publishes lbIP.
func (c *Cluster) createService(ctx context.Context, name string, typ corev1.ServiceType, selector map[string]string, lbIP netip.Addr) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name},
		Spec: corev1.ServiceSpec{Type: typ, Selector: selector, Ports: []corev1.ServicePort{{
			Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(testbed.PodPort)}}},
	}
	created, err := c.Client.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("ingress: create Service %s: %w", name, err)
	}
	if typ != corev1.ServiceTypeLoadBalancer {
		return nil
	}
	created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP.String()}}
	if _, err := c.Client.CoreV1().Services(Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("ingress: publish LB IP of Service %s: %w", name, err)
	}
	return nil
}

func (c *Cluster) createIngress(ctx context.Context) (*networkingv1.Ingress, error) {
	class := &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: IngressClassName},
		Spec: networkingv1.IngressClassSpec{Controller: IngressController}}
	if _, err := c.Client.NetworkingV1().IngressClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("ingress: create IngressClass: %w", err)
	}
	prefix := networkingv1.PathTypePrefix
	path := func(p, svc string) networkingv1.HTTPIngressPath {
		return networkingv1.HTTPIngressPath{Path: p, PathType: &prefix, Backend: networkingv1.IngressBackend{
			Service: &networkingv1.IngressServiceBackend{Name: svc, Port: networkingv1.ServiceBackendPort{Number: 80}}}}
	}
	className := IngressClassName
	ing := &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: IngressName},
		Spec: networkingv1.IngressSpec{IngressClassName: &className, Rules: []networkingv1.IngressRule{{
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{path(PathWeb, testbed.ServiceWeb), path(PathAPI, APIDeployment)}}},
		}}},
	}
	created, err := c.Client.NetworkingV1().Ingresses(Namespace).Create(ctx, ing, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("ingress: create Ingress: %w", err)
	}
	return created, nil
}

// proxyRoute is one prefix path of a proxy's configuration and the
// Service (in Namespace) and port it proxies to.
type proxyRoute struct {
	path, service string
	port          int32
}

// ingressRoutes are the Ingress's paths.
func ingressRoutes(ing *networkingv1.Ingress) []proxyRoute {
	var out []proxyRoute
	for _, r := range ing.Spec.Rules {
		for _, p := range r.HTTP.Paths {
			out = append(out, proxyRoute{p.Path, p.Backend.Service.Name, p.Backend.Service.Port.Number})
		}
	}
	return out
}

// nginxConf renders routes into an nginx configuration in dir, as an
// ingress or Gateway controller would, with each backend reached through
// its Service's ClusterIP (kube-proxy picks the pod). nginx's defaults are
// kept where they matter to the path: one worker, HTTP/1.0 to the upstream
// without keep-alive, so every proxied request is its own connection.
func (c *Cluster) nginxConf(ctx context.Context, routes []proxyRoute, dir string) (string, error) {
	var loc strings.Builder
	for _, r := range routes {
		svc, err := c.Client.CoreV1().Services(Namespace).Get(ctx, r.service, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("proxy: backend Service %s: %w", r.service, err)
		}
		fmt.Fprintf(&loc, "    location %s {\n      proxy_pass http://%s:%d;\n    }\n", r.path, svc.Spec.ClusterIP, r.port)
	}
	conf := fmt.Sprintf(`user root;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]d default_server;
%[3]s    location / {
      return 404;
    }
  }
}
`, dir, testbed.PodPort, loc.String())
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", fmt.Errorf("ingress: write nginx config: %w", err)
	}
	return path, nil
}

// nginxProxy is an nginx proxy Deployment (one pod on node) and its
// LoadBalancer Service at lbIP.
type nginxProxy struct {
	name      string
	labels    map[string]string
	node      int
	dir, conf string
	lbIP      netip.Addr
}

func (c *Cluster) createProxy(ctx context.Context, p nginxProxy) error {
	labels := p.labels
	one := int32(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: p.name, Labels: labels},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				NodeSelector: map[string]string{HostnameLabel: c.TB.Node(p.node).Name},
				Containers: []corev1.Container{{
					Name: "controller", Image: HostProcessImage,
					Command: []string{"nginx", "-e", "stderr", "-p", p.dir, "-c", p.conf, "-g", "daemon off;"},
					Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: testbed.PodPort, Protocol: corev1.ProtocolTCP}},
				}},
			}}},
	}
	if _, err := c.Client.AppsV1().Deployments(Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("proxy: create Deployment %s: %w", p.name, err)
	}
	return c.createService(ctx, p.name, corev1.ServiceTypeLoadBalancer, labels, p.lbIP)
}

// waitLBAnswers waits until the proxy answers a TCP connect on its LB IP
// from the external client: endpoints turn ready before kube-proxy has
// written the new LoadBalancer Service's rules, and a client's first SYN
// before then is dropped (a controller reports Programmed only once its
// data plane answers, too). The probe connections never reach a backend.
func (c *Cluster) waitLBAnswers(ctx context.Context, lb netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		dctx, dcancel := context.WithTimeout(ctx, 500*time.Millisecond)
		conn, err := testbed.DialFrom(dctx, c.TB.Client.Netns, lb)
		dcancel()
		if err == nil {
			return conn.Close()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("proxy: %v never answered from the client: %w (last %v)", lb, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReady waits until Service name has n ready endpoints and returns the
// first one's pod.
func (c *Cluster) waitReady(ctx context.Context, name string, n int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		eps, err := c.Endpoints(ctx, name)
		ready := 0
		for _, e := range eps {
			if e.Ready {
				ready++
			}
		}
		if err == nil && ready == n && len(eps) == n {
			return eps[0].Pod, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("ingress: wait for %d ready endpoints of %s: %w (last %+v, %v)", n, name, ctx.Err(), eps, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
