package images_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/lbpath/lbpath/deploy/images"
	"github.com/lbpath/lbpath/testbed/podhttp"
	"github.com/lbpath/lbpath/testbed/testimages"
)

// buildOnce builds imgs into a fresh directory with src fixed, so two builds
// of the same tree can be compared even if someone commits meanwhile.
func buildOnce(t *testing.T, src images.Source, imgs []images.Image) []images.Built {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	built, err := images.Build(ctx, images.Options{OutDir: t.TempDir(), Tag: "0.0.0-test", Images: imgs, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	if len(built) != len(imgs) {
		t.Fatalf("built %d images, want %d", len(built), len(imgs))
	}
	return built
}

func readSource(t *testing.T) images.Source {
	t.Helper()
	root, err := images.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	src, err := images.ReadSource(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestReproducible builds the same images twice into different directories:
// digests and archive bytes must be equal. The gateway is built from its
// own module (Image.Module).
func TestReproducible(t *testing.T) {
	src := readSource(t)
	imgs := append([]images.Image{images.Product[0], product(t, "lbpath-gateway")}, testimages.All...)
	a := buildOnce(t, src, imgs)
	b := buildOnce(t, src, imgs)
	for i := range a {
		if a[i].Digest != b[i].Digest {
			t.Errorf("%s: digests differ: %s vs %s", a[i].Image.Name, a[i].Digest, b[i].Digest)
		}
		if !bytes.Equal(readFile(t, a[i].Archive), readFile(t, b[i].Archive)) {
			t.Errorf("%s: archives %s and %s differ", a[i].Image.Name, a[i].Archive, b[i].Archive)
		}
		t.Logf("%s %s compressed %d uncompressed %d", a[i].Ref, a[i].Digest, a[i].Size, a[i].Uncompressed)
	}
}

func product(t *testing.T, name string) images.Image {
	t.Helper()
	for _, im := range images.Product {
		if im.Name == name {
			return im
		}
	}
	t.Fatalf("no image %s in images.Product", name)
	return images.Image{}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestArchive reads an archive back with go-containerregistry's OCI layout
// reader (what `crane push <dir>` uses) and checks what containerd's importer
// and a kubelet rely on: the index annotations, the manifest digest, the
// config, and a layer holding exactly the binary.
func TestArchive(t *testing.T) {
	src := images.Source{Revision: "0123456789abcdef0123456789abcdef01234567", Created: time.Unix(1700000000, 0).UTC()}
	b := buildOnce(t, src, []images.Image{testimages.PodServer})[0]
	dir := untar(t, b.Archive)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("invalid index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	wantRef := "docker.io/lbpath/podserver:0.0.0-test"
	if b.Ref != wantRef || desc.Annotations[images.AnnotationContainerdName] != wantRef ||
		desc.Annotations[images.AnnotationRefName] != "0.0.0-test" {
		t.Errorf("ref %s, annotations %v; want %s and tag 0.0.0-test", b.Ref, desc.Annotations, wantRef)
	}
	if desc.Digest.String() != b.Digest {
		t.Errorf("index names manifest %s, Build returned %s", desc.Digest, b.Digest)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	checkConfig(t, img, src)
	checkLayer(t, img, "usr/local/bin/podserver", src.Created)
	if info, err := os.Stat(b.Archive); err != nil || b.Size <= 0 || b.Size > info.Size() {
		t.Errorf("Size %d, archive %v (%v)", b.Size, info, err)
	}
}

func checkConfig(t *testing.T, img v1.Image, src images.Source) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Time.Equal(src.Created) {
		t.Errorf("config platform %s/%s created %v; want linux/amd64 %v", cf.OS, cf.Architecture, cf.Created, src.Created)
	}
	c := cf.Config
	if strings.Join(c.Entrypoint, " ") != "/usr/local/bin/podserver" || c.User != "65532:65532" {
		t.Errorf("entrypoint %q user %q", c.Entrypoint, c.User)
	}
	want := map[string]string{
		"org.opencontainers.image.title":       "podserver",
		"org.opencontainers.image.description": testimages.PodServer.Description,
		"org.opencontainers.image.version":     "0.0.0-test",
		"org.opencontainers.image.revision":    src.Revision,
		"org.opencontainers.image.source":      "https://github.com/lbpath/lbpath",
		"org.opencontainers.image.created":     "2023-11-14T22:13:20Z",
	}
	for k, v := range want {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}
	if len(c.Labels) != len(want) {
		t.Errorf("labels %v, want exactly %v", c.Labels, want)
	}
}

// checkLayer: one layer, root-owned directories and the binary, every mtime
// the source time, and the binary a static executable that runs.
func checkLayer(t *testing.T, img v1.Image, bin string, mtime time.Time) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(mtime) || h.Mode != 0o755 {
			t.Errorf("%s: uid %d gid %d mode %o mtime %v", h.Name, h.Uid, h.Gid, h.Mode, h.ModTime)
		}
	}
	if got := strings.Join(names, " "); got != "usr/ usr/local/ usr/local/bin/ "+bin {
		t.Errorf("layer holds %s", got)
	}
}

func untar(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildRejects: configuration errors are found before anything is built
// and name what is wrong.
func TestBuildRejects(t *testing.T) {
	ok := testimages.Pause
	cases := []struct {
		name string
		imgs []images.Image
		opt  func(*images.Options)
		want string
	}{
		{"no images", nil, nil, "no images"},
		{"name with slash", []images.Image{{Name: "a/b", Package: ok.Package}}, nil, `"a/b"`},
		{"duplicate", []images.Image{ok, ok}, nil, "given twice"},
		{"package and binary", []images.Image{{Name: "x", Package: ok.Package, Binary: "/bin/true"}}, nil, "exactly one"},
		{"neither", []images.Image{{Name: "x"}}, nil, "exactly one"},
		{"bad tag", []images.Image{ok}, func(o *images.Options) { o.Tag = "a b" }, "ref"},
		{"dynamic binary", []images.Image{{Name: "x", Binary: "/bin/ls"}}, nil, "dynamically linked"},
		{"not a main package", []images.Image{{Name: "x", Package: "./deploy/images"}}, nil, "main package"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			opt := images.Options{OutDir: out, Images: c.imgs}
			if c.opt != nil {
				c.opt(&opt)
			}
			_, err := images.Build(context.Background(), opt)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one containing %q", err, c.want)
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("wrote %d files after an error", len(ents))
			}
		})
	}
}

// imageBinary writes the entrypoint binary of the image in archive to a
// temporary file, read through the OCI layout as a runtime would.
func imageBinary(t *testing.T, archive string) string {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(untar(t, archive))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	entry := strings.TrimPrefix(cf.Config.Entrypoint[0], "/")
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("entrypoint %s not in the image: %v", entry, err)
		}
		if h.Name != entry {
			continue
		}
		p := filepath.Join(t.TempDir(), filepath.Base(entry))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(f, tr); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// TestTestImagesRun runs the binaries the testbed's images carry: the pod
// server answers with its pod name and the peer address it saw, after
// LBPATH_DELAY, and /readyz at once; both stop with exit 0 on SIGTERM.
func TestTestImagesRun(t *testing.T) {
	built := buildOnce(t, readSource(t), testimages.All)
	podserver, pause := imageBinary(t, built[0].Archive), imageBinary(t, built[1].Archive)

	const delay = time.Second
	srv := exec.Command(podserver, "-listen", "127.0.0.1:0")
	srv.Env = []string{"POD_NAME=web-7d4b9-x2x5q", podhttp.DelayEnv + "=" + delay.String()}
	addr := startLogging(t, srv, "serving")

	var local string
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, a)
		if err == nil {
			local = c.LocalAddr().String()
		}
		return c, err
	}}}
	start := time.Now()
	body, h := get(t, client, "http://"+addr+"/any/path")
	if took := time.Since(start); took < delay {
		t.Errorf("answered after %v, before the %v delay", took, delay)
	}
	if body != "web-7d4b9-x2x5q\n" || h.Get(podhttp.HeaderPod) != "web-7d4b9-x2x5q" || h.Get(podhttp.HeaderRemoteAddr) != local {
		t.Errorf("body %q, %s %q, %s %q; want the pod name and %s", body, podhttp.HeaderPod, h.Get(podhttp.HeaderPod),
			podhttp.HeaderRemoteAddr, h.Get(podhttp.HeaderRemoteAddr), local)
	}
	start = time.Now()
	if body, _ := get(t, client, "http://"+addr+podhttp.ReadyPath); body != "ok\n" || time.Since(start) >= delay {
		t.Errorf("%s: %q after %v; want ok without the delay", podhttp.ReadyPath, body, time.Since(start))
	}
	client.CloseIdleConnections()
	stopExits0(t, srv)

	p := exec.Command(pause)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // it must still be holding on
	stopExits0(t, p)
}

