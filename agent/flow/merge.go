package flow

import (
	"net/netip"
	"sort"

	"github.com/lbpath/lbpath/agent/conntrack"
)

// Merged is one connection as every node that saw it reported it, joined on
// the tuple the pod's socket sees (Connection.WireKey). It answers the
// questions no single node can: where the connection entered, where the pod
// ran, and who the client really was when another node SNATed it.
type Merged struct {
	Key       conntrack.Tuple
	Transport string         // "udp" for UDP flows, empty for TCP (as Connection.Transport)
	Client    netip.AddrPort // the real client, when any node saw it before SNAT
	Target    netip.AddrPort // what the client dialled
	EntryNode string         // the node that applied the Service DNAT, or the socket-LB translation ("" when none did)
	PodNode   string         // the node of the accepting socket ("" when none reported it)
	SNAT      bool           // some node rewrote the client's address
	CrossNode bool           // entry and pod on different nodes
	Outcome   Outcome        // the server's (else the client's, else the entry's) outcome
	Server    *Connection
	ClientRec *Connection
	Entry     *Connection // the record carrying the DNAT, which may be Server or ClientRec too
	Reject    *Connection
}

// Merge groups records from any number of nodes into connections. Records
// with the same key are one connection unless a role repeats, which means
// the tuple was reused by a later connection.
func Merge(recs []Connection) []Merged {
	idx := make([]int, len(recs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ka, kb := recs[idx[a]].WireKey(), recs[idx[b]].WireKey()
		if ta, tb := recs[idx[a]].Transport, recs[idx[b]].Transport; ta != tb {
			return ta < tb // a TCP connection and a UDP flow on the same ports are not one
		}
		if ka != kb {
			if ka.Src != kb.Src {
				return ka.Src.Compare(kb.Src) < 0
			}
			return ka.Dst.Compare(kb.Dst) < 0
		}
		return recs[idx[a]].Start.Before(recs[idx[b]].Start)
	})
	var out []Merged
	var cur *Merged
	for _, i := range idx {
		r := &recs[i]
		if cur == nil || cur.Key != r.WireKey() || cur.Transport != r.Transport || cur.has(r.Role) {
			out = append(out, Merged{Key: r.WireKey(), Transport: r.Transport})
			cur = &out[len(out)-1]
		}
		switch r.Role {
		case RoleServer:
			cur.Server = r
		case RoleClient:
			cur.ClientRec = r
		case RoleForward:
			cur.Entry = r
		case RoleReject:
			cur.Reject = r
		}
	}
	for i := range out {
		out[i].settle()
	}
	return out
}

func (m *Merged) has(r Role) bool {
	switch r {
	case RoleServer:
		return m.Server != nil
	case RoleClient:
		return m.ClientRec != nil
	case RoleForward:
		return m.Entry != nil && m.Entry.Role == RoleForward
	case RoleReject:
		return m.Reject != nil
	}
	return false
}

func (m *Merged) settle() {
	if m.Entry == nil {
		for _, r := range []*Connection{m.ClientRec, m.Server} {
			if r != nil && (r.SocketLB || r.NAT != nil && r.NAT.DNAT) {
				m.Entry = r
				break
			}
		}
	}
	// The most upstream view of the client wins: the entry node's NAT
	// original, then the client socket, then what the server saw.
	for _, r := range []*Connection{m.Server, m.Reject, m.ClientRec, m.Entry} {
		if r == nil {
			continue
		}
		m.Client, m.Target = r.Client, r.Target
		if r.SNAT {
			m.SNAT = true
		}
	}
	if m.Entry != nil {
		m.EntryNode = m.Entry.Node
	}
	if m.Server != nil {
		m.PodNode = m.Server.Node
	}
	m.CrossNode = m.EntryNode != "" && m.PodNode != "" && m.EntryNode != m.PodNode
	for _, r := range []*Connection{m.Entry, m.Reject, m.ClientRec, m.Server} {
		if r != nil {
			m.Outcome = r.Outcome
		}
	}
}
