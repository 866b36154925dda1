package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lbpath/lbpath/agent/netns"
)

// EventPoll is how often the event socket is drained. Events are read in
// batches rather than one wakeup each: at a few thousand connections per
// second a blocking reader (poller wakeup, two syscalls per message, a
// channel hand-off to another goroutine) cost the agent ~100 µs of CPU per
// connection on these machines, more than everything else it does for it. The delay is far below the join wait (1 s) that absorbs the
// two streams' skew.
const EventPoll = 20 * time.Millisecond

// Multicast groups of ctnetlink (NFNLGRP_CONNTRACK_*), as bind(2) bits.
const (
	groupNew     = 1 << (1 - 1)
	groupDestroy = 1 << (3 - 1)
)

// eventSocket is a ctnetlink subscription to new and destroyed entries,
// read without blocking.
type eventSocket struct {
	fd  int
	buf []byte
	// msgs read up to batchMsgs datagrams (one event each) per
	// recvmmsg(2), each into its own slotBytes of buf: one system call per
	// batch instead of one per event, which cost ≈2 µs each on these VMs.
	msgs []mmsghdr
	iovs []unix.Iovec
}

const (
	batchMsgs = 32
	// slotBytes holds any ctnetlink event: the kernel builds them in at
	// most NLMSG_GOODSIZE (≤ 8 KiB); a longer one would come truncated
	// (MSG_TRUNC), which drain reports as malformed, never decodes.
	slotBytes = 8 << 10
)

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

func newEventSocket(fd int) *eventSocket {
	s := &eventSocket{fd: fd, buf: make([]byte, batchMsgs*slotBytes), msgs: make([]mmsghdr, batchMsgs), iovs: make([]unix.Iovec, batchMsgs)}
	for i := range s.msgs {
		s.iovs[i].Base = &s.buf[i*slotBytes]
		s.iovs[i].SetLen(slotBytes)
		s.msgs[i].hdr.Iov = &s.iovs[i]
		s.msgs[i].hdr.SetIovlen(1)
	}
	return s
}

// recv reads up to batchMsgs queued datagrams; it returns how many, or
// the first read's error (EAGAIN when none is queued; ENOBUFS after the
// kernel dropped events).
func (s *eventSocket) recv() (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[0])),
		uintptr(len(s.msgs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// openEvents subscribes in the namespace at nsPath. The socket belongs to
// that namespace for its lifetime.
func openEvents(nsPath string, rcvbuf int) (*eventSocket, error) {
	fd := -1
	err := netns.Do(nsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groupNew | groupDestroy}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind conntrack event groups: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to conntrack events in netns %q: %w", nsPath, err)
	}
	// FORCE goes past net.core.rmem_max (the agent has CAP_NET_ADMIN).
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("conntrack event socket buffer: %w", err)
		}
	}
	return newEventSocket(fd), nil
}

func (s *eventSocket) close() { unix.Close(s.fd) }

// drain reads every queued message and calls fn for each conntrack event
// with its decoded entry (use false: not needed by the join; err: the
// message was malformed). It returns an error wrapping unix.ENOBUFS when
// the kernel dropped events because the socket buffer was full.
func (s *eventSocket) drain(fn func(e *Entry, use bool, err error)) error {
	var e Entry
	for {
		n, err := s.recv()
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("read conntrack events: %w", err)
		}
		now := clock.now()
		for i := range n {
			if s.msgs[i].hdr.Flags&unix.MSG_TRUNC != 0 {
				fn(&e, false, errShort)
				continue
			}
			s.decode(s.buf[i*slotBytes:i*slotBytes+int(s.msgs[i].n)], now, &e, fn)
		}
		if n < len(s.msgs) {
			return nil // the queue is empty: save the EAGAIN round trip
		}
	}
}

// decode calls fn for each netlink message of one datagram.
func (s *eventSocket) decode(b []byte, now uint64, e *Entry, fn func(e *Entry, use bool, err error)) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			fn(e, false, errShort)
			return
		}
		use, err := decodeEvent(binary.NativeEndian.Uint16(b[4:]), b[unix.NLMSG_HDRLEN:l], now, e)
		fn(e, use, err)
		b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
	}
}

// readEvents drains s every EventPoll until ctx is done or reading fails.
func (s *eventSocket) readEvents(ctx context.Context, fn func(e *Entry, use bool, err error)) error {
	tick := time.NewTicker(EventPoll)
	defer tick.Stop()
	for {
		if err := s.drain(fn); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
