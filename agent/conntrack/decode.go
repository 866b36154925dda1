package conntrack

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"golang.org/x/sys/unix"
)

// ctnetlink attribute types (linux/netfilter/nfnetlink_conntrack.h) the
// join needs; everything else in an event is skipped.
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaID         = 12

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	// Message types: NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*.
	msgCTNew    = 1<<8 | 0
	msgCTDelete = 1<<8 | 2

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
	nfgenLen    = 4      // struct nfgenmsg after the netlink header
)

var (
	errShort  = errors.New("conntrack event truncated")
	errNoAddr = errors.New("conntrack event tuple without addresses")
)

// attrs walks the netlink attributes in b, calling fn with each type and
// payload until fn returns false.
func attrs(b []byte, fn func(typ uint16, v []byte) bool) error {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b))
		if n < 4 || n > len(b) {
			return errShort
		}
		if !fn(binary.NativeEndian.Uint16(b[2:])&nlaTypeMask, b[4:n]) {
			return nil
		}
		n = (n + 3) &^ 3
		if n > len(b) {
			return nil // the last attribute needs no padding
		}
		b = b[n:]
	}
	if len(b) != 0 {
		return errShort // a partial attribute header: the message was cut
	}
	return nil
}

// decodeTuple fills t from a CTA_TUPLE_* payload and returns its protocol.
func decodeTuple(b []byte, t *Tuple) (proto uint8, err error) {
	var src, dst netip.Addr
	var sport, dport uint16
	err = attrs(b, func(typ uint16, v []byte) bool {
		switch typ {
		case ctaTupleIP:
			err = attrs(v, func(typ uint16, v []byte) bool {
				switch {
				case (typ == ctaIPv4Src || typ == ctaIPv4Dst) && len(v) == 4:
					a := netip.AddrFrom4([4]byte(v))
					if typ == ctaIPv4Src {
						src = a
					} else {
						dst = a
					}
				case (typ == ctaIPv6Src || typ == ctaIPv6Dst) && len(v) == 16:
					a := netip.AddrFrom16([16]byte(v)).Unmap()
					if typ == ctaIPv6Src {
						src = a
					} else {
						dst = a
					}
				}
				return true
			})
		case ctaTupleProto:
			err = attrs(v, func(typ uint16, v []byte) bool {
				switch {
				case typ == ctaProtoNum && len(v) >= 1:
					proto = v[0]
				case typ == ctaProtoSrcPort && len(v) >= 2:
					sport = binary.BigEndian.Uint16(v)
				case typ == ctaProtoDstPort && len(v) >= 2:
					dport = binary.BigEndian.Uint16(v)
				}
				return true
			})
		}
		return err == nil
	})
	*t = Tuple{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport)}
	return proto, err
}

// decodeEvent fills e from one ctnetlink message (nlmsg type and the
// payload after the netlink header) without allocating: the event path
// runs once or twice per connection, and the general decoder's allocations
// (a Flow with every attribute, per event) were most of its cost. It
// reports false for messages the join does not use: other message types,
// entries neither TCP nor UDP, entries without a translated address.
func decodeEvent(msgType uint16, payload []byte, now uint64, e *Entry) (bool, error) {
	var typ EntryType
	switch msgType {
	case msgCTNew:
		typ = EntryNew
	case msgCTDelete:
		typ = EntryDestroy
	default:
		return false, nil
	}
	if len(payload) < nfgenLen {
		return false, errShort
	}
	*e = Entry{Type: typ, TimeNs: now}
	var protoOrig uint8
	var haveOrig, haveReply bool
	var err error
	aerr := attrs(payload[nfgenLen:], func(t uint16, v []byte) bool {
		switch t {
		case ctaTupleOrig:
			protoOrig, err = decodeTuple(v, &e.Original)
			haveOrig = true
		case ctaTupleReply:
			_, err = decodeTuple(v, &e.Reply)
			haveReply = true
		case ctaID:
			if len(v) >= 4 {
				e.ID = binary.BigEndian.Uint32(v)
			}
		}
		return err == nil
	})
	if err == nil {
		err = aerr
	}
	if err != nil {
		return false, err
	}
	if !haveOrig || !haveReply || (protoOrig != unix.IPPROTO_TCP && protoOrig != unix.IPPROTO_UDP) {
		return false, nil
	}
	if !e.Original.Src.Addr().IsValid() || !e.Original.Dst.Addr().IsValid() ||
		!e.Reply.Src.Addr().IsValid() || !e.Reply.Dst.Addr().IsValid() {
		return false, errNoAddr
	}
	e.Proto = protoOrig
	// The tuples are the truth; status bits can lag on a destroy event.
	e.DNAT = e.Reply.Src != e.Original.Dst
	e.SNAT, e.PortRemap = srcRewrite(e.Original.Src, e.Reply.Dst)
	return e.DNAT || e.SNAT || e.PortRemap, nil
}
