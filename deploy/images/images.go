// Package images builds lbpath's container images without a Docker daemon
// or a network: each image is one static Go binary on an empty base, written
// as an OCI image-layout tarball that `ctr images import` loads and, once
// extracted, `crane push` pushes unchanged.
//
// Builds are reproducible: the same source, toolchain and options give the
// same bytes, so the same digests. Only linux/amd64 is built.
package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"sigs.k8s.io/yaml"
)

// Image is one image: a static Go binary on an empty base.
type Image struct {
	// Name is the short name, e.g. "lbpath-agent"; the ref is
	// Registry/Name:Tag and the binary is /usr/local/bin/Name.
	Name string
	// Package is the main package to build, e.g. "./cmd/lbpath-agent",
	// relative to Module. Exactly one of Package and Binary is set.
	Package string
	// Module is the directory, relative to the lbpath module root, of
	// the nested Go module (own go.mod) that Package is built in, e.g.
	// "cmd/lbpath-gateway"; empty: the lbpath module itself. A nested
	// module keeps dependency trees at other versions (the gateway's
	// collector release) out of the product's go.mod.
	Module string
	// Binary is the path of an already-built static linux/amd64 binary
	// (e.g. CoreDNS built in a tools module).
	Binary string
	// Args are the default arguments after the binary (the image's Cmd, so
	// a pod's args replace them).
	Args []string
	// Description is the org.opencontainers.image.description label.
	Description string
	// User is the image's user, e.g. "65532:65532", or "" for root.
	User string
}

// Options configure Build.
type Options struct {
	// OutDir is where the <Name>.tar OCI archives go; default
	// <module root>/.bin/images.
	OutDir string
	// Registry prefixes every ref; default DefaultRegistry.
	Registry string
	// Tag is every image's tag and version label; default the Helm chart's
	// appVersion.
	Tag string
	// Images to build.
	Images []Image
	// Dir is the root of the lbpath module: where Package paths and the
	// chart are resolved and `go build` runs. Default: found upwards from
	// the working directory.
	Dir string
	// Source fixes the revision label and every timestamp; the zero value
	// means ReadSource(Dir).
	Source Source
}

// Built is one image that Build wrote.
type Built struct {
	Image Image
	// Ref is Registry/Name:Tag.
	Ref string
	// Digest is the manifest digest, "sha256:…": the same after a push.
	Digest string
	// Archive is the path of the OCI archive.
	Archive string
	// Size is the compressed size: config, layer and manifest bytes.
	Size int64
	// Uncompressed is the size of the layer's uncompressed tar.
	Uncompressed int64
}

// DefaultRegistry prefixes the refs unless Options.Registry is set. A fully
// qualified name lets a kubelet with imagePullPolicy IfNotPresent find an
// imported image without pulling.
const DefaultRegistry = "docker.io/lbpath"

// Module is the import path of the module whose packages Build builds.
const Module = "github.com/lbpath/lbpath"

// ChartPath is the Helm chart's Chart.yaml, relative to the module root; its
// appVersion is the default tag.
const ChartPath = "deploy/helm/lbpath/Chart.yaml"

// nonRoot is the conventional unprivileged user of distroless images.
const nonRoot = "65532:65532"

// Product lists the images lbpath ships.
var Product = []Image{
	{
		Name:        "lbpath-agent",
		Package:     "./cmd/lbpath-agent",
		Description: "lbpath node agent: eBPF capture of TCP connections joined with the node's NAT translations",
		// Root: loading BPF programs needs CAP_BPF/PERFMON/NET_ADMIN,
		// which a non-root user only gets as ambient capabilities.
	},
	{
		Name:        "lbpath-collector",
		Package:     "./cmd/lbpath-collector",
		Description: "lbpath collector: OpenTelemetry Collector distribution with lbpath's load-balance processors",
		User:        nonRoot,
	},
	{
		Name:        "lbpath-gateway",
		Module:      "cmd/lbpath-gateway",
		Package:     ".",
		Description: "lbpath gateway: routes the agents' OTLP to lbpath-collector replicas by Kubernetes Service and trace ID",
		User:        nonRoot,
	},
}

