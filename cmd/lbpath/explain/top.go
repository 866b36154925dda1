package explain

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// TopRow is one Service in Top's table. Shares are fractions, NaN when
// there is nothing to divide by.
type TopRow struct {
	Namespace, Name string
	ConnRate        float64 // connections accepted by the pods, per second
	ReqRate         float64 // NaN without HTTP
	P90             float64 // request latency, seconds; NaN without HTTP
	HotPods         []string
	SNAT            float64
	CrossNode       float64
	Failing         float64
	Regressed       []string // Deployments whose latest rollout regressed
}

// Service is "namespace/name".
func (t TopRow) Service() string { return t.Namespace + "/" + t.Name }

type svcKey struct{ ns, name string }

// TopRows ranks the Services lbpath saw in the window by connection rate.
func TopRows(ctx context.Context, promURL string, now time.Time, opts *Options) ([]TopRow, error) {
	o := opts.withDefaults()
	q, err := newQuerier(promURL, o.Client, now)
	if err != nil {
		return nil, err
	}
	w := promDuration(o.Window)
	sel := matchers(lService+"!", "")
	if o.Cluster != "" {
		sel += ", " + matchers(lCluster, o.Cluster)
	}
	svc := lNamespace + ", " + lService
	rows := map[svcKey]*TopRow{}
	row := func(m model.Metric) *TopRow {
		k := svcKey{label(m, lNamespace), label(m, lService)}
		r := rows[k]
		if r == nil {
			r = &TopRow{Namespace: k.ns, Name: k.name, ReqRate: math.NaN(), P90: math.NaN()}
			rows[k] = r
		}
		return r
	}

	v, err := q.vector(ctx, fmt.Sprintf(`sum by (%s, %s, %s, %s, %s, %s, %s) (increase(%s{%s}[%s]))`,
		svc, lRole, lEntry, lEntryNode, lSNAT, lCross, lOutcome, mConnections, sel, w))
	if err != nil {
		return nil, err
	}
	bds := map[svcKey]*breakdown{}
	for _, s := range v {
		r := row(s.Metric)
		k := svcKey{r.Namespace, r.Name}
		if bds[k] == nil {
			bds[k] = newBreakdown()
		}
		bds[k].add(s.Metric, float64(s.Value))
	}
	for k, b := range bds {
		r := rows[k]
		r.ConnRate = b.served / o.Window.Seconds()
		r.SNAT, r.CrossNode, r.Failing = b.snatShare(), b.crossShare(), b.failShare()
	}

	for _, g := range []struct {
		expr string
		set  func(*TopRow, float64)
	}{
		{fmt.Sprintf(`sum by (%s) (rate(%s{%s}[%s]))`, svc, mRequests, sel, w), func(r *TopRow, f float64) { r.ReqRate = f }},
		{latencyQuantile("0.9", svc, sel, w), func(r *TopRow, f float64) { r.P90 = f }},
	} {
		v, err := q.vector(ctx, g.expr)
		if err != nil {
			return nil, err
		}
		for _, s := range v {
			g.set(row(s.Metric), float64(s.Value))
		}
	}

	// Hot pods: the processor's verdict; Services it has no verdict for get
	// the same rule applied to the agents' counters.
	hot, err := q.vector(ctx, fmt.Sprintf(`%s{%s}`, mHot, sel))
	if err != nil {
		return nil, err
	}
	judged := map[svcKey]bool{}
	for _, s := range hot {
		r := row(s.Metric)
		judged[svcKey{r.Namespace, r.Name}] = true
		if s.Value == 1 {
			r.HotPods = append(r.HotPods, label(s.Metric, lPod))
		}
	}
	byPod, err := q.vector(ctx, fmt.Sprintf(`sum by (%s, %s) (increase(%s{%s, %s}[%s]))`, svc, lPod, mConnections, sel, matchers(lRole, "server"), w))
	if err != nil {
		return nil, err
	}
	podConns := map[svcKey]map[string]float64{}
	for _, s := range byPod {
		k := svcKey{label(s.Metric, lNamespace), label(s.Metric, lService)}
		if judged[k] || label(s.Metric, lPod) == "" {
			continue
		}
		if podConns[k] == nil {
			podConns[k] = map[string]float64{}
		}
		podConns[k][label(s.Metric, lPod)] += float64(s.Value)
	}
	for k, pods := range podConns {
		var total float64
		for _, c := range pods {
			total += c
		}
		if total < fallbackMinConnections {
			continue
		}
		fair := 1 / float64(len(pods))
		for p, c := range pods {
			if c/total > fallbackHotFactor*fair {
				rows[k].HotPods = append(rows[k].HotPods, p)
			}
		}
	}

	// Regressions are per Deployment; the agents' series name both.
	reg, err := q.vector(ctx, fmt.Sprintf(`%s == 1`, mRegression))
	if err != nil {
		return nil, err
	}
	if len(reg) > 0 {
		regressed := map[[2]string]bool{}
		for _, s := range reg {
			regressed[[2]string{label(s.Metric, lNamespace), label(s.Metric, lDeployment)}] = true
		}
		deps, err := q.vector(ctx, fmt.Sprintf(`group by (%s, %s) (last_over_time(%s{%s, %s!=""}[%s]))`, svc, lDeployment, mConnections, sel, lDeployment, w))
		if err != nil {
			return nil, err
		}
		for _, s := range deps {
			ns, d := label(s.Metric, lNamespace), label(s.Metric, lDeployment)
			if regressed[[2]string{ns, d}] {
				r := row(s.Metric)
				r.Regressed = append(r.Regressed, d)
			}
		}
	}

	out := make([]TopRow, 0, len(rows))
	for _, r := range rows {
		sort.Strings(r.HotPods)
		sort.Strings(r.Regressed)
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ConnRate != out[j].ConnRate {
			return out[i].ConnRate > out[j].ConnRate
		}
		return out[i].Service() < out[j].Service()
	})
	if o.Limit > 0 && len(out) > o.Limit {
		out = out[:o.Limit]
	}
	return out, nil
}

