package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// fakeRootfs stages a small rootfs the way build-static does, with modes
// and mtimes that the builder must not copy into the layer.
func fakeRootfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := []struct {
		name string
		mode os.FileMode
		data string
	}{
		{"usr/local/bin/ts-node-agent", 0o755, "#!agent\n"},
		{"usr/local/bin/tailscaled", 0o700, "#!tailscaled\n"}, // owner-executable only: 0755 in the layer
		{"etc/passwd", 0o600, "root:x:0:0:root:/root:/sbin/nologin\n"},
		{"etc/group", 0o664, "root:x:0:\n"},
		{"etc/ssl/certs/ca-certificates.crt", 0o644, "-----BEGIN CERTIFICATE-----\n"},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o775); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../usr/local/bin/tailscaled", filepath.Join(dir, "etc", "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// wantLayer is what the layer of fakeRootfs must hold: name -> type and mode.
var wantLayer = map[string]string{
	"etc/":                              "dir 0755",
	"etc/group":                         "file 0644",
	"etc/link":                          "symlink 0777 -> ../usr/local/bin/tailscaled",
	"etc/passwd":                        "file 0644",
	"etc/ssl/":                          "dir 0755",
	"etc/ssl/certs/":                    "dir 0755",
	"etc/ssl/certs/ca-certificates.crt": "file 0644",
	"tmp/":                              "dir 1777",
	"usr/":                              "dir 0755",
	"usr/local/":                        "dir 0755",
	"usr/local/bin/":                    "dir 0755",
	"usr/local/bin/tailscaled":          "file 0755",
	"usr/local/bin/ts-node-agent":       "file 0755",
}

func testOptions(t *testing.T, rootfs string) options {
	t.Helper()
	out := t.TempDir()
	o := defaults()
	o.Dockerfile = filepath.Join("..", "..", "Dockerfile")
	o.Rootfs = rootfs
	o.BuildArgs = []string{"VERSION=v9.9.9", "TS_VERSION=v1.2.3", "REVISION=0123abc"}
	o.Name = "registry.example.com/ts-node-agent:v9.9.9"
	o.Platform = "linux/arm64"
	o.Layout = filepath.Join(out, "oci")
	o.Archive = filepath.Join(out, "oci.tar")
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	return o
}

