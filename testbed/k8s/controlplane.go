package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/lbpath/lbpath/testbed"
)

// Controllers are the kube-controller-manager controllers the test bed
// runs: enough for Deployments to become Pods and Services to get
// EndpointSlices. Node lifecycle, IPAM and the scheduler are left out; the
// test bed plays scheduler and kubelet itself.
var Controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"endpointslice-controller",
	"endpointslice-mirroring-controller",
	// Creates the default ServiceAccount, without which the ServiceAccount
	// admission plugin rejects every pod.
	"serviceaccount-controller",
	"garbage-collector-controller",
}

// RealNodeControllers are added to Controllers when real kubelets run
// (ControlPlaneOptions.RealNodes). They are left out otherwise because the
// kubelet stand-in sends no heartbeats: the node lifecycle controller would
// mark its nodes unreachable and their pods not ready after ~50 s.
var RealNodeControllers = []string{
	// Lifts the not-ready taint once the kubelet reports Ready, and
	// marks pods of a dead kubelet not ready.
	"node-lifecycle-controller",
	// Publishes kube-root-ca.crt in every namespace, which projected
	// service-account volumes need.
	"root-ca-certificate-publisher-controller",
	"daemonset-controller",
	// The chart's scale-out aggregation tier is a StatefulSet.
	"statefulset-controller",
	// Finishes namespace deletion (helm uninstall --namespace, tests).
	"namespace-controller",
}

// ControlPlaneOptions configure Start.
type ControlPlaneOptions struct {
	// Binaries to run; zero means EnsureBinaries (which may build).
	Binaries Binaries
	// BindAddress is the only address kube-apiserver listens on and the
	// one it advertises; default 127.0.0.1. Node namespaces cannot reach
	// the host's loopback, so a test bed passes testbed.HostIP.
	BindAddress netip.Addr
	// Name keys the default state dir, so that parallel runs with
	// different names do not kill each other's leftovers; default "lbpath".
	Name string
	// Dir is the state dir (keys, kubeconfigs, etcd data, logs, PIDs);
	// default $TMPDIR/lbpath-k8s-<Name>. It is wiped by Start.
	Dir string
	// Logger receives progress; default slog.Default().
	Logger *slog.Logger
	// RealNodes prepares the control plane for real kubelets: the Node
	// and RBAC authorizers, a client certificate for the apiserver's
	// calls to kubelets (logs, exec), kube-scheduler, the
	// RealNodeControllers, and the kubernetes Service's endpoints
	// published at BindAddress (in-cluster clients reach it through
	// kube-proxy).
	RealNodes bool
	// ServiceCIDRs are kube-apiserver's --service-cluster-ip-range, one
	// per family, primary first; default testbed.ServiceCIDR. Two make the
	// cluster dual-stack.
	ServiceCIDRs []netip.Prefix
	// ClusterCIDRs are the pod ranges, one per family, given to
	// kube-controller-manager (--cluster-cidr); default none (the testbed
	// sets each Node's podCIDRs itself).
	ClusterCIDRs []netip.Prefix
}

// ControlPlane is a running etcd, kube-apiserver and kube-controller-manager,
// plus the kube-proxies started through KubeProxyWriter.
type ControlPlane struct {
	Binaries Binaries
	// Dir is the state dir.
	Dir string
	// Server is the apiserver URL.
	Server string
	// Kubeconfig is an admin (system:masters) kubeconfig, e.g. for
	// `kubectl --kubeconfig`.
	Kubeconfig string
	// KubeProxyKubeconfig authenticates as ServiceAccount
	// kube-system/kube-proxy, bound to system:node-proxier as in kubeadm
	// clusters.
	KubeProxyKubeconfig string
	// Config is the admin REST config behind Client.
	Config *rest.Config
	// Client is an admin clientset.
	Client kubernetes.Interface

	// RealNodes is ControlPlaneOptions.RealNodes.
	RealNodes bool

	log *slog.Logger
	st  *stateDir
	pki *pki

	mu      sync.Mutex
	procs   []*process
	stopped bool

	apiserverArgs []string
}

