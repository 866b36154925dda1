package lbsignals

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/confmaptest"
)

func TestCreateDefaultConfig(t *testing.T) {
	cfg := NewFactory().CreateDefaultConfig().(*Config)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if err := componenttest.CheckConfigStruct(cfg); err != nil {
		t.Fatal(err)
	}
	if !cfg.LeaderElection.Enabled || !cfg.HealthCheck.Enabled || cfg.CollectionInterval != 30*time.Second {
		t.Fatalf("defaults = %+v: want leader election and probes on, 30s", cfg)
	}
}

func TestLoadConfig(t *testing.T) {
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	custom := createDefaultConfig()
	custom.CollectionInterval = 15 * time.Second
	custom.Kubeconfig = "/etc/lbpath/kubeconfig"
	custom.ClusterName = "prod-eu1"
	custom.LeaderElection = LeaderElectionConfig{Enabled: true, LeaseName: "signals", LeaseNamespace: "monitoring",
		LeaseDuration: 30 * time.Second, RenewDeadline: 20 * time.Second, RetryPeriod: 5 * time.Second}
	custom.HealthCheck = HealthCheckConfig{Enabled: true, Timeout: time.Second, Concurrency: 4}
	single := createDefaultConfig()
	single.LeaderElection.Enabled = false
	single.HealthCheck.Enabled = false
	tests := []struct {
		id      component.ID
		want    *Config
		wantErr []string
	}{
		{id: component.NewID(Type), want: createDefaultConfig()},
		{id: component.NewIDWithName(Type, "custom"), want: custom},
		{id: component.NewIDWithName(Type, "single"), want: single},
		{id: component.NewIDWithName(Type, "bad_timeout"), wantErr: []string{"health_check::timeout: must be positive and shorter than collection_interval"}},
		{id: component.NewIDWithName(Type, "bad_lease"), wantErr: []string{
			"leader_election::lease_name: must not be empty",
			"leader_election::lease_duration: must exceed renew_deadline",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.id.String(), func(t *testing.T) {
			cfg := NewFactory().CreateDefaultConfig()
			sub, err := cm.Sub(tt.id.String())
			if err != nil {
				t.Fatal(err)
			}
			if err := sub.Unmarshal(cfg); err != nil {
				t.Fatal(err)
			}
			err = confmap.Validate(cfg)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("validated, want %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.(*Config); *got != *tt.want {
				t.Fatalf("config = %+v, want %+v", *got, *tt.want)
			}
		})
	}
}
