// Package podns names the pod that owns a network namespace, exactly.
//
// A pod IP is reused as soon as the old pod's sandbox is gone, so naming a
// server socket from its address through the API server's history (the
// kube index) can pick the wrong owner while an address changes hands. The
// socket's network namespace cannot be reused: the kernel gives every
// namespace a 64-bit id when it is created (net_cookie; on Linux 6.18+ the
// same number nsfs's NS_GET_ID returns) and never gives it again while the
// kernel runs. The capture programs put it on every socket event; this
// package maps it to a pod UID by finding a process in that namespace
// (/proc/<pid>/ns/net, NS_GET_ID) and reading the pod UID from that
// process's cgroup path, which the kubelet names after the pod
// (cgroupfs: .../pod<uid>/<container>, systemd:
// ...-pod<uid_with_underscores>.slice/...).
//
// Why the id and not the namespace inode: inode numbers are handed out
// lowest-free-first and come back the moment a namespace is freed, which
// is exactly what happens during a rollout. A cached inode → pod mapping
// would need an fd held on every namespace (so it cannot be freed) and
// still cannot prove that an event seen before the fd was opened was in
// the same namespace. An id that is never reused needs neither: an id
// found in a scan names the namespace the event came from, whenever the
// scan ran, and a cached answer can never go stale.
//
// Cost: Lookup is one map read under a read lock (the per-connection
// path). A miss queues the id for the scanner goroutine, which walks /proc
// at most once per MinInterval (rate limit), opening one namespace file
// per distinct namespace and reading the cgroup file of the processes in
// namespaces not yet known; BenchmarkLookupHit and BenchmarkScan measure
// both.
package podns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// State is what Lookup knows about a namespace id.
type State uint8

// States.
const (
	// Unknown: not scanned yet (queued now); ask again later.
	Unknown State = iota
	// Pod: the namespace belongs to the pod whose UID is returned.
	Pod
	// NotPod: the namespace is the node's own (hostNetwork pods, node
	// daemons), or no process of a pod was in it: the IP index decides.
	NotPod
	// Gone: no process was in the namespace when it was scanned (the pod
	// had already exited, or no process ever was, as for namespaces held
	// only by a bind mount): the IP index decides.
	Gone
	// Ambiguous: processes of more than one pod were in it: the IP index
	// decides and the case is counted.
	Ambiguous
	// Unavailable: the resolver could not start (no host /proc, no
	// NS_GET_ID): the IP index decides.
	Unavailable
)

func (s State) String() string {
	return [...]string{"unknown", "pod", "not_pod", "gone", "ambiguous", "unavailable"}[s]
}

// Config tunes a Resolver.
type Config struct {
	// Proc is the host's /proc (the agent needs hostPID). Default /proc.
	Proc string
	// NodeNetns is the node's namespace file (empty: the agent's own).
	// Its id is known not to be a pod's, without reading every node
	// process's cgroup.
	NodeNetns string
	// MinInterval is the least time between two scans. Default 50ms.
	MinInterval time.Duration
	// TTL drops a cached id that was not looked up for this long (its
	// namespace is long gone). Default 10m.
	TTL time.Duration
	// MaxEntries bounds the cache; past it the least recently used
	// entries go first. Default 65536.
	MaxEntries int
}

// Stats counts the resolver's work.
type Stats struct {
	Scans       atomic.Uint64 // /proc walks
	ScanNanos   atomic.Uint64 // time spent in them
	Denied      atomic.Uint64 // processes whose namespace or cgroup could not be read (permission)
	Evicted     atomic.Uint64 // cache entries dropped by TTL or MaxEntries
	QueueFull   atomic.Uint64 // misses not queued because the queue was full (asked again later)
	Unavailable atomic.Bool   // the resolver could not start; everything falls back to the IP index
}

type entry struct {
	uid   string
	state State
	used  atomic.Int64 // UnixNano of the last lookup
}

// Resolver maps namespace ids to pod UIDs. Safe for concurrent use.
type Resolver struct {
	cfg    Config
	log    *slog.Logger
	Stats  Stats
	nodeID uint64

	mu      sync.RWMutex
	cache   map[uint64]*entry
	pending map[uint64]struct{}
	wake    chan struct{}
}

// maxPending bounds the ids waiting for a scan.
const maxPending = 4096

// New checks that pod namespaces can be read here (the host's /proc and
// the NS_GET_ID ioctl) and returns a resolver. On error the caller logs it
// once, reports it (Stats.Unavailable via Disabled) and names by IP only.
func New(cfg Config, log *slog.Logger) (*Resolver, error) {
	if cfg.Proc == "" {
		cfg.Proc = "/proc"
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = 50 * time.Millisecond
	}
	if cfg.TTL == 0 {
		cfg.TTL = 10 * time.Minute
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = 65536
	}
	if log == nil {
		log = slog.Default()
	}
	node := cfg.NodeNetns
	if node == "" {
		node = filepath.Join(cfg.Proc, "self/ns/net")
	}
	id, err := NamespaceID(node)
	if err != nil {
		return nil, fmt.Errorf("pod namespaces: %w", err)
	}
	if err := hostPID(cfg.Proc); err != nil {
		return nil, fmt.Errorf("pod namespaces: %w", err)
	}
	return &Resolver{cfg: cfg, log: log, nodeID: id, cache: map[uint64]*entry{},
		pending: map[uint64]struct{}{}, wake: make(chan struct{}, 1)}, nil
}

