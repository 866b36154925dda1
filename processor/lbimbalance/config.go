package lbimbalance

import (
	"errors"
	"fmt"
	"time"
)

// maxBuckets bounds the per-pod ring so that a misconfigured window cannot
// make every pod carry thousands of slots.
const maxBuckets = 360

// Config configures the lbimbalance processor.
type Config struct {
	// Window is the sliding interval over which shares are computed.
	Window time.Duration `mapstructure:"window"`
	// Bucket is the granularity of the window; Window must be a multiple of
	// it. Deltas land in the bucket of their data point's timestamp.
	Bucket time.Duration `mapstructure:"bucket"`
	// HotFactor: a pod is hot when its connection share exceeds HotFactor
	// times the fair share 1/pods. Must be > 1, or every pod of a perfectly
	// balanced service would be hot.
	HotFactor float64 `mapstructure:"hot_factor"`
	// MinConnections is how many connections a service must have in the
	// window before any of its pods can be flagged hot; below it a share is
	// mostly noise.
	MinConnections int `mapstructure:"min_connections"`
	// MaxServices bounds the services tracked; the least recently seen are
	// evicted first.
	MaxServices int `mapstructure:"max_services"`
	// MaxPodsPerService bounds the pods tracked per service.
	MaxPodsPerService int `mapstructure:"max_pods_per_service"`
	// MaxStreams bounds the cumulative streams whose last value is kept.
	MaxStreams int `mapstructure:"max_streams"`
	// StaleAfter drops streams, pods and services not seen for this long.
	StaleAfter time.Duration `mapstructure:"stale_after"`

	// prevent unkeyed literal initialization
	_ struct{}
}

func createDefaultConfig() *Config {
	return &Config{
		Window:            time.Minute,
		Bucket:            10 * time.Second,
		HotFactor:         1.5,
		MinConnections:    20,
		MaxServices:       10000,
		MaxPodsPerService: 1000,
		MaxStreams:        1000000,
		StaleAfter:        5 * time.Minute,
	}
}

// Validate checks the configuration; each error names the offending field.
func (c *Config) Validate() error {
	var errs []error
	if c.Bucket <= 0 {
		errs = append(errs, fmt.Errorf("bucket: must be positive, got %v", c.Bucket))
	}
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("window: must be positive, got %v", c.Window))
	}
	if c.Bucket > 0 && c.Window > 0 {
		switch {
		case c.Window%c.Bucket != 0:
			errs = append(errs, fmt.Errorf("window: must be a multiple of bucket (%v), got %v", c.Bucket, c.Window))
		case c.Window/c.Bucket > maxBuckets:
			errs = append(errs, fmt.Errorf("window: at most %d buckets of %v, got %d", maxBuckets, c.Bucket, c.Window/c.Bucket))
		}
	}
	if !(c.HotFactor > 1) {
		errs = append(errs, fmt.Errorf("hot_factor: must be greater than 1 (the fair share), got %v", c.HotFactor))
	}
	if c.MinConnections < 0 {
		errs = append(errs, fmt.Errorf("min_connections: must not be negative, got %d", c.MinConnections))
	}
	if c.MaxServices <= 0 {
		errs = append(errs, fmt.Errorf("max_services: must be positive, got %d", c.MaxServices))
	}
	if c.MaxPodsPerService <= 0 {
		errs = append(errs, fmt.Errorf("max_pods_per_service: must be positive, got %d", c.MaxPodsPerService))
	}
	if c.MaxStreams <= 0 {
		errs = append(errs, fmt.Errorf("max_streams: must be positive, got %d", c.MaxStreams))
	}
	if c.StaleAfter < c.Window {
		errs = append(errs, fmt.Errorf("stale_after: must be at least window (%v) or pods vanish mid-window, got %v", c.Window, c.StaleAfter))
	}
	return errors.Join(errs...)
}
