package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/lbpath/lbpath/agent/bpf"
)

// Config sizes the kernel side. Zero values take the defaults.
type Config struct {
	// RingBufferBytes is the size of the event ring buffer; a power of two
	// and a multiple of the page size. Default 4 MiB (≈37k events).
	RingBufferBytes uint32
	// MaxConnections bounds the kernel table of open connections. A
	// connection that finds it full is not tracked and is counted.
	MaxConnections uint32
	// NoRequestTiming leaves out the per-read/per-write hooks that time
	// requests (on_recv, on_send): connection records stay complete, the
	// request metrics go away, and so does their cost on every socket call.
	NoRequestTiming bool
	// NoConnectCapture leaves out the connect() destination capture
	// (connect.bpf.c), which sees Services a socket load balancer
	// translated at connect() without conntrack.
	NoConnectCapture bool
}

// Counter slots of the kernel's per-CPU counters array (enum counter).
const (
	counterRingDropState = iota
	counterRingDropRstTx
	counterRingDropICMP
	counterConnsFull
	counterCloseUntracked
	counterRingDropRequest
)

// counterRingDropICMP6 is C_RB_DROP_ICMP6: slot 7, apart from the iota run
// so that slots added by others in between do not move it.
const counterRingDropICMP6 = 7

// PollInterval bounds how long an event can wait in the ring buffer when
// the kernel did not wake the reader.
const PollInterval = 20 * time.Millisecond

// Counters are the kernel side's loss and coverage counts since load.
type Counters struct {
	// RingBufferDrops is per program: events lost because the ring buffer was full.
	RingBufferDrops map[string]uint64
	// ConnTableFull counts connections not tracked because the kernel
	// connection table was full, and server sockets whose request timing
	// state the kernel could not allocate (their requests go unrecorded).
	ConnTableFull uint64
	// CloseUntracked counts closes of sockets the agent never saw open
	// (opened before it started, or not tracked).
	CloseUntracked uint64
}

// program describes one eBPF program and whether the agent can run without it.
type program struct {
	name     string
	required bool
	dropSlot int // counters slot for its ring-buffer drops, -1 if it emits nothing
}

var programs = []program{
	{name: "on_state", required: true, dropSlot: counterRingDropState},
	{name: "on_rst_rx", required: false, dropSlot: -1},
	{name: "on_error", required: false, dropSlot: -1},
	{name: "on_rst_tx", required: false, dropSlot: counterRingDropRstTx},
	{name: "on_icmp_send", required: false, dropSlot: counterRingDropICMP},
	// ICMPv6 refusals: the error's route lookup and the SYN's drop.
	{name: "on_fib6_lookup", required: false, dropSlot: -1},
	{name: "on_kfree_skb", required: false, dropSlot: counterRingDropICMP6},
	{name: "on_recv", required: false, dropSlot: -1},
	{name: "on_send", required: false, dropSlot: counterRingDropRequest},
}

// Capture owns the loaded programs, their links and the ring-buffer reader.
type Capture struct {
	log      *slog.Logger
	maps     *ebpf.Collection
	progs    []*ebpf.Program
	names    []string // of progs, same order
	links    []link.Link
	reader   *ringbuf.Reader
	counters *ebpf.Map
	connect  *connectProgs // nil when unavailable
	// Unavailable lists programs that could not load or attach, with the
	// kernel's reason; they were reported once at Open.
	Unavailable map[string]error
	closeOnce   sync.Once
}

// Open loads the maps and every program, attaching each with its own link.
// A program that cannot load or attach is logged once with the kernel's
// reason and left out; only the state-change program is required.
func Open(cfg Config, log *slog.Logger) (*Capture, error) {
	if log == nil {
		log = slog.Default()
	}
	spec, err := bpf.LoadLbpath()
	if err != nil {
		return nil, fmt.Errorf("load eBPF spec: %w", err)
	}
	if cfg.RingBufferBytes != 0 {
		spec.Maps["events"].MaxEntries = cfg.RingBufferBytes
	}
	if cfg.MaxConnections != 0 {
		spec.Maps["conns"].MaxEntries = cfg.MaxConnections
	}
	if cfg.NoRequestTiming {
		// Server sockets then get no request state (socket storage).
		if err := spec.Variables["request_timing"].Set(uint8(0)); err != nil {
			return nil, fmt.Errorf("set request_timing: %w", err)
		}
	}

	// Maps first, shared by all programs, so one program failing to load
	// does not take the others with it.
	mapSpec := spec.Copy()
	mapSpec.Programs = map[string]*ebpf.ProgramSpec{}
	// One decoded copy of the kernel's BTF for every load (each load would
	// otherwise decode its own, tens of MiB of garbage apiece); dropped
	// when Open returns.
	cache := btf.NewCache()
	maps, err := ebpf.NewCollectionWithOptions(mapSpec, ebpf.CollectionOptions{Cache: cache})
	if err != nil {
		return nil, fmt.Errorf("create eBPF maps: %w", err)
	}
	c := &Capture{log: log, maps: maps, counters: maps.Maps["counters"], Unavailable: map[string]error{}}

	for _, p := range programs {
		if cfg.NoRequestTiming && (p.name == "on_recv" || p.name == "on_send") {
			c.Unavailable[p.name] = errors.New("disabled by configuration")
			continue
		}
		prog, l, err := loadAttach(spec, maps, cache, p.name)
		if err != nil {
			if p.required {
				c.Close()
				return nil, fmt.Errorf("eBPF program %s: %w", p.name, err)
			}
			c.Unavailable[p.name] = err
			log.Warn("eBPF program unavailable; continuing without it", "program", p.name, "reason", err)
			continue
		}
		c.progs = append(c.progs, prog)
		c.names = append(c.names, p.name)
		c.links = append(c.links, l)
	}

	switch {
	case cfg.NoConnectCapture:
		c.Unavailable[connectCapture] = errors.New("disabled by configuration")
	default:
		if c.connect, err = openConnect(maps.Maps["events"], cache); err != nil {
			c.Unavailable[connectCapture] = err
			log.Warn("connect() destination capture unavailable; Services translated at connect() (socket-LB) will read as direct", "reason", err)
		}
	}

	c.reader, err = ringbuf.NewReader(maps.Maps["events"])
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	// The decoded kernel BTF is garbage now; hand its pages back to the
	// kernel rather than carrying them in RSS for the agent's lifetime.
	cache = nil
	debug.FreeOSMemory()
	return c, nil
}

