package querycheck

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Result is the outcome of one query run against a Prometheus server.
type Result struct {
	Query    Query
	Expanded string              // the PromQL actually sent
	Series   []map[string]string // label sets returned (instant vector) or of each range series
	Err      error               // expansion, HTTP or PromQL error
}

// Empty is true when the query ran but returned no series.
func (r Result) Empty() bool { return r.Err == nil && len(r.Series) == 0 }

// RunRemote runs every query against the Prometheus HTTP API at baseURL
// (e.g. http://127.0.0.1:9090) as an instant query at `at`, with Grafana
// variables expanded by vars (DefaultVars for the rest), and returns one
// Result per query in order. It never stops early: the caller decides which
// failures matter (an alert's expression is expected to be empty while
// nothing is wrong). client may be nil.
func RunRemote(ctx context.Context, client *http.Client, baseURL string, qs []Query, vars map[string]string, at time.Time) []Result {
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	out := make([]Result, 0, len(qs))
	for _, q := range qs {
		r := Result{Query: q}
		r.Expanded, r.Err = Expand(q.Expr, vars)
		if r.Err == nil {
			r.Series, r.Err = instantQuery(ctx, client, baseURL, r.Expanded, at)
		}
		out = append(out, r)
	}
	return out
}

// apiResponse is the part of /api/v1/query's answer RunRemote reads.
type apiResponse struct {
	Status    string `json:"status"`
	ErrorType string `json:"errorType"`
	Error     string `json:"error"`
	Data      struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	} `json:"data"`
}

func instantQuery(ctx context.Context, client *http.Client, baseURL, expr string, at time.Time) ([]map[string]string, error) {
	form := url.Values{"query": {expr}, "time": {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(baseURL, "/")+"/api/v1/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	var ar apiResponse
	if err := json.Unmarshal(body, &ar); err != nil {
		return nil, fmt.Errorf("HTTP %d, undecodable body: %w", resp.StatusCode, err)
	}
	if ar.Status != "success" {
		return nil, fmt.Errorf("prometheus %s: %s", ar.ErrorType, ar.Error)
	}
	var series []map[string]string
	switch ar.Data.ResultType {
	case "vector", "matrix":
		for _, raw := range ar.Data.Result {
			var s struct {
				Metric map[string]string `json:"metric"`
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				return nil, fmt.Errorf("decode series: %w", err)
			}
			series = append(series, s.Metric)
		}
	case "scalar", "string":
		series = append(series, map[string]string{})
	default:
		return nil, fmt.Errorf("unexpected result type %q", ar.Data.ResultType)
	}
	return series, nil
}