// StopAPIServer stops kube-apiserver alone (etcd, the controllers and the
// kube-proxies keep running), to test what clients do while it is away.
func (cp *ControlPlane) StopAPIServer() error {
	cp.mu.Lock()
	var api *process
	for _, p := range cp.procs {
		if p.name == "kube-apiserver" {
			api = p
		}
	}
	cp.mu.Unlock()
	if api == nil {
		return errors.New("stop kube-apiserver: not running")
	}
	cp.stopProcess(api, 3*time.Second)
	return nil
}

// StartAPIServer starts kube-apiserver again after StopAPIServer and waits
// until it is ready.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	if _, err := cp.startProcess("kube-apiserver", cp.Binaries.APIServer, cp.apiserverArgs...); err != nil {
		return err
	}
	return cp.waitHTTP(ctx, "kube-apiserver", cp.Server+"/readyz", cp.Config, 60*time.Second)
}

func (o ControlPlaneOptions) withDefaults() (ControlPlaneOptions, error) {
	if o.Name == "" {
		o.Name = "lbpath"
	}
	if strings.ContainsAny(o.Name, "/ ") {
		return o, fmt.Errorf("invalid control plane name %q", o.Name)
	}
	if !o.BindAddress.IsValid() {
		o.BindAddress = netip.MustParseAddr("127.0.0.1")
	}
	if o.Dir == "" {
		o.Dir = filepath.Join(os.TempDir(), "lbpath-k8s-"+o.Name)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Start runs etcd, kube-apiserver and kube-controller-manager and returns
// once the apiserver is ready, the default ServiceAccount exists (so pods are
// admitted) and the kube-proxy credentials are written. Leftover processes of
// a crashed run with the same state dir are killed first. On error everything
// started is stopped.
func Start(ctx context.Context, opt ControlPlaneOptions) (*ControlPlane, error) {
	began := time.Now()
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, err
	}
	if opt.Binaries.Dir == "" {
		if opt.Binaries, err = EnsureBinaries(ctx, opt.Logger); err != nil {
			return nil, err
		}
	} else if m := opt.Binaries.Missing(); len(m) > 0 {
		return nil, fmt.Errorf("start control plane: missing %s", strings.Join(m, ", "))
	}
	killed, err := killLeftovers(opt.Dir)
	if err != nil {
		return nil, err
	}
	if len(killed) > 0 {
		opt.Logger.Warn("killed leftovers of a previous control plane", "dir", opt.Dir, "processes", killed)
	}
	if err := os.RemoveAll(opt.Dir); err != nil {
		return nil, fmt.Errorf("wipe state dir: %w", err)
	}
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	cp := &ControlPlane{Binaries: opt.Binaries, Dir: opt.Dir, RealNodes: opt.RealNodes, log: opt.Logger,
		st: &stateDir{dir: opt.Dir}}
	if err := cp.start(ctx, opt); err != nil {
		return nil, errors.Join(fmt.Errorf("start control plane: %w", err), cp.Stop())
	}
	cp.log.Info("control plane ready", "server", cp.Server, "kubeconfig", cp.Kubeconfig,
		"took", time.Since(began).Round(time.Millisecond))
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context, opt ControlPlaneOptions) error {
	bind := opt.BindAddress.String()
	if len(opt.ServiceCIDRs) == 0 {
		opt.ServiceCIDRs = []netip.Prefix{testbed.ServiceCIDR}
	}
	ips := []net.IP{net.ParseIP(bind), net.ParseIP("127.0.0.1"), kubernetesServiceIP(opt.ServiceCIDRs[0])}
	pk, err := writePKI(cp.Dir, ips)
	if err != nil {
		return err
	}
	cp.pki = pk

	// Free ports, picked now: etcd is on loopback shared with any parallel
	// run, so fixed ports would collide.
	etcdClient, err := testbed.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	etcdPeer, err := testbed.FreePort("127.0.0.1")
	if err != nil {
		return err
	}
	apiPort, err := testbed.FreePort(bind)
	if err != nil {
		return err
	}
	cp.Server = "https://" + net.JoinHostPort(bind, strconv.Itoa(apiPort))

	adminToken, kcmToken, schedToken := newToken(), newToken(), newToken()
	// The controller manager runs with its own credentials for all
	// controllers (--use-service-account-credentials=false), which the
	// built-in system:kube-controller-manager role does not cover; hence
	// system:masters. kube-scheduler's built-in bindings name the user
	// system:kube-scheduler.
	tokens := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,system:kube-controller-manager,kcm,\"system:masters\"\n"+
		"%s,system:kube-scheduler,kube-scheduler\n", adminToken, kcmToken, schedToken)
	tokenFile := filepath.Join(cp.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	cp.Kubeconfig = filepath.Join(cp.Dir, "admin.kubeconfig")
	if err := cp.writeKubeconfig(cp.Kubeconfig, "admin", adminToken); err != nil {
		return err
	}
	kcmKubeconfig := filepath.Join(cp.Dir, "kube-controller-manager.kubeconfig")
	if err := cp.writeKubeconfig(kcmKubeconfig, "kube-controller-manager", kcmToken); err != nil {
		return err
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	if _, err := cp.startProcess("etcd", cp.Binaries.Etcd,
		"--name=lbpath",
		"--data-dir="+filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=lbpath="+peerURL,
		// Throwaway data: fsync only slows every write on a busy CI disk.
		"--unsafe-no-fsync",
		"--log-level=warn",
	); err != nil {
		return err
	}
	if err := cp.waitHTTP(ctx, "etcd", etcdURL+"/health", nil, 30*time.Second); err != nil {
		return err
	}

	cp.apiserverArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + bind,
		"--advertise-address=" + bind,
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + pk.certFile,
		"--tls-private-key-file=" + pk.keyFile,
		"--client-ca-file=" + pk.caFile,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + joinPrefixes(opt.ServiceCIDRs),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pk.saPubFile,
		"--service-account-signing-key-file=" + pk.saKeyFile,
		// The default reconciler publishes the advertise address as the
		// kubernetes Service's endpoint and refuses a loopback one.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	if opt.RealNodes {
		real, err := cp.realNodeAPIServerArgs()
		if err != nil {
			return err
		}
		cp.apiserverArgs = append(slices.DeleteFunc(cp.apiserverArgs, func(a string) bool {
			return a == "--authorization-mode=RBAC" || a == "--endpoint-reconciler-type=none"
		}), real...)
	}
	if _, err := cp.startProcess("kube-apiserver", cp.Binaries.APIServer, cp.apiserverArgs...); err != nil {
		return err
	}
	cfg := &rest.Config{
		Host:            cp.Server,
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: pk.caPEM},
		QPS:             100,
		Burst:           200,
	}
	if err := cp.waitHTTP(ctx, "kube-apiserver", cp.Server+"/readyz", cfg, 60*time.Second); err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("apiserver client: %w", err)
	}
	cp.Config, cp.Client = cfg, client

	controllers := Controllers
	if opt.RealNodes {
		controllers = append(slices.Clone(Controllers), RealNodeControllers...)
	}
	kcmArgs := append([]string{
		"--kubeconfig=" + kcmKubeconfig,
		"--leader-elect=false",
		"--use-service-account-credentials=false",
		"--secure-port=0",
		"--controllers=" + strings.Join(controllers, ","),
	}, clusterCIDRArgs(opt.ClusterCIDRs)...)
	if _, err := cp.startProcess("kube-controller-manager", cp.Binaries.ControllerManager, kcmArgs...); err != nil {
		return err
	}
	if opt.RealNodes {
		if err := cp.startScheduler(schedToken); err != nil {
			return err
		}
	}
	if err := cp.waitFor(ctx, "default ServiceAccount", 60*time.Second, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}); err != nil {
		return err
	}
	return cp.setupKubeProxyCredentials(ctx)
}