// Disabled returns a resolver that answers Unavailable to every lookup:
// the agent runs with it when New failed, so the fallback is counted.
func Disabled() *Resolver {
	r := &Resolver{cache: map[uint64]*entry{}, pending: map[uint64]struct{}{}, wake: make(chan struct{}, 1)}
	r.Stats.Unavailable.Store(true)
	return r
}

// nsGetID is NS_GET_ID, _IOR(0xb7, 0xd, __u64) (Linux 6.18): a
// namespace's 64-bit id, which for a network namespace is its net_cookie.
const nsGetID = 2<<30 | 8<<16 | 0xb7<<8 | 0xd

// NamespaceID returns the never-reused id of the namespace file at path.
func NamespaceID(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var id uint64
	if err := ioctlU64(int(f.Fd()), nsGetID, &id); err != nil {
		return 0, fmt.Errorf("NS_GET_ID on %s (Linux 6.18+): %w", path, err)
	}
	return id, nil
}

// Want queues id for resolution if it is not known yet; it never blocks.
// The agent calls it when a server socket opens, while the pod is surely
// alive, so the answer is ready when the connection is named.
func (r *Resolver) Want(id uint64) {
	if id == 0 || id == r.nodeID || r.Stats.Unavailable.Load() {
		return
	}
	r.mu.RLock()
	_, known := r.cache[id]
	r.mu.RUnlock()
	if !known {
		r.queue(id)
	}
}

// Lookup returns what is known about id. Unknown queues it.
func (r *Resolver) Lookup(id uint64) (uid string, st State) {
	if r.Stats.Unavailable.Load() {
		return "", Unavailable
	}
	if id == 0 {
		return "", Unknown
	}
	if id == r.nodeID {
		return "", NotPod
	}
	r.mu.RLock()
	e := r.cache[id]
	r.mu.RUnlock()
	if e == nil {
		r.queue(id)
		return "", Unknown
	}
	e.used.Store(time.Now().UnixNano())
	return e.uid, e.state
}

func (r *Resolver) queue(id uint64) {
	r.mu.Lock()
	if len(r.pending) >= maxPending {
		r.mu.Unlock()
		r.Stats.QueueFull.Add(1)
		return
	}
	r.pending[id] = struct{}{}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Pending is how many ids wait for a scan.
func (r *Resolver) Pending() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.pending)
}

// Run scans /proc for queued ids until ctx is done, at most once per
// MinInterval.
func (r *Resolver) Run(ctx context.Context) {
	if r.Stats.Unavailable.Load() {
		return
	}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		if wait := r.cfg.MinInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		last = time.Now()
		r.ScanOnce()
	}
}

// ScanOnce walks /proc once and settles every queued id: found in a pod's
// namespace, the node's, or gone.
func (r *Resolver) ScanOnce() {
	r.mu.Lock()
	want := r.pending
	r.pending = map[uint64]struct{}{}
	r.mu.Unlock()
	start := time.Now()
	found := r.scan(want)
	r.Stats.Scans.Add(1)
	r.Stats.ScanNanos.Add(uint64(time.Since(start)))
	now := time.Now().UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, e := range found {
		e.used.Store(now)
		r.cache[id] = e
	}
	for id := range want {
		if _, ok := r.cache[id]; !ok {
			e := &entry{state: Gone}
			e.used.Store(now)
			r.cache[id] = e
		}
	}
	r.evict(now)
}

// evict drops entries unused for TTL, then the least recently used ones
// past MaxEntries. Called with mu held.
func (r *Resolver) evict(now int64) {
	for id, e := range r.cache {
		if now-e.used.Load() > int64(r.cfg.TTL) {
			delete(r.cache, id)
			r.Stats.Evicted.Add(1)
		}
	}
	for len(r.cache) > r.cfg.MaxEntries {
		var oldID uint64
		old := int64(1<<63 - 1)
		for id, e := range r.cache {
			if u := e.used.Load(); u < old {
				old, oldID = u, id
			}
		}
		delete(r.cache, oldID)
		r.Stats.Evicted.Add(1)
	}
}

// nsProcs is the processes seen in one namespace during a scan.
type nsProcs struct {
	pids []string
}

