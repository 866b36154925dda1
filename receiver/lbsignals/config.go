package lbsignals

import (
	"errors"
	"fmt"
	"time"
)

// Config configures the lbsignals receiver.
type Config struct {
	// CollectionInterval is how often the metrics are emitted (and the
	// health-check node ports probed).
	CollectionInterval time.Duration `mapstructure:"collection_interval"`
	// Kubeconfig is a kubeconfig path; empty means the in-cluster service
	// account.
	Kubeconfig string `mapstructure:"kubeconfig"`
	// ClusterName, when set, becomes the resource attribute k8s.cluster.name.
	ClusterName string `mapstructure:"cluster_name"`
	// LeaderElection decides which replica emits.
	LeaderElection LeaderElectionConfig `mapstructure:"leader_election"`
	// HealthCheck configures the probes of healthCheckNodePort.
	HealthCheck HealthCheckConfig `mapstructure:"health_check"`

	// prevent unkeyed literal initialization
	_ struct{}
}

// LeaderElectionConfig is client-go leader election on a
// coordination.k8s.io Lease.
type LeaderElectionConfig struct {
	// Enabled false makes every replica emit (one replica only!).
	Enabled bool `mapstructure:"enabled"`
	// LeaseName is the Lease's name.
	LeaseName string `mapstructure:"lease_name"`
	// LeaseNamespace is the Lease's namespace; empty means the
	// namespace of the collector's service account (in-cluster).
	LeaseNamespace string `mapstructure:"lease_namespace"`
	// LeaseDuration is how long a lease holds without renewal: the
	// longest a crashed leader's signals are missing.
	LeaseDuration time.Duration `mapstructure:"lease_duration"`
	// RenewDeadline is how long the leader keeps trying to renew before
	// it gives up leading.
	RenewDeadline time.Duration `mapstructure:"renew_deadline"`
	// RetryPeriod is the wait between attempts to acquire or renew.
	RetryPeriod time.Duration `mapstructure:"retry_period"`
}

// HealthCheckConfig configures the probes of healthCheckNodePort.
type HealthCheckConfig struct {
	// Enabled false skips the probes (and their metrics).
	Enabled bool `mapstructure:"enabled"`
	// Timeout bounds one probe; it must be shorter than the interval.
	Timeout time.Duration `mapstructure:"timeout"`
	// Concurrency bounds the probes in flight.
	Concurrency int `mapstructure:"concurrency"`
}

func createDefaultConfig() *Config {
	return &Config{
		CollectionInterval: 30 * time.Second,
		LeaderElection: LeaderElectionConfig{
			Enabled:       true,
			LeaseName:     "lbpath-lbsignals",
			LeaseDuration: 15 * time.Second,
			RenewDeadline: 10 * time.Second,
			RetryPeriod:   2 * time.Second,
		},
		HealthCheck: HealthCheckConfig{Enabled: true, Timeout: 2 * time.Second, Concurrency: 16},
	}
}

// Validate checks the configuration; each error names the offending field.
func (c *Config) Validate() error {
	var errs []error
	if c.CollectionInterval < time.Second {
		errs = append(errs, fmt.Errorf("collection_interval: must be at least 1s, got %v", c.CollectionInterval))
	}
	if le := c.LeaderElection; le.Enabled {
		if le.LeaseName == "" {
			errs = append(errs, errors.New("leader_election::lease_name: must not be empty"))
		}
		if le.RetryPeriod <= 0 {
			errs = append(errs, fmt.Errorf("leader_election::retry_period: must be positive, got %v", le.RetryPeriod))
		}
		// client-go's own rules (leaderelection.NewLeaderElector), checked
		// here so that the collector refuses the config at start.
		if le.RenewDeadline <= time.Duration(1.2*float64(le.RetryPeriod)) {
			errs = append(errs, fmt.Errorf("leader_election::renew_deadline: must exceed 1.2 × retry_period (%v), got %v", le.RetryPeriod, le.RenewDeadline))
		}
		if le.LeaseDuration <= le.RenewDeadline {
			errs = append(errs, fmt.Errorf("leader_election::lease_duration: must exceed renew_deadline (%v), got %v", le.RenewDeadline, le.LeaseDuration))
		}
	}
	if hc := c.HealthCheck; hc.Enabled {
		if hc.Timeout <= 0 || hc.Timeout >= c.CollectionInterval {
			errs = append(errs, fmt.Errorf("health_check::timeout: must be positive and shorter than collection_interval (%v), got %v", c.CollectionInterval, hc.Timeout))
		}
		if hc.Concurrency <= 0 {
			errs = append(errs, fmt.Errorf("health_check::concurrency: must be positive, got %d", hc.Concurrency))
		}
	}
	return errors.Join(errs...)
}
