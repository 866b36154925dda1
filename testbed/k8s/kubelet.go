package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/lbpath/lbpath/testbed"
)

// DelayEnv is the container environment variable whose duration (e.g.
// "50ms") the pod's server waits before answering, so that a Deployment can
// roll out a deliberately slower version.
const DelayEnv = "LBPATH_DELAY"

// HostProcessImage marks a container the stand-in runs as a host program
// inside the pod's network namespace: its Command and Args, e.g. nginx from
// Debian as an ingress proxy (see Ingress). The stand-in has no container
// runtime; the program must listen on testbed.PodPort.
const HostProcessImage = "lbpath.invalid/host-process"

// HostnameLabel is the Node label a pod's nodeSelector may use to pick its
// node, as on real clusters.
const HostnameLabel = "kubernetes.io/hostname"

// KubeletOptions configure RunKubelet.
type KubeletOptions struct {
	// PoolSize is the number of pod IPs per node, 10.244.N.10 upwards;
	// default 4. A pool barely larger than the pods per node makes IPs
	// get reused during rollouts, as they are on busy real nodes.
	PoolSize int
	// TerminationGrace keeps a deleted pod serving (but not ready) this
	// long before its namespace goes, like a preStop sleep; default 0.
	TerminationGrace time.Duration
	// Logger receives pod lifecycle events; default slog.Default().
	Logger *slog.Logger
}

// Assignment records that a pod got an IP, for tests that look for reuse.
type Assignment struct {
	Pod  string
	UID  types.UID
	Node string
	IP   netip.Addr
	At   time.Time
}

// Kubelet plays kube-scheduler and the kubelets of all testbed nodes: it
// binds unscheduled pods to the least loaded node (or the one their
// nodeSelector names), creates a pod namespace with an HTTP server through
// testbed.Cluster.AddPod (serving UDP too when the pod declares a UDP
// containerPort), and reports the pod Running and Ready; on deletion
// it reports the pod not ready, removes the namespace and completes the
// deletion. Only pods whose name is unique across namespaces are supported,
// because testbed pods are named by pod name alone.
type Kubelet struct {
	tb     *testbed.Cluster
	client kubernetes.Interface
	opt    KubeletOptions
	log    *slog.Logger

	pods  listersv1.PodLister
	queue workqueue.TypedRateLimitingInterface[string]

	cancel context.CancelFunc
	done   chan struct{}

	mu          sync.Mutex
	running     map[string]*runningPod // by namespace/name
	bound       map[string]int         // namespace/name → node index, incl. running
	terminating map[string]time.Time   // when deletion was first seen
	assignments []Assignment
}

type runningPod struct {
	uid  types.UID
	node int
	ip   netip.Addr
	// ips are one per family of the cluster, ip first.
	ips []netip.Addr
}

// RunKubelet starts the loop and returns once its pod cache is synced; ctx
// bounds only that wait. Stop ends the loop; the pod namespaces it created
// stay until the testbed goes down.
func RunKubelet(ctx context.Context, client kubernetes.Interface, tb *testbed.Cluster, opt KubeletOptions) (*Kubelet, error) {
	if opt.PoolSize == 0 {
		opt.PoolSize = 4
	}
	if opt.PoolSize < 1 || opt.PoolSize > 180 {
		return nil, fmt.Errorf("kubelet: pool size %d out of range 1..180", opt.PoolSize)
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	k := &Kubelet{
		tb: tb, client: client, opt: opt, log: opt.Logger,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](20*time.Millisecond, 2*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "lbpath-kubelet"}),
		running:     map[string]*runningPod{},
		bound:       map[string]int{},
		terminating: map[string]time.Time{},
		done:        make(chan struct{}),
	}
	runCtx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Core().V1().Pods()
	k.pods = inf.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("kubelet: watch pods: %w", err)
	}
	factory.Start(runCtx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		cancel()
		factory.Shutdown()
		return nil, fmt.Errorf("kubelet: sync pod cache: %w", context.Cause(ctx))
	}
	go func() {
		defer close(k.done)
		defer factory.Shutdown()
		go func() {
			<-runCtx.Done()
			k.queue.ShutDown()
		}()
		for k.next(runCtx) {
		}
	}()
	return k, nil
}

// Stop ends the loop and waits for it.
func (k *Kubelet) Stop() {
	k.cancel()
	<-k.done
}

// Assignments lists every pod IP assignment so far, oldest first.
func (k *Kubelet) Assignments() []Assignment {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.assignments)
}

func (k *Kubelet) next(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	retry, err := k.sync(ctx, key)
	switch {
	case err != nil && ctx.Err() == nil:
		k.log.Warn("kubelet: sync pod failed, retrying", "pod", key, "err", err)
		k.queue.AddRateLimited(key)
	case retry > 0:
		k.queue.Forget(key)
		k.queue.AddAfter(key, retry)
	default:
		k.queue.Forget(key)
	}
	return true
}