// Build builds opt.Images and writes one OCI archive per image into
// opt.OutDir. Nothing is written for an image whose build fails.
func Build(ctx context.Context, opt Options) ([]Built, error) {
	opt, err := withDefaults(ctx, opt)
	if err != nil {
		return nil, err
	}
	if err := validate(opt); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "lbpath-images-")
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	defer os.RemoveAll(work)
	bins, err := binaries(ctx, opt, work)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opt.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("images: out dir: %w", err)
	}
	built := make([]Built, 0, len(opt.Images))
	for i, im := range opt.Images {
		b, err := writeImage(im, bins[i], opt)
		if err != nil {
			return built, fmt.Errorf("images: %s: %w", im.Name, err)
		}
		built = append(built, b)
	}
	return built, nil
}

// Ref is the reference an image gets under opt (after defaults).
func Ref(opt Options, im Image) string {
	return opt.Registry + "/" + im.Name + ":" + opt.Tag
}

func withDefaults(ctx context.Context, opt Options) (Options, error) {
	if opt.Dir == "" {
		d, err := ModuleRoot()
		if err != nil {
			return opt, err
		}
		opt.Dir = d
	}
	if opt.Registry == "" {
		opt.Registry = DefaultRegistry
	}
	opt.Registry = strings.TrimSuffix(opt.Registry, "/")
	if opt.Tag == "" {
		v, err := ChartAppVersion(opt.Dir)
		if err != nil {
			return opt, err
		}
		opt.Tag = v
	}
	if opt.OutDir == "" {
		opt.OutDir = filepath.Join(opt.Dir, ".bin", "images")
	}
	if opt.Source == (Source{}) {
		s, err := ReadSource(ctx, opt.Dir)
		if err != nil {
			return opt, err
		}
		opt.Source = s
	}
	return opt, nil
}

func validate(opt Options) error {
	if len(opt.Images) == 0 {
		return errors.New("images: no images to build")
	}
	seen := map[string]bool{}
	for _, im := range opt.Images {
		if im.Name == "" || strings.ContainsAny(im.Name, "/:@") {
			return fmt.Errorf("images: image name %q: want a short name like lbpath-agent", im.Name)
		}
		if seen[im.Name] {
			return fmt.Errorf("images: image name %q given twice", im.Name)
		}
		seen[im.Name] = true
		if (im.Package == "") == (im.Binary == "") {
			return fmt.Errorf("images: %s: set exactly one of Package and Binary", im.Name)
		}
		if im.Module != "" && (im.Binary != "" || filepath.IsAbs(im.Module) || strings.HasPrefix(filepath.Clean(im.Module), "..")) {
			return fmt.Errorf("images: %s: Module %q: want a directory inside the lbpath module, with Package", im.Name, im.Module)
		}
		if _, err := name.NewTag(Ref(opt, im), name.StrictValidation); err != nil {
			return fmt.Errorf("images: %s: ref %q: %w", im.Name, Ref(opt, im), err)
		}
	}
	return nil
}

// CheckRegistry says whether r can prefix an image name: a registry host
// with optional repository path, e.g. "docker.io/lbpath" or
// "registry.example.com:5000/team".
func CheckRegistry(r string) error {
	if r == "" {
		return errors.New("empty")
	}
	if _, err := name.NewRepository(strings.TrimSuffix(r, "/")+"/x", name.StrictValidation); err != nil {
		return fmt.Errorf("%q is not a registry/repository prefix: %w", r, err)
	}
	return nil
}

// CheckTag says whether t is a valid image tag.
func CheckTag(t string) error {
	if _, err := name.NewTag("x:"+t, name.StrictValidation); err != nil || t == "" {
		return fmt.Errorf("%q is not a valid tag (letters, digits, _ . -; at most 128)", t)
	}
	return nil
}

// ModuleRoot finds the lbpath module's root upwards from the working
// directory, so Build works from any package directory (tests run in theirs)
// but not from inside a nested tools module.
func ModuleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("images: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && modulePath(b) == Module {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("images: no go.mod of module %s above the working directory", Module)
		}
		d = parent
	}
}

func modulePath(gomod []byte) string {
	for _, l := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// ChartAppVersion is the appVersion of the chart under the module root dir.
func ChartAppVersion(dir string) (string, error) {
	p := filepath.Join(dir, ChartPath)
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("images: default tag: %w", err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(b, &chart); err != nil {
		return "", fmt.Errorf("images: default tag: %s: %w", p, err)
	}
	if chart.AppVersion == "" {
		return "", fmt.Errorf("images: default tag: %s has no appVersion", p)
	}
	return chart.AppVersion, nil
}