// scan walks /proc: it groups processes by namespace inode (a stat each),
// then takes each namespace's id by opening it (NS_GET_ID) and, for ids
// not cached yet, reads its processes' cgroups. The open file pins the
// namespace while its processes are read, so the inode cannot name another
// namespace in the meantime; each process is re-checked to still be in it
// after its cgroup is read (a PID reused in between is dropped).
func (r *Resolver) scan(want map[uint64]struct{}) map[uint64]*entry {
	dirs, err := os.ReadDir(r.cfg.Proc)
	if err != nil {
		r.log.Warn("pod namespaces: read /proc", "err", err)
		return nil
	}
	byIno := map[uint64]*nsProcs{}
	for _, d := range dirs {
		name := d.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(r.cfg.Proc, name, "ns/net"), &st); err != nil {
			if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				r.Stats.Denied.Add(1)
			}
			continue
		}
		g := byIno[st.Ino]
		if g == nil {
			g = &nsProcs{}
			byIno[st.Ino] = g
		}
		g.pids = append(g.pids, name)
	}
	out := map[uint64]*entry{}
	for ino, g := range byIno {
		if e, id, ok := r.resolveNS(ino, g); ok {
			out[id] = e
		}
	}
	return out
}

// resolveNS names one namespace. ok is false when its id is cached
// already or it could not be opened.
func (r *Resolver) resolveNS(ino uint64, g *nsProcs) (*entry, uint64, bool) {
	for i, pid := range g.pids {
		f, err := os.Open(filepath.Join(r.cfg.Proc, pid, "ns/net"))
		if err != nil {
			continue // exited, or denied: try the next process
		}
		defer f.Close()
		var st unix.Stat_t
		if unix.Fstat(int(f.Fd()), &st) != nil || st.Ino != ino {
			continue // the PID now names another process elsewhere
		}
		var id uint64
		if ioctlU64(int(f.Fd()), nsGetID, &id) != nil {
			continue
		}
		if id == r.nodeID {
			return nil, 0, false
		}
		r.mu.RLock()
		_, known := r.cache[id]
		r.mu.RUnlock()
		if known {
			return nil, 0, false
		}
		return r.podOf(ino, g.pids[i:]), id, true
	}
	return nil, 0, false
}

// podOf reads the pod UIDs of the processes in a pinned namespace.
func (r *Resolver) podOf(ino uint64, pids []string) *entry {
	uids := map[string]bool{}
	for _, pid := range pids {
		uid, err := readPodUID(filepath.Join(r.cfg.Proc, pid, "cgroup"))
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				r.Stats.Denied.Add(1)
			}
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join(r.cfg.Proc, pid, "ns/net"), &st) != nil || st.Ino != ino {
			continue // exited (or PID reused) while read
		}
		if uid != "" {
			uids[uid] = true
		}
	}
	switch len(uids) {
	case 0:
		return &entry{state: NotPod}
	case 1:
		for uid := range uids {
			return &entry{state: Pod, uid: uid}
		}
	}
	return &entry{state: Ambiguous}
}

func readPodUID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return PodUIDFromCgroup(b), nil
}

// podSeg matches the kubelet's pod cgroup: "pod<uid>" (cgroupfs driver)
// or "...-pod<uid with _ for ->.slice" (systemd driver). Static pods'
// UIDs are 32 hex digits without dashes.
var podSeg = regexp.MustCompile(`(?:^|[/-])pod([0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12})(?:\.slice)?(?:/|$)`)

// PodUIDFromCgroup returns the pod UID in a /proc/<pid>/cgroup file, ""
// when the process is in no pod's cgroup. Every hierarchy's line is
// looked at (hybrid hosts list v1 controllers and the v2 line).
func PodUIDFromCgroup(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		// hierarchy-ID:controller-list:cgroup-path
		i := strings.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := strings.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		p := line[i+1+j+1:]
		if m := podSeg.FindStringSubmatch(p); m != nil {
			return strings.ReplaceAll(m[1], "_", "-")
		}
	}
	return ""
}

func ioctlU64(fd int, req uint, v *uint64) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	if errno != 0 {
		return errno
	}
	return nil
}

// hostPID fails when the agent's /proc is not the host's: a process in a
// nested PID namespace (a pod without hostPID) lists more than one id on
// its NSpid line, and its /proc shows only its own pod's processes.
func hostPID(proc string) error {
	b, err := os.ReadFile(filepath.Join(proc, "self/status"))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			if len(strings.Fields(rest)) > 1 {
				return fmt.Errorf("%s is not the host's (the agent runs in a nested PID namespace; it needs hostPID)", proc)
			}
			return nil
		}
	}
	return nil
}

// Static returns a resolver that knows only the given namespaces (id →
// pod UID) and never scans: for tests of the naming rules, and for callers
// that learn pods' namespaces another way (e.g. from the container
// runtime). Other ids stay Unknown.
func Static(pods map[uint64]string) *Resolver {
	r := &Resolver{cache: map[uint64]*entry{}, pending: map[uint64]struct{}{}, wake: make(chan struct{}, 1)}
	for id, uid := range pods {
		r.cache[id] = &entry{state: Pod, uid: uid}
	}
	return r
}
