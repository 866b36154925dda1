package explain

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// eighths are the partial block characters, 1/8 to 7/8 of a cell.
var eighths = []rune{'▏', '▎', '▍', '▌', '▋', '▊', '▉'}

// bar draws frac of width cells in Unicode blocks, resolved to 1/8 cell
// and padded with spaces to exactly width cells so columns after it align.
// Out-of-range fractions are clamped; NaN draws nothing.
func bar(frac float64, width int) string {
	if width <= 0 {
		return ""
	}
	if math.IsNaN(frac) || frac < 0 {
		frac = 0
	}
	if frac > 1 {
		frac = 1
	}
	units := int(math.Round(frac * float64(width) * 8))
	full, part := units/8, units%8
	var b strings.Builder
	b.WriteString(strings.Repeat("█", full))
	cells := full
	if part > 0 {
		b.WriteRune(eighths[part-1])
		cells++
	}
	// A share that is not zero gets at least a sliver: "this pod gets
	// something" reads differently from "nothing".
	if cells == 0 && frac > 0 {
		b.WriteRune(eighths[0])
		cells++
	}
	b.WriteString(strings.Repeat(" ", width-cells))
	return b.String()
}

// percent rounds to whole percent but never shows 0% or 100% for a share
// that is neither: "<1%" and ">99%" keep "none" and "all" exact.
func percent(f float64) string {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return "–"
	case f == 0:
		return "0%"
	case f > 0 && f < 0.01:
		return "<1%"
	case f >= 1:
		return fmt.Sprintf("%.0f%%", f*100)
	case f > 0.99:
		return ">99%"
	}
	return fmt.Sprintf("%.0f%%", f*100)
}

// seconds renders a latency with the unit an SRE reads it in.
func seconds(s float64) string {
	switch {
	case math.IsNaN(s) || math.IsInf(s, 0) || s < 0:
		return "–"
	case s == 0:
		return "0"
	case s < 0.001:
		return fmt.Sprintf("%.0fµs", s*1e6)
	case s < 0.01:
		return fmt.Sprintf("%.1fms", s*1e3)
	case s < 1:
		return fmt.Sprintf("%.0fms", s*1e3)
	}
	return fmt.Sprintf("%.2fs", s)
}