// setupKubeProxyCredentials gives kube-proxy the identity kubeadm gives it: a
// ServiceAccount bound to system:node-proxier, with a bound token from the
// TokenRequest API.
func (cp *ControlPlane) setupKubeProxyCredentials(ctx context.Context) error {
	const ns, name = "kube-system", "kube-proxy"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ServiceAccount %s/%s: %w", ns, name, err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "lbpath:kube-proxy"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:node-proxier"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}},
	}
	if _, err := cp.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("bind %s/%s to system:node-proxier: %w", ns, name, err)
	}
	exp := int64((7 * 24 * time.Hour).Seconds())
	tr, err := cp.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request token for %s/%s: %w", ns, name, err)
	}
	cp.KubeProxyKubeconfig = filepath.Join(cp.Dir, "kube-proxy.kubeconfig")
	return cp.writeKubeconfig(cp.KubeProxyKubeconfig, "kube-proxy", tr.Status.Token)
}

// realNodeAPIServerArgs are the apiserver flags real kubelets need.
func (cp *ControlPlane) realNodeAPIServerArgs() ([]string, error) {
	cert, key, err := cp.pki.clientCert("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return nil, err
	}
	certFile := filepath.Join(cp.Dir, "apiserver-kubelet-client.crt")
	keyFile := filepath.Join(cp.Dir, "apiserver-kubelet-client.key")
	if err := os.WriteFile(certFile, cert, 0o600); err != nil {
		return nil, fmt.Errorf("write kubelet client certificate: %w", err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		return nil, fmt.Errorf("write kubelet client key: %w", err)
	}
	return []string{
		// Node: kubelets may read only what their pods need.
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// The default (lease) reconciler publishes BindAddress as the
		// kubernetes Service's endpoint, which in-cluster clients
		// (CoreDNS, the lbpath agent) reach through kube-proxy.
		"--endpoint-reconciler-type=lease",
		// Logs and exec go to the kubelet's InternalIP; the node names
		// resolve nowhere.
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-client-certificate=" + certFile,
		"--kubelet-client-key=" + keyFile,
	}, nil
}

// startScheduler runs kube-scheduler: the DaemonSet controller, like the
// ReplicaSet controller, leaves nodeName to the scheduler.
func (cp *ControlPlane) startScheduler(token string) error {
	kubeconfig := filepath.Join(cp.Dir, "kube-scheduler.kubeconfig")
	if err := cp.writeKubeconfig(kubeconfig, "kube-scheduler", token); err != nil {
		return err
	}
	if !isExecutable(cp.Binaries.Scheduler) {
		return fmt.Errorf("kube-scheduler missing: %s", cp.Binaries.Scheduler)
	}
	_, err := cp.startProcess("kube-scheduler", cp.Binaries.Scheduler,
		"--kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
	)
	return err
}

// NodeKubeconfig writes a kubeconfig at path for the kubelet of node: a
// client certificate for system:node:<node> in group system:nodes, the
// identity the Node authorizer expects.
func (cp *ControlPlane) NodeKubeconfig(path, node string) error {
	cert, key, err := cp.pki.clientCert("system:node:"+node, "system:nodes")
	if err != nil {
		return err
	}
	return cp.kubeconfig(path, node, fmt.Sprintf("client-certificate-data: %s\n    client-key-data: %s",
		base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key)))
}