// Top prints the Services lbpath saw in the last DefaultWindow, busiest first.
func Top(ctx context.Context, promURL string, now time.Time, out io.Writer) error {
	rows, err := TopRows(ctx, promURL, now, nil)
	if err != nil {
		return err
	}
	return RenderTop(out, rows, now, DefaultWindow)
}

// RenderTop writes rows (from TopRows over window) as an aligned table.
func RenderTop(out io.Writer, rows []TopRow, now time.Time, window time.Duration) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "lbpath top   at %s, last %s\n", now.UTC().Format("2006-01-02 15:04:05Z"), promDuration(window))
	if len(rows) == 0 {
		fmt.Fprintln(&b, "no lbpath connection series in Prometheus for the window")
		_, err := out.Write(b.Bytes())
		return wrapWrite(err)
	}
	type line [9]string
	lines := []line{{"SERVICE", "CONN/S", "REQ/S", "P90", "HOT POD", "SNAT", "CROSS", "FAILING", "DEPLOY"}}
	for _, r := range rows {
		hot := "–"
		if len(r.HotPods) > 0 {
			hot = strings.Join(r.HotPods, ",")
		}
		dep := "ok"
		if len(r.Regressed) > 0 {
			dep = "REGRESSED " + strings.Join(r.Regressed, ",")
		}
		lines = append(lines, line{r.Service(), perSecond(r.ConnRate), perSecond(r.ReqRate), seconds(r.P90), hot,
			percent(r.SNAT), percent(r.CrossNode), percent(r.Failing), dep})
	}
	var widths [9]int
	for _, l := range lines {
		for i, c := range l {
			widths[i] = width(widths[i], c)
		}
	}
	// Text columns left-aligned, figures right-aligned.
	left := [9]bool{0: true, 4: true, 8: true}
	for _, l := range lines {
		var cells []string
		for i, c := range l {
			if left[i] {
				cells = append(cells, fmt.Sprintf("%-*s", widths[i], c))
			} else {
				cells = append(cells, fmt.Sprintf("%*s", widths[i], c))
			}
		}
		fmt.Fprintln(&b, strings.TrimRight(strings.Join(cells, "  "), " "))
	}
	_, err := out.Write(b.Bytes())
	return wrapWrite(err)
}

func wrapWrite(err error) error {
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