// perSecond renders a rate with three significant digits at most.
func perSecond(r float64) string {
	switch {
	case math.IsNaN(r) || r < 0:
		return "–"
	case r == 0:
		return "0"
	case r < 10:
		return strconv.FormatFloat(r, 'f', 2, 64)
	case r < 100:
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return count(r)
}

// count renders a (possibly extrapolated, so fractional) count as a whole
// number with thousands separators.
func count(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "–"
	}
	s := strconv.FormatInt(int64(math.Round(f)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// ago renders a duration coarsely: "45s", "4m", "2h05m".
func ago(d time.Duration) string {
	switch {
	case d <= 0:
		return "?"
	case d < 90*time.Second:
		return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds()))
	case d < 90*time.Minute:
		return fmt.Sprintf("%dm", int(d.Round(time.Minute).Minutes()))
	}
	d = d.Round(time.Minute)
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// width is the widest of the strings, at least min, in runes (fmt pads by
// runes, and every glyph used here is one cell wide).
func width(min int, ss ...string) int {
	for _, s := range ss {
		if n := len([]rune(s)); n > min {
			min = n
		}
	}
	return min
}

// Render writes the report as an incident view: findings first, then the
// sections that back them. Sections without data are left out.
func (r *Report) Render(out io.Writer) error {
	var b bytes.Buffer
	bw := r.barWidth
	if bw <= 0 {
		bw = 30
	}
	title := fmt.Sprintf("lbpath explain %s", r.Service())
	meta := fmt.Sprintf("at %s, last %s", r.At.UTC().Format("2006-01-02 15:04:05Z"), promDuration(r.Window))
	fmt.Fprintf(&b, "%s   %s\n", title, meta)
	fmt.Fprintln(&b, strings.Repeat("─", len([]rune(title))+3+len([]rune(meta))))

	fmt.Fprintln(&b, "\nFINDINGS")
	if len(r.Findings) == 0 {
		fmt.Fprintln(&b, "  ✓ nothing abnormal: balanced pods, no failures, no regression, client IP kept")
	}
	for _, f := range r.Findings {
		mark := "✗"
		if f.Kind == KindClientIPLost || f.Kind == KindNodeSkew {
			mark = "!" // often by design (Cluster policy): worth knowing, not paging
		}
		fmt.Fprintf(&b, "  %s %s\n", mark, f.Message)
	}
	if len(r.Findings) == 1 && r.Findings[0].Kind == KindNoData {
		_, err := out.Write(b.Bytes())
		return wrapWrite(err)
	}

	fmt.Fprintln(&b, "\nTRAFFIC")
	fmt.Fprintf(&b, "  %s conn/s   %s req/s   latency p50 %s  p90 %s  p99 %s   failing %s\n",
		perSecond(r.ConnRate), perSecond(r.ReqRate), seconds(r.P50), seconds(r.P90), seconds(r.P99), percent(r.FailureRate))

	if len(r.Entries) > 0 {
		fmt.Fprintln(&b, "\nPATH  (connections by how they entered, counted on the node that translated them)")
		// The key column fits the labels under the table too.
		ew := width(len("entry nodes"))
		for _, e := range r.Entries {
			ew = width(ew, e.Entry)
		}
		fmt.Fprintf(&b, "  %-*s  %9s  %6s\n", ew, "entry", "conns", "share")
		for _, e := range r.Entries {
			fmt.Fprintf(&b, "  %-*s  %9s  %6s\n", ew, e.Entry, count(e.Conns), percent(e.Conns/r.EntryConns))
		}
		if len(r.EntryNodes) > 0 {
			parts := make([]string, len(r.EntryNodes))
			for i, n := range r.EntryNodes {
				parts[i] = fmt.Sprintf("%s %s", n.Node, percent(n.Conns/r.EntryConns))
			}
			fmt.Fprintf(&b, "  %-*s  %s\n", ew, "entry nodes", strings.Join(parts, " · "))
		}
		fmt.Fprintf(&b, "  %-*s  %s took an extra node hop\n", ew, "cross-node", percent(r.CrossNode))
		renderHiddenEntries(&b, r.Entries, ew)
		switch {
		case r.External > 0:
			fmt.Fprintf(&b, "  %-*s  %s of %s connections SNATed\n", ew, "client IP", percent(r.SNAT), r.externalName())
		case r.SNAT > 0:
			fmt.Fprintf(&b, "  %-*s  %s of connections reached the pods SNATed\n", ew, "client IP", percent(r.SNAT))
		}
	}

	if len(r.Pods) > 0 {
		fmt.Fprintf(&b, "\nPODS  share of connections (from %s; fair share %s)\n", r.ShareSource, percent(r.FairShare))
		pw, nw := len("pod"), len("node")
		for _, p := range r.Pods {
			pw, nw = width(pw, p.Pod), width(nw, p.Node)
		}
		fmt.Fprintf(&b, "  %-*s  %-*s  %-*s  %5s  %5s  %5s\n", pw, "pod", nw, "node", bw, "connections", "conns", "reqs", "bytes")
		for _, p := range r.Pods {
			hot := ""
			if p.Hot {
				hot = "  HOT"
			}
			fmt.Fprintf(&b, "  %-*s  %-*s  %s  %5s  %5s  %5s%s\n", pw, p.Pod, nw, p.Node, bar(p.Connections, bw),
				percent(p.Connections), percent(p.Requests), percent(p.Bytes), hot)
		}
	}

	if len(r.Nodes) > 1 {
		fmt.Fprintln(&b, "\nNODES  share of connections served (pods on the node)")
		nw := len("node")
		for _, n := range r.Nodes {
			nw = width(nw, n.Node)
		}
		for _, n := range r.Nodes {
			fmt.Fprintf(&b, "  %-*s  %s  %5s  %d pod%s\n", nw, n.Node, bar(n.Share, bw), percent(n.Share), n.Pods, plural(n.Pods))
		}
	}

	r.renderSignals(&b) // lbsignals.go
	r.renderIngress(&b) // ingress.go

	for _, d := range r.Deploys {
		fmt.Fprintf(&b, "\nDEPLOY %s  latest rollout %s (from %s), %s ago\n", d.Deployment, orDash(d.After.Hash), orDash(d.Before.Hash), ago(d.Since))
		fmt.Fprintf(&b, "  %-8s  %9s  %9s  %7s\n", "", "before", "after", "change")
		for _, row := range []struct {
			name string
			b, a float64
		}{{"p50", d.Before.P50, d.After.P50}, {"p90", d.Before.P90, d.After.P90}, {"p99", d.Before.P99, d.After.P99}} {
			change := "–"
			if row.b > 0 && !math.IsNaN(row.a) {
				change = times(row.a / row.b)
			}
			fmt.Fprintf(&b, "  %-8s  %9s  %9s  %7s\n", row.name, seconds(row.b), seconds(row.a), change)
		}
		fmt.Fprintf(&b, "  %-8s  %9s  %9s\n", "requests", count(d.Before.Samples), count(d.After.Samples))
		switch {
		case d.Regression:
			fmt.Fprintf(&b, "  verdict   REGRESSION (%s)\n", pvalue(d.PValue))
		case d.Tested:
			fmt.Fprintf(&b, "  verdict   no regression (%s)\n", pvalue(d.PValue))
		default:
			fmt.Fprintln(&b, "  verdict   not tested yet (too few requests on one side)")
		}
	}

	if len(r.Failures) > 0 {
		fmt.Fprintf(&b, "\nFAILURES  %s of attempts\n", percent(r.FailureRate))
		fmt.Fprintf(&b, "  %-8s  %-11s  %9s\n", "role", "outcome", "conns")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "  %-8s  %-11s  %9s\n", f.Role, f.Outcome, count(f.Conns))
		}
	}
	_, err := out.Write(b.Bytes())
	return wrapWrite(err)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// renderHiddenEntries says what the entries of translations lbpath could
// not see mean (docs/TELEMETRY.md, nat_not_visible).
func renderHiddenEntries(b *bytes.Buffer, entries []EntryCount, ew int) {
	for _, e := range entries {
		switch e.Entry {
		case entryNotVisible:
			fmt.Fprintf(b, "  %-*s  %s connections entered from outside through a translation lbpath cannot see\n", ew, e.Entry, count(e.Conns))
			fmt.Fprintf(b, "  %-*s  (TC/XDP eBPF NodePort or load balancer, DSR): entry node and extra hop unknown\n", ew, "")
		case entryUnknown:
			fmt.Fprintf(b, "  %-*s  %s connections from outside reached the pods' own addresses untranslated here:\n", ew, e.Entry, count(e.Conns))
			fmt.Fprintf(b, "  %-*s  dialled directly or translated out of sight; if pod IPs are unreachable from\n", ew, "")
			fmt.Fprintf(b, "  %-*s  outside, run the agents with --isolated-pod-network to tell\n", ew, "")
		}
	}
}
