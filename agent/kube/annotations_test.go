package kube

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSamplingAnnotationsSurviveStrip: the informer transform keeps the
// two lbpath.io annotations (and no other), and ServiceFrom reads them.
func TestSamplingAnnotationsSurviveStrip(t *testing.T) {
	in := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart", Annotations: map[string]string{
		AnnotationSpanSampling: "1/4", AnnotationSlowThreshold: "250ms", "kubectl.kubernetes.io/last-applied-configuration": "{…}",
	}}}
	o, err := strip(in)
	if err != nil {
		t.Fatal(err)
	}
	stripped := o.(*corev1.Service)
	if len(stripped.Annotations) != 2 {
		t.Errorf("annotations after strip: %v, want only the two lbpath.io ones", stripped.Annotations)
	}
	again, _ := strip(stripped)
	if len(again.(*corev1.Service).Annotations) != 2 {
		t.Error("strip is not idempotent for annotations")
	}
	s := ServiceFrom(stripped)
	if s.SpanSampling == nil || *s.SpanSampling != 0.25 || s.SlowThreshold == nil || *s.SlowThreshold != 250*time.Millisecond {
		t.Errorf("overrides %v %v, want 0.25 and 250ms", s.SpanSampling, s.SlowThreshold)
	}
	if len(s.AnnotationErrors) != 0 {
		t.Errorf("errors %v", s.AnnotationErrors)
	}
	plain := ServiceFrom(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}})
	if plain.SpanSampling != nil || plain.SlowThreshold != nil {
		t.Error("overrides set without annotations")
	}
}

// TestBadAnnotationIsNotGuessed: a value that does not parse leaves the
// override unset (the agent's setting applies), and the watcher logs and
// counts it once per value, not on every resync.
func TestBadAnnotationIsNotGuessed(t *testing.T) {
	for _, v := range [][2]string{{AnnotationSpanSampling, "2"}, {AnnotationSpanSampling, "10%"}, {AnnotationSpanSampling, "-0"},
		{AnnotationSlowThreshold, "-1s"}, {AnnotationSlowThreshold, "5"}} {
		s := ServiceFrom(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart",
			Annotations: map[string]string{v[0]: v[1]}}})
		bad := v[1] != "-0" // -0 is a valid 0
		if got := len(s.AnnotationErrors) > 0; got != bad {
			t.Errorf("%s=%q: errors %v, want error %v", v[0], v[1], s.AnnotationErrors, bad)
		}
		if bad && (s.SpanSampling != nil || s.SlowThreshold != nil) {
			t.Errorf("%s=%q: override set from a bad value", v[0], v[1])
		}
	}
	var logs bytes.Buffer
	w := &Watcher{Index: NewIndex(IndexConfig{}), log: slog.New(slog.NewTextHandler(&logs, nil))}
	bad := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart",
		Annotations: map[string]string{AnnotationSpanSampling: "lots"}}}
	for range 3 { // add, then two resyncs
		w.onService(bad)
	}
	if n := w.BadAnnotations.Load(); n != 1 {
		t.Errorf("bad_annotation = %d after one bad value seen three times, want 1", n)
	}
	if c := strings.Count(logs.String(), "annotation ignored"); c != 1 {
		t.Errorf("logged %d times, want once:\n%s", c, logs.String())
	}
	if !strings.Contains(logs.String(), "shop/cart") || !strings.Contains(logs.String(), AnnotationSpanSampling) {
		t.Errorf("log does not name the Service and annotation:\n%s", logs.String())
	}
	bad.Annotations[AnnotationSpanSampling] = "more"
	w.onService(bad)
	if n := w.BadAnnotations.Load(); n != 2 {
		t.Errorf("bad_annotation = %d after a second bad value, want 2", n)
	}
	bad.Annotations[AnnotationSpanSampling] = "0.5"
	w.onService(bad)
	bad.Annotations[AnnotationSpanSampling] = "lots"
	w.onService(bad)
	if n := w.BadAnnotations.Load(); n != 3 {
		t.Errorf("bad_annotation = %d after fixed then broken again, want 3", n)
	}
	if s, ok := w.Index.Service("shop", "cart"); !ok || s.SpanSampling != nil {
		t.Errorf("indexed Service %+v: want it indexed, without an override", s)
	}
}