func loadAttach(spec *ebpf.CollectionSpec, maps *ebpf.Collection, cache *btf.Cache, name string) (*ebpf.Program, link.Link, error) {
	ps := spec.Copy()
	ps.Programs = map[string]*ebpf.ProgramSpec{name: ps.Programs[name]}
	coll, err := ebpf.NewCollectionWithOptions(ps, ebpf.CollectionOptions{MapReplacements: maps.Maps, Cache: cache})
	if err != nil {
		return nil, nil, fmt.Errorf("load: %w", err)
	}
	prog := coll.Programs[name]
	delete(coll.Programs, name)
	coll.Close() // maps are replacements owned by c.maps; only the program survives
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		prog.Close()
		return nil, nil, fmt.Errorf("attach: %w", err)
	}
	return prog, l, nil
}

// Run reads events until ctx is done or the reader is closed, calling fn
// for each decoded event. fn must not keep e: it is reused.
// Records that fail to decode are counted in bad.
//
// When ctx is done Run still reads what the kernel wrote before, then
// returns: the closes of connections that ended just before the agent was
// told to stop are in the ring buffer, and the agent flushes them as
// records on its way out (a pod being deleted relies on it).
func (c *Capture) Run(ctx context.Context, fn func(e *Event), bad func(err error)) error {
	var e Event
	return readRing(ctx, c.reader, "ring buffer", func(b []byte) error { return Decode(b, &e) }, func() { fn(&e) }, bad)
}

// readRing is the loop every ring buffer of the capture is read with:
// decode each record into the caller's reused value and hand it on; on
// ctx done, read what the kernel wrote before, then return.
func readRing(ctx context.Context, r *ringbuf.Reader, what string, decode func([]byte) error, emit func(), bad func(err error)) error {
	var rec ringbuf.Record
	for {
		stopping := ctx.Err() != nil
		// The kernel side skips the wakeup for small batches
		// (BPF_RB_NO_WAKEUP), so poll at least every PollInterval. A
		// deadline already passed reads every record there is, then
		// reports the deadline.
		deadline := time.Now().Add(PollInterval)
		if stopping {
			deadline = time.Now()
		}
		r.SetDeadline(deadline)
		if err := r.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if stopping {
					return nil
				}
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read %s: %w", what, err)
		}
		if err := decode(rec.RawSample); err != nil {
			bad(err)
			continue
		}
		emit()
	}
}

// Counters reads the kernel's per-CPU counters and sums them.
func (c *Capture) Counters() (Counters, error) {
	var out Counters
	out.RingBufferDrops = map[string]uint64{}
	read := func(slot int) (uint64, error) {
		var per []uint64
		if err := c.counters.Lookup(uint32(slot), &per); err != nil {
			return 0, fmt.Errorf("read counter %d: %w", slot, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		return sum, nil
	}
	for _, p := range programs {
		if p.dropSlot < 0 {
			continue
		}
		v, err := read(p.dropSlot)
		if err != nil {
			return out, err
		}
		out.RingBufferDrops[p.name] = v
	}
	if c.connect != nil {
		cc, err := c.connect.counters()
		if err != nil {
			return out, err
		}
		out.RingBufferDrops[connectCapture] = cc.RingBufferDrops
	}
	var err error
	if out.ConnTableFull, err = read(counterConnsFull); err != nil {
		return out, err
	}
	if out.CloseUntracked, err = read(counterCloseUntracked); err != nil {
		return out, err
	}
	return out, nil
}

// Programs lists the names of the programs that are loaded and attached.
func (c *Capture) Programs() []string {
	var names []string
	for _, p := range programs {
		if _, bad := c.Unavailable[p.name]; !bad {
			names = append(names, p.name)
		}
	}
	if c.connect != nil {
		names = append(names, connectCapture)
	}
	sort.Strings(names)
	return names
}

// ProgramStats returns each loaded program's run count and accumulated run
// time (zero unless kernel.bpf_stats_enabled is on; see ebpf.EnableStats).
func (c *Capture) ProgramStats() (map[string]ebpf.ProgramStats, error) {
	out := map[string]ebpf.ProgramStats{}
	for i, p := range c.progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", c.names[i], err)
		}
		out[c.names[i]] = *st
	}
	return out, nil
}

// Close detaches every link and releases programs and maps. Nothing is
// pinned, so nothing outlives the process even if Close is never called.
func (c *Capture) Close() error {
	var errs []error
	c.closeOnce.Do(func() {
		if c.reader != nil {
			errs = append(errs, c.reader.Close())
		}
		if c.connect != nil {
			errs = append(errs, c.connect.close())
		}
		for _, l := range c.links {
			errs = append(errs, l.Close())
		}
		for _, p := range c.progs {
			errs = append(errs, p.Close())
		}
		if c.maps != nil {
			c.maps.Close()
		}
	})
	return errors.Join(errs...)
}
