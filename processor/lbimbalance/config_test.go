package lbimbalance

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
		Window: time.Minute, Bucket: 10 * time.Second, HotFactor: 1.5, MinConnections: 20,
		MaxServices: 10000, MaxPodsPerService: 1000, MaxStreams: 1000000, StaleAfter: 5 * time.Minute,
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
		Window: 2 * time.Minute, Bucket: 15 * time.Second, HotFactor: 2, MinConnections: 100,
		MaxServices: 50, MaxPodsPerService: 30, MaxStreams: 5000, StaleAfter: 10 * time.Minute,
	}
	tests := []struct {
		id      component.ID
		want    *Config
		wantErr string
	}{
		{id: component.NewID(Type), want: createDefaultConfig()},
		{id: component.NewIDWithName(Type, "custom"), want: &custom},
		{id: component.NewIDWithName(Type, "bad_window"), wantErr: "window: must be a multiple of bucket"},
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
		{"window:", func(c *Config) { c.Window = 0 }},
		{"bucket:", func(c *Config) { c.Bucket = -time.Second }},
		{"window: must be a multiple", func(c *Config) { c.Window = 25 * time.Second }},
		{"window: at most", func(c *Config) { c.Window = time.Hour; c.Bucket = time.Second }},
		{"hot_factor:", func(c *Config) { c.HotFactor = 1 }},
		{"min_connections:", func(c *Config) { c.MinConnections = -1 }},
		{"max_services:", func(c *Config) { c.MaxServices = 0 }},
		{"max_pods_per_service:", func(c *Config) { c.MaxPodsPerService = 0 }},
		{"max_streams:", func(c *Config) { c.MaxStreams = -5 }},
		{"stale_after:", func(c *Config) { c.StaleAfter = 30 * time.Second }},
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
