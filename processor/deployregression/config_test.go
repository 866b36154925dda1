package deployregression

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
	want := Config{
		Before: 10 * time.Minute, After: 5 * time.Minute, Resolution: 30 * time.Second, CurrentWindow: time.Minute,
		Alpha: 0.01, MinSamples: 50, MinIncrease: 0.10, MinIncreaseAbs: time.Millisecond, Retention: time.Hour,
		MaxDeployments: 5000, MaxRevisions: 10, MaxStreams: 1000000,
	}
	if *cfg != want {
		t.Fatalf("defaults = %+v, want %+v", *cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if err := componenttest.CheckConfigStruct(cfg); err != nil {
		t.Fatal(err)
	}
}

func TestLoadConfig(t *testing.T) {
	cm, err := confmaptest.LoadConf(filepath.Join("testdata", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	custom := Config{
		Before: 20 * time.Minute, After: 10 * time.Minute, Resolution: time.Minute, CurrentWindow: 2 * time.Minute,
		Alpha: 0.001, MinSamples: 200, MinIncrease: 0.25, MinIncreaseAbs: 5 * time.Millisecond, Retention: 2 * time.Hour,
		MaxDeployments: 100, MaxRevisions: 4, MaxStreams: 20000,
	}
	tests := []struct {
		id      component.ID
		want    *Config
		wantErr string
	}{
		{id: component.NewID(Type), want: createDefaultConfig()},
		{id: component.NewIDWithName(Type, "custom"), want: &custom},
		{id: component.NewIDWithName(Type, "bad_alpha"), wantErr: "alpha: must be in (0, 1)"},
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
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
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

func TestValidateNamesField(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(*Config)
	}{
		{"before:", func(c *Config) { c.Before = 0 }},
		{"after:", func(c *Config) { c.After = -time.Minute }},
		{"resolution: must be positive", func(c *Config) { c.Resolution = 0 }},
		{"resolution: must not exceed before", func(c *Config) { c.Before = 10 * time.Second }},
		{"resolution: must not exceed after", func(c *Config) { c.After = 10 * time.Second }},
		{"resolution: (before+after)/resolution", func(c *Config) { c.Resolution = time.Second }},
		{"current_window: must be at least", func(c *Config) { c.CurrentWindow = time.Second }},
		{"current_window: must not exceed", func(c *Config) { c.CurrentWindow = time.Hour }},
		{"alpha:", func(c *Config) { c.Alpha = 0 }},
		{"min_samples:", func(c *Config) { c.MinSamples = 0 }},
		{"min_increase:", func(c *Config) { c.MinIncrease = -0.1 }},
		{"min_increase_abs:", func(c *Config) { c.MinIncreaseAbs = -time.Millisecond }},
		{"retention:", func(c *Config) { c.Retention = 10 * time.Minute }},
		{"max_deployments:", func(c *Config) { c.MaxDeployments = 0 }},
		{"max_revisions:", func(c *Config) { c.MaxRevisions = 1 }},
		{"max_streams:", func(c *Config) { c.MaxStreams = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			cfg := createDefaultConfig()
			tt.mutate(cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("Validate() = %v, want error naming %q", err, tt.field)
			}
		})
	}
}