// TestBuildReproducible: the same rootfs gives the same digests and the
// same archive, byte for byte, even when its mtimes change in between.
func TestBuildReproducible(t *testing.T) {
	rootfs := fakeRootfs(t)
	o1 := testOptions(t, rootfs)
	r1, err := build(o1)
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	filepath.WalkDir(rootfs, func(p string, _ os.DirEntry, _ error) error { return os.Chtimes(p, later, later) })
	o2 := testOptions(t, rootfs)
	r2, err := build(o2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("digests: %s, %s", r1.Digest, r2.Digest)
	if r1 != r2 {
		t.Errorf("two builds differ:\n%+v\n%+v", r1, r2)
	}
	a1, _ := os.ReadFile(o1.Archive)
	a2, _ := os.ReadFile(o2.Archive)
	if !bytes.Equal(a1, a2) || len(a1) == 0 {
		t.Error("the two archives differ")
	}
	// A second build into the same layout replaces it: one manifest.
	if _, err := build(o1); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(o1.Layout)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := idx.IndexManifest(); len(m.Manifests) != 1 {
		t.Errorf("rebuilt layout has %d manifests, want 1", len(m.Manifests))
	}
	// And a changed file changes the digest.
	os.WriteFile(filepath.Join(rootfs, "etc", "group"), []byte("root:x:0:\nnobody:x:65534:\n"), 0o644)
	if r3, err := build(testOptions(t, rootfs)); err != nil || r3.Digest == r1.Digest {
		t.Errorf("a changed rootfs kept digest %s (%v)", r1.Digest, err)
	}
}

// TestBuildImage: the config comes from the Dockerfile's final stage, the
// layer holds exactly the rootfs with 0:0 owners, mtime 0, normalized modes
// and sorted paths, and the index names the image for ctr import.
func TestBuildImage(t *testing.T) {
	o := testOptions(t, fakeRootfs(t))
	res, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(o.Layout)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%d manifests in index.json, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	wantAnn := map[string]string{
		"io.containerd.image.name":          "registry.example.com/ts-node-agent:v9.9.9",
		"org.opencontainers.image.ref.name": "v9.9.9",
	}
	if d := cmp.Diff(wantAnn, desc.Annotations); d != "" {
		t.Errorf("index annotations (-want +got):\n%s", d)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != "arm64" {
		t.Errorf("index platform %+v, want linux/arm64", desc.Platform)
	}
	if desc.Digest != res.Digest || desc.ArtifactType != "" || desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("index descriptor %+v, want the OCI manifest %s without artifactType", desc, res.Digest)
	}

	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	wantCfg := v1.Config{
		Entrypoint: []string{"/usr/local/bin/ts-node-agent"},
		User:       "0:0",
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		Labels: map[string]string{
			"org.opencontainers.image.title":            "ts-node-agent",
			"org.opencontainers.image.description":      "Entrypoint of a Tailscale DaemonSet: exit node or exit-node consumer per Node label, with probes and metrics",
			"org.opencontainers.image.source":           "https://github.com/ts-node-agent/ts-node-agent",
			"org.opencontainers.image.url":              "https://github.com/ts-node-agent/ts-node-agent",
			"org.opencontainers.image.version":          "v9.9.9",
			"org.opencontainers.image.revision":         "0123abc",
			"org.opencontainers.image.licenses":         "NOASSERTION",
			"io.github.ts-node-agent.tailscale-version": "v1.2.3",
		},
	}
	if d := cmp.Diff(wantCfg, cf.Config); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}
	if cf.OS != "linux" || cf.Architecture != "arm64" || !cf.Created.Equal(epoch) {
		t.Errorf("config os %q arch %q created %v", cf.OS, cf.Architecture, cf.Created)
	}
	mf, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if mf.MediaType != "application/vnd.oci.image.manifest.v1+json" || mf.Config.MediaType != "application/vnd.oci.image.config.v1+json" ||
		len(mf.Layers) != 1 || mf.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("manifest media types: %+v", mf)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]string{}
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s owned by %d:%d (%q:%q), want 0:0", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s mtime %v, want the epoch", h.Name, h.ModTime)
		}
		kind := map[byte]string{tar.TypeDir: "dir", tar.TypeReg: "file", tar.TypeSymlink: "symlink"}[h.Typeflag]
		got[h.Name] = fmt.Sprintf("%s %04o", kind, h.Mode)
		if h.Typeflag == tar.TypeSymlink {
			got[h.Name] += " -> " + h.Linkname
		}
		if h.Name == "usr/local/bin/ts-node-agent" {
			if b, _ := io.ReadAll(tr); string(b) != "#!agent\n" {
				t.Errorf("%s holds %q", h.Name, b)
			}
		}
	}
	if d := cmp.Diff(wantLayer, got); d != "" {
		t.Errorf("layer entries (-want +got):\n%s", d)
	}
	if !isSorted(names) {
		t.Errorf("layer entries not sorted by path: %q", names)
	}
	if res.Entries != len(wantLayer) {
		t.Errorf("result says %d entries, want %d", res.Entries, len(wantLayer))
	}

	// The archive is the layout as a tarball: the same index.json and blobs.
	f, err := os.Open(o.Archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	inArchive := map[string][]byte{}
	tr = tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		inArchive[h.Name] = b
	}
	for _, name := range []string{"oci-layout", "index.json", "blobs/sha256/" + res.Digest.Hex, "blobs/sha256/" + res.Layer.Hex} {
		disk, err := os.ReadFile(filepath.Join(o.Layout, name))
		if err != nil || !bytes.Equal(disk, inArchive[name]) {
			t.Errorf("archive %s differs from the layout's (%v)", name, err)
		}
	}
	var idxJSON struct {
		Manifests []struct{ Annotations map[string]string }
	}
	if err := json.Unmarshal(inArchive["index.json"], &idxJSON); err != nil || len(idxJSON.Manifests) != 1 ||
		idxJSON.Manifests[0].Annotations["io.containerd.image.name"] != o.Name {
		t.Errorf("archive index.json does not name the image %s: %s (%v)", o.Name, inArchive["index.json"], err)
	}
}