// CAFile is the cluster CA certificate, which kubelets use to verify
// client certificates.
func (cp *ControlPlane) CAFile() string { return cp.pki.caFile }

// kubernetesServiceIP is the kubernetes Service's ClusterIP: the first
// address of the primary service range.
func kubernetesServiceIP(primary netip.Prefix) net.IP {
	return primary.Masked().Addr().Next().AsSlice()
}

func joinPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

func (cp *ControlPlane) writeKubeconfig(path, user, token string) error {
	return cp.kubeconfig(path, user, "token: "+token)
}

// kubeconfig writes a kubeconfig for this cluster whose user authenticates
// with credential (YAML lines under "user:", indented by four spaces).
func (cp *ControlPlane) kubeconfig(path, user, credential string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lbpath
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    %s
contexts:
- name: lbpath
  context:
    cluster: lbpath
    user: %s
    namespace: default
current-context: lbpath
`, cp.Server, base64.StdEncoding.EncodeToString(cp.pki.caPEM), user, credential, user)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// startProcess starts a child owned by the control plane: recorded in the
// state dir and stopped by Stop.
func (cp *ControlPlane) startProcess(name, bin string, args ...string) (*process, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return nil, fmt.Errorf("start %s: control plane stopped", name)
	}
	p, err := startProcess(cp.st, name, bin, args...)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, p)
	cp.log.Debug("started", "process", name, "pid", p.cmd.Process.Pid)
	return p, nil
}

// stopProcess stops one child and forgets it.
func (cp *ControlPlane) stopProcess(p *process, grace time.Duration) {
	p.stop(grace)
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.procs = slices.DeleteFunc(cp.procs, func(q *process) bool { return q == p })
}

// Processes reports the running children with their memory use.
func (cp *ControlPlane) Processes() []ProcessInfo {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var out []ProcessInfo
	for _, p := range cp.procs {
		out = append(out, p.info())
	}
	return out
}

// Stop stops every child, kube-proxies first and etcd last, so that no
// component logs errors about a dependency that went away first. It is safe
// to call more than once. The state dir is kept for its logs.
func (cp *ControlPlane) Stop() error {
	cp.mu.Lock()
	cp.stopped = true
	procs := slices.Clone(cp.procs)
	cp.procs = nil
	cp.mu.Unlock()
	for _, p := range slices.Backward(procs) {
		p.stop(3 * time.Second)
	}
	// Everything is reaped; a crashed run has nothing for the next Start
	// to kill.
	if err := os.Remove(filepath.Join(cp.Dir, pidsFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stop control plane: %w", err)
	}
	return nil
}

// waitHTTP polls url until it answers 200, failing early if a child died.
// cfg, if set, supplies the CA and token.
func (cp *ControlPlane) waitHTTP(ctx context.Context, what, url string, cfg *rest.Config, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	var token string
	if cfg != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(cfg.TLSClientConfig.CAData)
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		token = cfg.BearerToken
		defer hc.CloseIdleConnections()
	}
	return cp.waitFor(ctx, what, timeout, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// waitFor polls cond every 100 ms. A child that exits meanwhile fails the
// wait at once with its log, instead of after the timeout.
func (cp *ControlPlane) waitFor(ctx context.Context, what string, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if p := cp.deadChild(); p != nil {
			return fmt.Errorf("wait for %s: %w", what, p.failure())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) deadChild() *process {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, p := range cp.procs {
		if p.exited() {
			return p
		}
	}
	return nil
}

// clusterCIDRArgs give kube-controller-manager the pod ranges of every family
// (it allocates nothing: the testbed sets each Node's podCIDRs).
func clusterCIDRArgs(cidrs []netip.Prefix) []string {
	if len(cidrs) == 0 {
		return nil
	}
	args := []string{"--cluster-cidr=" + joinPrefixes(cidrs)}
	for _, c := range cidrs {
		if c.Addr().Is6() {
			args = append(args, fmt.Sprintf("--node-cidr-mask-size-ipv6=%d", testbed.NodeCIDRMask6))
		}
	}
	return args
}
