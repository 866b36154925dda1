// Package streams keeps the per-stream state that lbpath's collector
// processors need to turn OTLP cumulative data points into per-interval
// deltas, the base-2 exponential histogram arithmetic they share
// (ExpBuckets: downscaling to a common scale, adding), and the bounded-map
// eviction they share.
//
// Agents send cumulative (the default) or delta sums and histograms; an
// imbalance or regression is a property of an interval, so each processor
// must difference consecutive cumulative points of the same stream itself.
// Delta points need no state here. The state lives here rather than in each
// processor so that both agree on what a stream is and on what counts as a
// reset.
package streams

import (
	"slices"

	"github.com/cespare/xxhash/v2"
	"go.opentelemetry.io/collector/pdata/pcommon"
)

// Key identifies one time series: resource attributes, metric name and
// data-point attributes. It is a 64-bit hash; with a million live streams
// the chance of any collision is about 3e-8, which we accept in exchange for
// not keeping every attribute set in memory.
type Key uint64

// Hasher computes stream keys without allocating. It is not safe for
// concurrent use; each processor owns one and uses it under its lock.
type Hasher struct {
	d xxhash.Digest
}

// Attributes returns an order-independent hash of attrs. Agents are free to
// serialise attributes in any order, so pairs are hashed individually and
// summed instead of hashing the map as it is laid out.
func (h *Hasher) Attributes(attrs pcommon.Map) uint64 {
	var acc uint64
	n := uint64(0)
	for k, v := range attrs.All() {
		h.d.Reset()
		_, _ = h.d.WriteString(k)
		_, _ = h.d.Write([]byte{0, byte(v.Type())})
		if v.Type() == pcommon.ValueTypeStr {
			_, _ = h.d.WriteString(v.Str())
		} else {
			_, _ = h.d.WriteString(v.AsString())
		}
		acc += h.d.Sum64()
		n++
	}
	return acc ^ (n * 0x9e3779b97f4a7c15)
}

// Stream combines a resource hash (from Attributes, computed once per
// ResourceMetrics), the metric name and the data point's attributes.
func (h *Hasher) Stream(resource uint64, metric string, attrs pcommon.Map) Key {
	dp := h.Attributes(attrs)
	h.d.Reset()
	var b [16]byte
	putUint64(b[:8], resource)
	putUint64(b[8:], dp)
	_, _ = h.d.Write(b[:])
	_, _ = h.d.WriteString(metric)
	return Key(h.d.Sum64())
}

func putUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// EvictOldest removes the n entries of m with the oldest last-seen time,
// calls gone (if not nil) for each, and returns how many it removed. It sorts
// a copy of the timestamps, so callers should evict in batches (a fraction of
// the map) to keep the amortised cost per insertion constant.
func EvictOldest[K comparable, E any](m map[K]E, n int, seen func(E) pcommon.Timestamp, gone func(E)) int {
	if n <= 0 || len(m) == 0 {
		return 0
	}
	n = min(n, len(m))
	ts := make([]pcommon.Timestamp, 0, len(m))
	for _, e := range m {
		ts = append(ts, seen(e))
	}
	slices.Sort(ts)
	cutoff := ts[n-1]
	// Entries older than the cutoff go first; ties at the cutoff fill the
	// remainder so that exactly n are removed.
	removed := 0
	for k, e := range m {
		if seen(e) < cutoff {
			delete(m, k)
			removed++
			if gone != nil {
				gone(e)
			}
		}
	}
	for k, e := range m {
		if removed >= n {
			break
		}
		if seen(e) == cutoff {
			delete(m, k)
			removed++
			if gone != nil {
				gone(e)
			}
		}
	}
	return removed
}

// EvictionBatch is how many entries to evict when a map of the given capacity
// is full: a tenth, so that sorting happens once per capacity/10 insertions.
func EvictionBatch(capacity int) int {
	return capacity/10 + 1
}

// Attr returns the string value of key from the data point's attributes,
// falling back to the resource's: agents may put pod identity at either
// level, and a data-point value is the more specific one.
func Attr(dp, resource pcommon.Map, key string) string {
	if v, ok := dp.Get(key); ok {
		return v.AsString()
	}
	if v, ok := resource.Get(key); ok {
		return v.AsString()
	}
	return ""
}

// ServerSide reports whether a data point describes the pod side of a
// connection. Points without lbpath.role predate the attribute and are
// server-side by contract; client and forward points would count the same
// connection a second time.
func ServerSide(dp, resource pcommon.Map) bool {
	role := Attr(dp, resource, "lbpath.role")
	return role == "" || role == "server"
}
