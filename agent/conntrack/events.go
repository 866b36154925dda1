package conntrack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

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
	return &eventSocket{fd: fd, buf: make([]byte, 64<<10)}, nil
}

func (s *eventSocket) close() { unix.Close(s.fd) }

// drain reads every queued message and calls fn for each conntrack event
// with its decoded entry (use false: not needed by the join; err: the
// message was malformed). It returns an error wrapping unix.ENOBUFS when
// the kernel dropped events because the socket buffer was full.
func (s *eventSocket) drain(fn func(e *Entry, use bool, err error)) error {
	var e Entry
	for {
		n, _, err := unix.Recvfrom(s.fd, s.buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("read conntrack events: %w", err)
		}
		now := clock.now()
		for b := s.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				fn(&e, false, errShort)
				break
			}
			use, err := decodeEvent(binary.NativeEndian.Uint16(b[4:]), b[unix.NLMSG_HDRLEN:l], now, &e)
			fn(&e, use, err)
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
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
