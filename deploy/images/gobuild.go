package images

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Source is what the images say about the source they were built from.
type Source struct {
	// Revision is the git commit, with "-dirty" when tracked files
	// differ from it; "" outside a git checkout.
	Revision string
	// Created is every timestamp in the images: config, history, file
	// mtimes. Fixed by the source, never the clock, so builds repeat.
	Created time.Time
}

// SourceDateEpochEnv overrides Source.Created (reproducible-builds.org).
const SourceDateEpochEnv = "SOURCE_DATE_EPOCH"

// ReadSource reads the Source of the checkout at dir: Created is
// $SOURCE_DATE_EPOCH if set, else the HEAD commit's time, else the Unix
// epoch.
func ReadSource(ctx context.Context, dir string) (Source, error) {
	var s Source
	if head, err := git(ctx, dir, "rev-parse", "HEAD"); err == nil {
		s.Revision = head
		if st, err := git(ctx, dir, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			s.Revision += "-dirty"
		}
	}
	if v, ok := os.LookupEnv(SourceDateEpochEnv); ok {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil || sec < 0 {
			return s, fmt.Errorf("images: %s=%q: want seconds since the Unix epoch", SourceDateEpochEnv, v)
		}
		s.Created = time.Unix(sec, 0).UTC()
		return s, nil
	}
	s.Created = time.Unix(0, 0).UTC()
	if ct, err := git(ctx, dir, "log", "-1", "--format=%ct"); err == nil {
		if sec, err := strconv.ParseInt(ct, 10, 64); err == nil {
			s.Created = time.Unix(sec, 0).UTC()
		}
	}
	return s, nil
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

// binaries returns the path of each image's binary, in opt.Images order:
// Package images built by one `go build` per module into work, Binary
// images as given. Every binary must be a static linux/amd64 executable,
// since the image has no dynamic loader and no libc.
func binaries(ctx context.Context, opt Options, work string) ([]string, error) {
	paths := make([]string, len(opt.Images))
	pkgs := map[string][]string{} // module dir → packages
	var modules []string
	byBase := map[string]string{}
	for i, im := range opt.Images {
		if im.Binary != "" {
			paths[i] = im.Binary
			continue
		}
		// go build -o dir/ names each binary after its package's
		// import path's last element, which for "." in a nested module
		// is the module's last element.
		base := path.Base(path.Join(im.Module, im.Package))
		key := im.Module + ":" + im.Package
		if other, ok := byBase[base]; ok && other != key {
			return nil, fmt.Errorf("images: packages %s and %s both build a binary named %s", other, key, base)
		}
		byBase[base] = key
		if _, ok := pkgs[im.Module]; !ok {
			modules = append(modules, im.Module)
		}
		pkgs[im.Module] = append(pkgs[im.Module], im.Package)
		paths[i] = filepath.Join(work, "bin", base)
	}
	out := filepath.Join(work, "bin") + string(filepath.Separator)
	for _, m := range modules {
		if err := goBuild(ctx, opt, filepath.Join(opt.Dir, m), out, pkgs[m]); err != nil {
			return nil, err
		}
	}
	for i, p := range paths {
		if err := checkStatic(p); err != nil {
			return nil, fmt.Errorf("images: %s: %w", opt.Images[i].Name, err)
		}
	}
	return paths, nil
}

// goBuild builds pkgs of the module in dir reproducibly: no cgo, no
// absolute paths, no VCS stamp (the image's revision label carries it), no
// symbol table or DWARF; the version stamp (main.version, where a command
// has one; the linker ignores it elsewhere) is the tag.
func goBuild(ctx context.Context, opt Options, dir, out string, pkgs []string) error {
	args := []string{"build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -X main.version=" + opt.Tag, "-o", out}
	cmd := exec.CommandContext(ctx, "go", append(args, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1", "GOFLAGS=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("images: go build %s in %s: %w\n%s", strings.Join(pkgs, " "), dir, err, stderr.Bytes())
	}
	return nil
}

func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("binary %s (is it a main package?): %w", p, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("binary %s is for %s; images are linux/amd64", p, f.Machine)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("binary %s is dynamically linked; the image has no libc (build it with CGO_ENABLED=0)", p)
		}
	}
	return nil
}
