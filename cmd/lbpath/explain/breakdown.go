package explain

import (
	"math"

	"github.com/prometheus/common/model"
)

// breakdown aggregates increase(lbpath_connections_total) samples grouped by
// role, entry, entry node, SNAT, cross-node and outcome.
//
// Every node that sees a connection records it once, so the views must not
// be summed blindly. The entry of a connection is known on the node that
// translated it, so entries, entry nodes, SNAT and cross-node are counted on
// the "entry view":
//   - role forward: the entry node of a cross-node hop;
//   - role client with cross_node=true: a pod dialling a Service whose pod
//     is elsewhere (the pod's node records it as a plain "direct" server);
//   - role server with an entry other than direct: translated on the pod's
//     own node (same-node hops, and the pod's node under Local policy).
//
// A pod's server record of a hop that crossed nodes says entry "direct" and
// is left to the entry node's record. Served connections are the server
// records: every accepted connection has exactly one.
type breakdown struct {
	served       float64
	entries      map[string]float64
	entryNodes   map[string]float64
	entryTotal   float64
	entryCross   float64
	crossUnknown float64 // entry view whose entry node is not visible (entry external_not_visible, unknown)
	external     float64 // entry view via loadbalancer or nodeport
	externalSNAT float64
	serverSNAT   float64 // server records that saw a node's address instead of the client
	attempts     float64
	failed       float64
	failures     map[failKey]float64
}

type failKey struct{ role, outcome string }

func newBreakdown() *breakdown {
	return &breakdown{entries: map[string]float64{}, entryNodes: map[string]float64{}, failures: map[failKey]float64{}}
}

// handshakeFailure is an outcome that means the connection never opened.
func handshakeFailure(outcome string) bool {
	switch outcome {
	case "refused", "timeout", "unreachable", "failed":
		return true
	}
	return false
}

func (b *breakdown) add(m model.Metric, v float64) {
	if v <= 0 || math.IsNaN(v) {
		return
	}
	role, entry, outcome := label(m, lRole), label(m, lEntry), label(m, lOutcome)
	snat, cross := label(m, lSNAT) == "true", label(m, lCross) == "true"
	if role == "server" {
		b.served += v
		if snat {
			b.serverSNAT += v
		}
	}
	if role == "forward" || (role == "client" && cross) || (role == "server" && entry != "direct" && entry != "") {
		b.entryTotal += v
		b.entries[entry] += v
		if n := label(m, lEntryNode); n != "" {
			b.entryNodes[n] += v
		}
		if cross {
			b.entryCross += v
		}
		if entry == entryNotVisible || entry == entryUnknown {
			b.crossUnknown += v
		}
		if entry == "loadbalancer" || entry == "nodeport" || entry == "externalip" || entry == entryNotVisible {
			b.external += v
			if snat {
				b.externalSNAT += v
			}
		}
	}
	// Failures: an accepted connection that ended badly is a server record;
	// one that never opened is a reject (refused by a node's kernel) or a
	// client record (a pod's connect failed). A pod's connection refused by
	// its own node's REJECT rule can appear in both of the last two views.
	switch {
	case role == "server":
		b.attempts += v
		if outcome != "ok" {
			b.failed += v
			b.failures[failKey{role, outcome}] += v
		}
	case role == "reject", role == "client" && handshakeFailure(outcome):
		b.attempts += v
		b.failed += v
		b.failures[failKey{role, outcome}] += v
	}
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return a / b
}

// Entries of a pod's own record where the translation was not visible
// (agent/kube EntryExternalNotVisible, EntryUnknown): no entry node, so
// whether they crossed nodes is not known.
const (
	entryNotVisible = "external_not_visible"
	entryUnknown    = "unknown"
)

// crossShare is the fraction of entry-view connections that crossed nodes,
// of those whose entry node is known.
func (b *breakdown) crossShare() float64 {
	return ratio(b.entryCross, b.entryTotal-b.crossUnknown)
}

// snatShare is the fraction of LB/NodePort connections whose client address
// was rewritten; without an entry view (agents without the entry node's
// conntrack) the pods' own view stands in.
func (b *breakdown) snatShare() float64 {
	if b.external > 0 {
		return ratio(b.externalSNAT, b.external)
	}
	return ratio(b.serverSNAT, b.served)
}

func (b *breakdown) failShare() float64 { return ratio(b.failed, b.attempts) }