func isSorted(names []string) bool {
	for i := 1; i < len(names); i++ {
		if strings.TrimSuffix(names[i-1], "/") >= strings.TrimSuffix(names[i], "/") {
			return false
		}
	}
	return true
}

func TestBuildRefuses(t *testing.T) {
	t.Run("no entrypoint", func(t *testing.T) {
		rootfs := fakeRootfs(t)
		os.Remove(filepath.Join(rootfs, "usr", "local", "bin", "ts-node-agent"))
		if _, err := build(testOptions(t, rootfs)); err == nil || !strings.Contains(err.Error(), "no entrypoint") {
			t.Errorf("build: %v, want no entrypoint", err)
		}
	})
	t.Run("entrypoint not executable", func(t *testing.T) {
		rootfs := fakeRootfs(t)
		os.Chmod(filepath.Join(rootfs, "usr", "local", "bin", "ts-node-agent"), 0o644)
		if _, err := build(testOptions(t, rootfs)); err == nil || !strings.Contains(err.Error(), "not executable") {
			t.Errorf("build: %v, want not executable", err)
		}
	})
	t.Run("setuid", func(t *testing.T) {
		rootfs := fakeRootfs(t)
		os.Chmod(filepath.Join(rootfs, "usr", "local", "bin", "tailscaled"), 0o755|os.ModeSetuid)
		if _, err := build(testOptions(t, rootfs)); err == nil || !strings.Contains(err.Error(), "setuid") {
			t.Errorf("build: %v, want setuid refused", err)
		}
	})
	t.Run("failed build keeps the old layout", func(t *testing.T) {
		rootfs := fakeRootfs(t)
		o := testOptions(t, rootfs)
		res, err := build(o)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(rootfs, "usr", "local", "bin", "ts-node-agent"))
		if _, err := build(o); err == nil {
			t.Fatal("build without the entrypoint succeeded")
		}
		idx, err := layout.ImageIndexFromPath(o.Layout)
		if err != nil {
			t.Fatal(err)
		}
		if m, _ := idx.IndexManifest(); len(m.Manifests) != 1 || m.Manifests[0].Digest != res.Digest {
			t.Errorf("the old layout is gone: %+v", m)
		}
	})
}

func TestValidate(t *testing.T) {
	o := defaults()
	o.Name = "ts-node-agent:dev" // no registry
	o.Platform = "amd64"
	o.BuildArgs = []string{"A=1", "A=2", "novalue"}
	o.Layout = ""
	err := o.validate()
	for _, want := range []string{"--name", "--platform", "A given twice", `"novalue": want KEY=VALUE`, "--layout is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validate: %v, want it to mention %q", err, want)
		}
	}
}

func TestRun(t *testing.T) {
	o := testOptions(t, fakeRootfs(t))
	var stdout, stderr bytes.Buffer
	args := []string{"--dockerfile", o.Dockerfile, "--rootfs", o.Rootfs, "--name", o.Name, "--platform", o.Platform,
		"--layout", o.Layout, "--archive", o.Archive}
	for _, a := range o.BuildArgs {
		args = append(args, "--build-arg", a)
	}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run = %d: %s", code, &stderr)
	}
	for _, want := range []string{"digest:   sha256:", "layout:   " + o.Layout, "archive:  " + o.Archive, "ctr -n k8s.io images import " + o.Archive} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output does not say %q:\n%s", want, &stdout)
		}
	}
	if code := run([]string{"--name", "x"}, &stdout, &stderr); code != 2 {
		t.Errorf("run with a bad --name = %d, want 2", code)
	}
}