// sync drives one pod towards its desired state; level-triggered, so it
// can run any number of times. A positive retry asks to be called again.
func (k *Kubelet) sync(ctx context.Context, key string) (retry time.Duration, err error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil // not a key we can ever handle
	}
	pod, err := k.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod, err = nil, nil
	}
	if err != nil {
		return 0, err
	}
	k.mu.Lock()
	rp := k.running[key]
	k.mu.Unlock()

	// A pod that is gone, being deleted, or replaced by a same-named new
	// one loses its sandbox first.
	if rp != nil && (pod == nil || pod.DeletionTimestamp != nil || pod.UID != rp.uid) {
		if pod != nil && pod.UID == rp.uid {
			if wait, err := k.terminate(ctx, pod); err != nil || wait > 0 {
				return wait, err
			}
		}
		if err := k.teardown(key, name, rp); err != nil {
			return 0, err
		}
		rp = nil
	}
	if pod == nil {
		k.forget(key)
		return 0, nil
	}
	if pod.DeletionTimestamp != nil {
		if pod.Spec.NodeName != "" && k.nodeIndex(pod.Spec.NodeName) == 0 {
			return 0, nil // another node's kubelet owns the deletion
		}
		// The sandbox is gone: complete the deletion as the kubelet does,
		// with grace period 0 and the UID as precondition so a new pod
		// with the same name is never hit.
		zero := int64(0)
		err := k.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			err = nil
		}
		if err == nil {
			k.forget(key)
		}
		return 0, err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return 0, nil
	}
	if pod.Spec.NodeName == "" {
		return 0, k.schedule(ctx, key, pod)
	}
	node := k.nodeIndex(pod.Spec.NodeName)
	if node == 0 {
		return 0, nil // not one of the testbed's nodes
	}
	k.mu.Lock()
	k.bound[key] = node
	k.mu.Unlock()
	if rp == nil {
		if rp, err = k.runPod(ctx, key, pod, node); err != nil {
			return 0, err
		}
	}
	if !podRunningReady(pod, rp.ip) {
		return 0, k.reportRunning(ctx, pod, rp)
	}
	return 0, nil
}

func (k *Kubelet) nodeIndex(name string) int {
	for _, n := range k.tb.Nodes {
		if n.Name == name {
			return n.Index
		}
	}
	return 0
}

// schedule binds the pod to the node with the fewest pods among those its
// nodeSelector allows (hostname only); ties go to the lowest index.
func (k *Kubelet) schedule(ctx context.Context, key string, pod *corev1.Pod) error {
	want := pod.Spec.NodeSelector[HostnameLabel]
	k.mu.Lock()
	load := map[int]int{}
	for _, n := range k.bound {
		load[n]++
	}
	best := 0
	for _, n := range k.tb.Nodes {
		if want != "" && want != n.Name {
			continue
		}
		if best == 0 || load[n.Index] < load[best] {
			best = n.Index
		}
	}
	k.mu.Unlock()
	if best == 0 {
		if want != "" && k.nodeIndex(want) == 0 {
			k.log.Warn("kubelet: pod selects an unknown node; leaving it pending", "pod", key, "node", want)
		}
		return nil
	}
	node := k.tb.Node(best)
	err := k.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node.Name},
	}, metav1.CreateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil // bound meanwhile, or gone: the next event tells
	}
	if err != nil {
		return fmt.Errorf("bind pod %s to %s: %w", key, node.Name, err)
	}
	// Counted at once: the informer shows the binding only later, and the
	// next pod must see this node's new load.
	k.mu.Lock()
	k.bound[key] = best
	k.mu.Unlock()
	k.log.Debug("kubelet: scheduled", "pod", key, "node", node.Name)
	return nil
}

