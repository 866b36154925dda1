package kube

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Service annotations lbpath reads: per-Service overrides of the agent's
// span sampling (docs/TELEMETRY.md, Sampling). The informer transform
// keeps only these of a Service's annotations.
const (
	AnnotationSpanSampling  = "lbpath.io/span-sampling"
	AnnotationSlowThreshold = "lbpath.io/slow-threshold"
)

// ParseSpanSampling parses a span sampling probability as the agent's flag
// and the Service annotation accept it: a decimal (0.0625) or a fraction
// (1/16), between 0 and 1.
func ParseSpanSampling(s string) (float64, error) {
	s = strings.TrimSpace(s)
	var p float64
	var err error
	if num, den, ok := strings.Cut(s, "/"); ok {
		n, err1 := strconv.ParseFloat(strings.TrimSpace(num), 64)
		d, err2 := strconv.ParseFloat(strings.TrimSpace(den), 64)
		if err1 != nil || err2 != nil || d == 0 {
			return 0, fmt.Errorf("%q is not a probability (a decimal like 0.0625 or a fraction like 1/16)", s)
		}
		p = n / d
	} else if p, err = strconv.ParseFloat(s, 64); err != nil {
		return 0, fmt.Errorf("%q is not a probability (a decimal like 0.0625 or a fraction like 1/16)", s)
	}
	if math.IsNaN(p) || p < 0 || p > 1 {
		return 0, fmt.Errorf("%q is not between 0 and 1", s)
	}
	return p, nil
}

// ParseSlowThreshold parses a slow threshold: a Go duration, 0 or more
// (0: no connection is kept for being slow).
func ParseSlowThreshold(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (like 500ms or 2s)", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q must not be negative", s)
	}
	return d, nil
}

// samplingAnnotations reads the overrides into s. A value that does not
// parse is not guessed at: the agent's setting applies, and the error is
// returned for the watcher to log and count.
func samplingAnnotations(s *Service, ann map[string]string) []string {
	var errs []string
	if v, ok := ann[AnnotationSpanSampling]; ok {
		if p, err := ParseSpanSampling(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", AnnotationSpanSampling, err))
		} else {
			s.SpanSampling = &p
		}
	}
	if v, ok := ann[AnnotationSlowThreshold]; ok {
		if d, err := ParseSlowThreshold(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", AnnotationSlowThreshold, err))
		} else {
			s.SlowThreshold = &d
		}
	}
	return errs
}
