package deployregression

import (
	"errors"
	"fmt"
	"time"
)

// maxSlots bounds the per-revision ring of histogram slots.
const maxSlots = 720

// Config configures the deployregression processor.
type Config struct {
	// Before is how much of the previous revision's latency, ending at the
	// deploy, forms the baseline.
	Before time.Duration `mapstructure:"before"`
	// After is how long after the deploy the new revision is compared with
	// the baseline. The comparison is re-evaluated as data arrives and is
	// final once this window has passed.
	After time.Duration `mapstructure:"after"`
	// Resolution is the time granularity of the stored histograms. Deltas
	// land in the slot of their data point's timestamp.
	Resolution time.Duration `mapstructure:"resolution"`
	// CurrentWindow is the trailing interval over which the new revision's
	// "current" quantiles are computed, to plot latency against time since
	// the deploy.
	CurrentWindow time.Duration `mapstructure:"current_window"`
	// Alpha is the significance level of the chi-square test.
	Alpha float64 `mapstructure:"alpha"`
	// MinSamples is the number of requests each side needs before the test
	// is run at all.
	MinSamples int `mapstructure:"min_samples"`
	// MinIncrease is the relative p90 increase (0.1 = 10%) a significant
	// difference must also show to count as a regression: with thousands of
	// requests, trivially small shifts are significant.
	MinIncrease float64 `mapstructure:"min_increase"`
	// MinIncreaseAbs is the absolute p90 increase a regression must also
	// show. Exponential histograms resolve sub-millisecond latencies finely
	// enough that a rollout onto other pods shifts a 0.3 ms p90 by more
	// than 10 % with significance: real, but no incident.
	MinIncreaseAbs time.Duration `mapstructure:"min_increase_abs"`
	// Retention is how long revisions, deployments and streams are kept
	// after their last data point, and how long a rollout is reported.
	Retention time.Duration `mapstructure:"retention"`
	// MaxDeployments bounds the deployments tracked; the least recently
	// seen are evicted first.
	MaxDeployments int `mapstructure:"max_deployments"`
	// MaxRevisions bounds the revisions tracked per deployment.
	MaxRevisions int `mapstructure:"max_revisions"`
	// MaxStreams bounds the cumulative histogram streams whose last value
	// is kept.
	MaxStreams int `mapstructure:"max_streams"`

	// prevent unkeyed literal initialization
	_ struct{}
}

func createDefaultConfig() *Config {
	return &Config{
		Before:         10 * time.Minute,
		After:          5 * time.Minute,
		Resolution:     30 * time.Second,
		CurrentWindow:  time.Minute,
		Alpha:          0.01,
		MinSamples:     50,
		MinIncrease:    0.10,
		MinIncreaseAbs: time.Millisecond,
		Retention:      time.Hour,
		MaxDeployments: 5000,
		MaxRevisions:   10,
		MaxStreams:     1000000,
	}
}

// Validate checks the configuration; each error names the offending field.
func (c *Config) Validate() error {
	var errs []error
	positive := func(name string, d time.Duration) bool {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive, got %v", name, d))
			return false
		}
		return true
	}
	okBefore := positive("before", c.Before)
	okAfter := positive("after", c.After)
	okRes := positive("resolution", c.Resolution)
	if okRes && okBefore && c.Resolution > c.Before {
		errs = append(errs, fmt.Errorf("resolution: must not exceed before (%v), got %v", c.Before, c.Resolution))
	}
	if okRes && okAfter && c.Resolution > c.After {
		errs = append(errs, fmt.Errorf("resolution: must not exceed after (%v), got %v", c.After, c.Resolution))
	}
	if okRes && okBefore && okAfter && (c.Before+c.After)/c.Resolution > maxSlots {
		errs = append(errs, fmt.Errorf("resolution: (before+after)/resolution must be at most %d, got %d", maxSlots, (c.Before+c.After)/c.Resolution))
	}
	if okRes && c.CurrentWindow < c.Resolution {
		errs = append(errs, fmt.Errorf("current_window: must be at least resolution (%v), got %v", c.Resolution, c.CurrentWindow))
	}
	if okBefore && okAfter && c.CurrentWindow > c.Before+c.After {
		errs = append(errs, fmt.Errorf("current_window: must not exceed before+after (%v), got %v", c.Before+c.After, c.CurrentWindow))
	}
	if !(c.Alpha > 0 && c.Alpha < 1) {
		errs = append(errs, fmt.Errorf("alpha: must be in (0, 1), got %v", c.Alpha))
	}
	if c.MinSamples < 1 {
		errs = append(errs, fmt.Errorf("min_samples: must be at least 1, got %d", c.MinSamples))
	}
	if c.MinIncreaseAbs < 0 {
		errs = append(errs, fmt.Errorf("min_increase_abs: must not be negative, got %v", c.MinIncreaseAbs))
	}
	if !(c.MinIncrease >= 0) {
		errs = append(errs, fmt.Errorf("min_increase: must not be negative, got %v", c.MinIncrease))
	}
	if okBefore && okAfter && c.Retention < c.Before+c.After {
		errs = append(errs, fmt.Errorf("retention: must be at least before+after (%v) or the baseline expires mid-comparison, got %v", c.Before+c.After, c.Retention))
	}
	if c.MaxDeployments <= 0 {
		errs = append(errs, fmt.Errorf("max_deployments: must be positive, got %d", c.MaxDeployments))
	}
	if c.MaxRevisions < 2 {
		errs = append(errs, fmt.Errorf("max_revisions: must be at least 2 (old and new), got %d", c.MaxRevisions))
	}
	if c.MaxStreams <= 0 {
		errs = append(errs, fmt.Errorf("max_streams: must be positive, got %d", c.MaxStreams))
	}
	return errors.Join(errs...)
}