// runPod allocates the lowest free IP of the node's pool, so that a freed
// IP is handed out again at the next opportunity, and creates the sandbox.
func (k *Kubelet) runPod(ctx context.Context, key string, pod *corev1.Pod, node int) (*runningPod, error) {
	var delay time.Duration
	var command []string
	for _, c := range pod.Spec.Containers {
		if c.Image == HostProcessImage && command == nil {
			command = append(append([]string{}, c.Command...), c.Args...)
		}
		for _, e := range c.Env {
			if e.Name == DelayEnv {
				d, err := time.ParseDuration(e.Value)
				if err != nil {
					return nil, fmt.Errorf("pod %s: %s=%q: %w", key, DelayEnv, e.Value, err)
				}
				delay = d
			}
		}
	}
	udp, err := servesUDP(pod)
	if err != nil {
		return nil, err
	}
	n := k.tb.Node(node)
	k.mu.Lock()
	used := map[netip.Addr]bool{}
	for _, rp := range k.running {
		used[rp.ip] = true
	}
	var ip netip.Addr
	var ips []netip.Addr
	for i := range k.opt.PoolSize {
		// One address per family of the cluster, the same host number
		// in each (the IPv4 layout's 10.244.N.(10+i) and its twin).
		all := k.tb.PodAddrs(n, byte(10+i))
		if c := all[0]; !used[c] && c != testbed.ClientPodIP && c != testbed.ClientPodIP6 {
			ip, ips = c, all
			break
		}
	}
	k.mu.Unlock()
	if !ip.IsValid() {
		return nil, fmt.Errorf("pod %s: all %d IPs of %s's pool are in use", key, k.opt.PoolSize, n.Name)
	}
	if _, err := k.tb.AddPodIPs(ctx, testbed.PodSpec{Name: pod.Name, Node: node, Delay: delay, UDP: udp, Command: command}, ips...); err != nil {
		return nil, err
	}
	rp := &runningPod{uid: pod.UID, node: node, ip: ip, ips: ips}
	k.mu.Lock()
	k.running[key] = rp
	k.assignments = append(k.assignments, Assignment{Pod: pod.Name, UID: pod.UID, Node: n.Name, IP: ip, At: time.Now()})
	k.mu.Unlock()
	k.log.Debug("kubelet: pod started", "pod", key, "node", n.Name, "ip", ip, "delay", delay)
	return rp, nil
}

// podRunningReady reports whether the pod's status already says what
// reportRunning would write.
func podRunningReady(pod *corev1.Pod, ip netip.Addr) bool {
	if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP != ip.String() {
		return false
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (k *Kubelet) reportRunning(ctx context.Context, pod *corev1.Pod, rp *runningPod) error {
	node := k.tb.Node(rp.node)
	now := metav1.Now()
	p := pod.DeepCopy()
	cond := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
	}
	started := true
	var cs []corev1.ContainerStatus
	for _, c := range pod.Spec.Containers {
		cs = append(cs, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: &started,
			ContainerID: "lbpath://" + string(pod.UID) + "/" + c.Name,
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	podIPs, hostIPs := podStatusIPs(rp.ips, node.IPs)
	p.Status = corev1.PodStatus{
		Phase:             corev1.PodRunning,
		HostIP:            node.IP.String(),
		HostIPs:           hostIPs,
		PodIP:             rp.ip.String(),
		PodIPs:            podIPs,
		StartTime:         &now,
		QOSClass:          corev1.PodQOSBestEffort,
		ContainerStatuses: cs,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodReadyToStartContainers), cond(corev1.PodInitialized),
			cond(corev1.ContainersReady), cond(corev1.PodReady), cond(corev1.PodScheduled),
		},
	}
	_, err := k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("report pod %s/%s running: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// terminate reports a deleted pod not ready, so the EndpointSlice
// controller marks its endpoint terminating before the sandbox goes, and
// asks to wait out TerminationGrace.
func (k *Kubelet) terminate(ctx context.Context, pod *corev1.Pod) (time.Duration, error) {
	key := pod.Namespace + "/" + pod.Name
	k.mu.Lock()
	since, ok := k.terminating[key]
	if !ok {
		since = time.Now()
		k.terminating[key] = since
	}
	k.mu.Unlock()
	if podReady(pod) {
		p := pod.DeepCopy()
		now := metav1.Now()
		for i, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
				p.Status.Conditions[i].Status = corev1.ConditionFalse
				p.Status.Conditions[i].LastTransitionTime = now
			}
		}
		for i := range p.Status.ContainerStatuses {
			p.Status.ContainerStatuses[i].Ready = false
		}
		_, err := k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("report pod %s not ready: %w", key, err)
		}
	}
	if left := k.opt.TerminationGrace - time.Since(since); left > 0 {
		return left, nil
	}
	return 0, nil
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (k *Kubelet) teardown(key, name string, rp *runningPod) error {
	if err := k.tb.RemovePod(name); err != nil {
		return err
	}
	k.mu.Lock()
	if k.running[key] == rp {
		delete(k.running, key)
	}
	k.mu.Unlock()
	k.log.Debug("kubelet: pod stopped", "pod", key, "ip", rp.ip)
	return nil
}

// forget drops all bookkeeping of a pod that is gone.
func (k *Kubelet) forget(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.bound, key)
	delete(k.terminating, key)
}

// errNoPod is returned by helpers for pods the kubelet does not run.
var errNoPod = errors.New("pod not running on a testbed node")

// PodIP returns the IP the kubelet gave the pod namespace/name.
func (k *Kubelet) PodIP(namespace, name string) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if rp, ok := k.running[namespace+"/"+name]; ok {
		return rp.ip, nil
	}
	return netip.Addr{}, fmt.Errorf("%s/%s: %w", namespace, name, errNoPod)
}
