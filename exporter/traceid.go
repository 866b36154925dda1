package exporter

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/lbpath/lbpath/agent/conntrack"
)

// EpochSeconds is the width of the time window mixed into a trace ID.
const EpochSeconds = 64

// TraceID derives a connection's trace ID from what every node that sees
// the connection agrees on, without talking to each other:
//
//   - the tuple the accepting socket sees (post-DNAT, post-SNAT): the entry
//     node computes it from its conntrack reply tuple, the pod's node from
//     the socket;
//   - the 64-second epoch of the SYN (the entry node's NAT confirmation; the
//     pod node's handshake completion minus one smoothed RTT).
//
// SHA-256 of a versioned label and those bytes, first 16 bytes.
//
// Collisions: two connections share a trace ID only if the same post-NAT
// 4-tuple is reused within one epoch. The node that translated the
// connection keeps the tuple in its conntrack table through TIME_WAIT
// (120 s, longer than an epoch) and allocates SNAT ports around it, so a
// reuse within an epoch needs the peer to reopen a TIME_WAIT tuple with a
// new SYN. Misses: one connection gets two IDs when its SYN falls within
// the nodes' clock skew, plus the error of the pod node's SYN estimate (its
// sRTT at close minus the handshake's RTT, not a whole RTT), of an epoch
// boundary: probability min(1, |skew ± error|/64 s) — 1.6e-5 at 1 ms,
// 1.6% at 1 s, 50% at 32 s, and from 64 s of skew on no connection's spans
// are stitched (measured by TestTraceIDUnderClockSkew).
func TraceID(wire conntrack.Tuple, syn time.Time) trace.TraceID {
	var buf [64]byte
	n := copy(buf[:], "lbpath/trace/v1\x00")
	n += putAddrPort(buf[n:], wire.Src.Addr().As16(), wire.Src.Port())
	n += putAddrPort(buf[n:], wire.Dst.Addr().As16(), wire.Dst.Port())
	epoch := syn.Unix()
	if epoch < 0 {
		epoch = 0
	}
	binary.BigEndian.PutUint64(buf[n:], uint64(epoch/EpochSeconds))
	n += 8
	sum := sha256.Sum256(buf[:n])
	var id trace.TraceID
	copy(id[:], sum[:16])
	if !id.IsValid() {
		id[15] = 1
	}
	return id
}

func putAddrPort(b []byte, a [16]byte, port uint16) int {
	copy(b, a[:])
	binary.BigEndian.PutUint16(b[16:], port)
	return 18
}

// SpanID derives a span ID from the trace ID and a name unique within the
// trace (node, role and hop), so spans are stable across re-exports.
func SpanID(t trace.TraceID, name string) trace.SpanID {
	h := sha256.New()
	h.Write(t[:])
	h.Write([]byte(name))
	var sum [32]byte
	var id trace.SpanID
	copy(id[:], h.Sum(sum[:0])[:8])
	if !id.IsValid() {
		id[7] = 1
	}
	return id
}

type idsKey struct{}

type ids struct {
	trace trace.TraceID
	span  trace.SpanID
	th    *Threshold // the sampling threshold the span records
}

// withIDs makes the next span started with ctx use these IDs and record
// the threshold th in its tracestate.
func withIDs(ctx context.Context, t trace.TraceID, s trace.SpanID, th *Threshold) context.Context {
	return context.WithValue(ctx, idsKey{}, ids{t, s, th})
}

// idGenerator hands the SDK the derived IDs carried by the context; spans
// started without them get random IDs.
type idGenerator struct{}

var _ sdktrace.IDGenerator = idGenerator{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if v, ok := ctx.Value(idsKey{}).(ids); ok {
		return v.trace, v.span
	}
	var t trace.TraceID
	var s trace.SpanID
	_, _ = rand.Read(t[:])
	_, _ = rand.Read(s[:])
	return t, s
}

func (idGenerator) NewSpanID(ctx context.Context, t trace.TraceID) trace.SpanID {
	if v, ok := ctx.Value(idsKey{}).(ids); ok && v.trace == t {
		return v.span
	}
	var s trace.SpanID
	_, _ = rand.Read(s[:])
	return s
}