// startLogging starts cmd and returns the addr= of its first stderr line
// containing msg.
func startLogging(t *testing.T, cmd *exec.Cmd, msg string) string {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), msg) {
			continue
		}
		for _, f := range strings.Fields(sc.Text()) {
			if a, ok := strings.CutPrefix(f, "addr="); ok {
				go func() { _, _ = io.Copy(io.Discard, stderr) }()
				return a
			}
		}
	}
	t.Fatalf("%s exited without logging %q", cmd.Path, msg)
	return ""
}

func get(t *testing.T, c *http.Client, url string) (string, http.Header) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b), resp.Header
}

func stopExits0(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("%s already gone: %v", cmd.Path, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("%s after SIGTERM: %v, want exit 0", filepath.Base(cmd.Path), err)
	}
}

// TestPodServerRejects: a pod server without its pod name or with a bad
// delay exits 2 naming the variable instead of answering wrong.
func TestPodServerRejects(t *testing.T) {
	podserver := imageBinary(t, buildOnce(t, readSource(t), []images.Image{testimages.PodServer})[0].Archive)
	cases := []struct {
		env  []string
		want string
	}{
		{nil, "POD_NAME"},
		{[]string{"POD_NAME=p", podhttp.DelayEnv + "=soon"}, podhttp.DelayEnv},
		{[]string{"POD_NAME=p", "LBPATH_LISTEN=nowhere"}, "-listen"},
	}
	for _, c := range cases {
		cmd := exec.Command(podserver)
		cmd.Env = c.env
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), c.want) {
			t.Errorf("env %q: %v (%s); want exit 2 naming %s", c.env, err, out, c.want)
		}
	}
}
