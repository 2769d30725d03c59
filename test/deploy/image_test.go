package deploy_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// keyValues parses the KEY=VALUE words of LABEL or ENV arguments (values
// plain or double-quoted), expanding ${NAME} and $NAME from vars when vars
// is not nil. It is this test's own reading of the Dockerfile, independent
// of hack/image's.
func keyValues(t *testing.T, args string, vars map[string]string) map[string]string {
	t.Helper()
	kv := regexp.MustCompile(`([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)`)
	out := map[string]string{}
	if rest := strings.TrimSpace(kv.ReplaceAllString(args, "")); rest != "" {
		t.Fatalf("not KEY=VALUE words: %q in %q", rest, args)
	}
	for _, m := range kv.FindAllStringSubmatch(args, -1) {
		v := m[2]
		if strings.HasPrefix(v, `"`) {
			v = regexp.MustCompile(`\\(.)`).ReplaceAllString(v[1:len(v)-1], "$1")
		}
		if vars != nil {
			v = os.Expand(v, func(k string) string { return vars[k] })
		}
		out[m[1]] = v
	}
	return out
}

// ociImage is an OCI archive read with nothing but the standard library:
// index.json, the one manifest and its config, the layer's entries.
type ociImage struct {
	index struct {
		Manifests []struct {
			MediaType   string            `json:"mediaType"`
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
			Platform    struct{ OS, Architecture string }
		} `json:"manifests"`
	}
	manifest struct {
		MediaType string `json:"mediaType"`
		Config    struct{ MediaType, Digest string }
		Layers    []struct{ MediaType, Digest string }
	}
	config struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Config       struct {
			Entrypoint []string
			User       string
			Env        []string
			Labels     map[string]string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	layer   []*tar.Header
	content map[string][]byte // regular files of the layer
}

func readOCIArchive(t *testing.T, file string) *ociImage {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blobs := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if blobs[h.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	blob := func(digest string) []byte {
		t.Helper()
		algo, hex, _ := strings.Cut(digest, ":")
		b, ok := blobs["blobs/"+algo+"/"+hex]
		if !ok {
			t.Fatalf("%s: no blob %s", file, digest)
		}
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(b)); got != digest {
			t.Fatalf("blob %s has digest %s", digest, got)
		}
		return b
	}
	var img ociImage
	if !strings.Contains(string(blobs["oci-layout"]), `"imageLayoutVersion"`) {
		t.Errorf("oci-layout: %q", blobs["oci-layout"])
	}
	if err := json.Unmarshal(blobs["index.json"], &img.index); err != nil || len(img.index.Manifests) != 1 {
		t.Fatalf("index.json: %v, %s", err, blobs["index.json"])
	}
	if err := json.Unmarshal(blob(img.index.Manifests[0].Digest), &img.manifest); err != nil || len(img.manifest.Layers) != 1 {
		t.Fatalf("manifest: %v, %+v", err, img.manifest)
	}
	if err := json.Unmarshal(blob(img.manifest.Config.Digest), &img.config); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(img.manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	tr = tar.NewReader(io.TeeReader(zr, h))
	img.content = map[string][]byte{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		img.layer = append(img.layer, hdr)
		if hdr.Typeflag == tar.TypeReg {
			if img.content[hdr.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	io.Copy(io.Discard, zr) // the tar's end-of-archive padding, for the diff ID
	if diffID := fmt.Sprintf("sha256:%x", h.Sum(nil)); !slices.Equal(img.config.RootFS.DiffIDs, []string{diffID}) {
		t.Errorf("config diff_ids %q, the layer's is %s", img.config.RootFS.DiffIDs, diffID)
	}
	return &img
}

// epoch is the mtime of every layer entry.
var epoch = time.Unix(0, 0)

// imageFiles are the files of the image, with their type and mode: what
// build-static stages and both ways of building the image copy.
var imageFiles = map[string]string{
	"etc/":                              "dir 0755",
	"etc/group":                         "file 0644",
	"etc/nsswitch.conf":                 "file 0644",
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

// imageBinaries returns the agent and the tailscaled directory to put in
// the image: the real ones when they are built (bin/, or where make test
// says), else small fakes, so the test never builds them.
func imageBinaries(t *testing.T, root string) (agent, tsbin string) {
	t.Helper()
	agent = os.Getenv("TSNA_TEST_AGENT_BIN")
	if agent == "" {
		agent = filepath.Join(root, "bin", "ts-node-agent")
	}
	tailscaled := os.Getenv(tstest.EnvTailscaled)
	if tailscaled == "" {
		tailscaled = filepath.Join(root, "bin", "tailscale-"+tstest.TailscaleVersion(), "tailscaled")
	}
	_, errA := os.Stat(agent)
	_, errT := os.Stat(tailscaled)
	if errA == nil && errT == nil {
		t.Logf("image of the real binaries %s and %s", agent, tailscaled)
		return agent, filepath.Dir(tailscaled)
	}
	t.Logf("image of fake binaries (no %s or %s)", agent, tailscaled)
	dir := t.TempDir()
	agent = filepath.Join(dir, "ts-node-agent")
	writeExecutable(t, agent, "#!/bin/false agent\n")
	writeExecutable(t, filepath.Join(dir, "tailscale", "tailscaled"), "#!/bin/false tailscaled\n")
	return agent, filepath.Join(dir, "tailscale")
}

func writeExecutable(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// makeImageOCI runs `make image-oci` (without rebuilding the binaries)
// into tmp, build number n, and returns the digest it printed, the archive
// and the staged rootfs.
func makeImageOCI(t *testing.T, root, goBin, agent, tsbin, tmp string, n int, image string, vars map[string]string) (digest, archive, rootfs string) {
	t.Helper()
	rootfs = filepath.Join(tmp, fmt.Sprint("rootfs", n))
	archive = filepath.Join(tmp, fmt.Sprint("oci", n, ".tar"))
	cmd := exec.Command("make", "--no-print-directory", "-o", "build", "image-oci", "GO="+goBin,
		"AGENT="+agent, "TSBIN="+tsbin, "IMAGE_ROOTFS="+rootfs, "CA_BUNDLE="+filepath.Join(tmp, "ca.crt"),
		"OCI_LAYOUT="+filepath.Join(tmp, fmt.Sprint("oci", n)), "OCI_ARCHIVE="+archive,
		"IMAGE="+image, "VERSION="+vars["VERSION"], "REVISION="+vars["REVISION"])
	cmd.Dir = root
	cmd.Env = cleanMakeEnv("")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image-oci: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^digest: +(sha256:[0-9a-f]{64}) `).FindSubmatch(out)
	if m == nil {
		t.Fatalf("make image-oci printed no digest:\n%s", out)
	}
	t.Logf("build %d: %s", n, m[1])
	return string(m[1]), archive, rootfs
}

// TestMakeImageOCI runs `make image-oci`, the image without an engine, as
// `make image` does when there is none, but without rebuilding the
// binaries (-o build) and into temporary directories. Twice: the two builds
// give the same manifest digest and the same archive. The image agrees with
// the Dockerfile, the other way to build it: the labels, env, user and
// entrypoint of its final stage (read here by this test, not by
// hack/image), and the files build-static staged, which is what the final
// stage copies. Each layer entry is owned by 0:0 with mtime 0.
func TestMakeImageOCI(t *testing.T) {
	root := repoRoot(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	agent, tsbin := imageBinaries(t, root)
	tmp := t.TempDir()
	const image = "registry.example.com/ts-node-agent:v0.0.0-test"
	vars := map[string]string{"VERSION": "v0.0.0-test", "REVISION": "0123456789abcdef", "TS_VERSION": tstest.TailscaleVersion()}
	build := func(n int) (digest, archive, rootfs string) {
		t.Helper()
		return makeImageOCI(t, root, goBin, agent, tsbin, tmp, n, image, vars)
	}
	d1, a1, rootfs := build(1)
	d2, a2, _ := build(2)
	if d1 != d2 {
		t.Errorf("two builds of the same inputs: digests %s and %s", d1, d2)
	}
	if !bytes.Equal(readFile(t, a1), readFile(t, a2)) {
		t.Error("two builds of the same inputs: the archives differ")
	}

	img := readOCIArchive(t, a1)
	desc := img.index.Manifests[0]
	if desc.Digest != d1 || desc.Annotations["io.containerd.image.name"] != image || desc.Platform.OS != "linux" {
		t.Errorf("index.json manifest %+v: want %s named %s (io.containerd.image.name, for ctr import), linux", desc, d1, image)
	}
	if img.config.OS != "linux" || img.config.Architecture == "" || img.config.Architecture != desc.Platform.Architecture {
		t.Errorf("config platform %s/%s, index %+v", img.config.OS, img.config.Architecture, desc.Platform)
	}

	// The config is the Dockerfile's final stage.
	_, stages := parseDockerfile(t, string(readFile(t, filepath.Join(root, "Dockerfile"))))
	final := stages[len(stages)-1]
	wantLabels := keyValues(t, strings.Join(final.all("LABEL"), " "), vars)
	if d := cmp.Diff(wantLabels, img.config.Config.Labels); d != "" {
		t.Errorf("labels: Dockerfile (-) and the Go-built image (+) differ:\n%s", d)
	}
	wantEnv := keyValues(t, strings.Join(final.all("ENV"), " "), vars)
	gotEnv := map[string]string{}
	for _, e := range img.config.Config.Env {
		k, v, _ := strings.Cut(e, "=")
		gotEnv[k] = v
	}
	if d := cmp.Diff(wantEnv, gotEnv); d != "" {
		t.Errorf("env: Dockerfile (-) and the Go-built image (+) differ:\n%s", d)
	}
	var wantEntry []string
	json.Unmarshal([]byte(final.all("ENTRYPOINT")[0]), &wantEntry)
	if !slices.Equal(img.config.Config.Entrypoint, wantEntry) || img.config.Config.User != final.all("USER")[0] {
		t.Errorf("entrypoint %q user %q; the Dockerfile says %q, %q", img.config.Config.Entrypoint, img.config.Config.User, wantEntry, final.all("USER"))
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.version":          vars["VERSION"],
		"org.opencontainers.image.revision":         vars["REVISION"],
		"io.github.ts-node-agent.tailscale-version": vars["TS_VERSION"],
	} {
		if img.config.Config.Labels[k] != v {
			t.Errorf("label %s=%q, want %q", k, img.config.Config.Labels[k], v)
		}
	}

	// The files are build-static's rootfs, exactly, and the expected ones.
	got := map[string]string{}
	var names []string
	for _, h := range img.layer {
		names = append(names, h.Name)
		kind := map[byte]string{tar.TypeDir: "dir", tar.TypeReg: "file"}[h.Typeflag]
		got[h.Name] = fmt.Sprintf("%s %04o", kind, h.Mode)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: owner %d:%d mtime %v, want 0:0 and the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if d := cmp.Diff(imageFiles, got); d != "" {
		t.Errorf("layer entries (-want +got):\n%s", d)
	}
	if !slices.IsSortedFunc(names, func(a, b string) int {
		return strings.Compare(strings.TrimSuffix(a, "/"), strings.TrimSuffix(b, "/"))
	}) {
		t.Errorf("layer entries are not sorted by path: %q", names)
	}
	staged := map[string]string{}
	filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == rootfs {
			return err
		}
		rel, _ := filepath.Rel(rootfs, p)
		if d.IsDir() {
			rel += "/"
		}
		staged[rel] = got[rel]
		return nil
	})
	if d := cmp.Diff(staged, got); d != "" {
		t.Errorf("the layer and build-static's rootfs (what the Dockerfile copies) differ (-rootfs +layer):\n%s", d)
	}
	if !bytes.Equal(img.content["usr/local/bin/ts-node-agent"], readFile(t, agent)) ||
		!bytes.Equal(img.content["usr/local/bin/tailscaled"], readFile(t, filepath.Join(tsbin, "tailscaled"))) {
		t.Error("the layer's binaries are not the ones build-static staged")
	}
	checkCABundle(t, img.content["etc/ssl/certs/ca-certificates.crt"])
	for file, want := range map[string]string{
		"etc/passwd":        "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
		"etc/group":         "root:x:0:\nnobody:x:65534:\n",
		"etc/nsswitch.conf": "hosts: files dns\n",
	} {
		if string(img.content[file]) != want {
			t.Errorf("%s is %q, want %q", file, img.content[file], want)
		}
	}
}

// checkCABundle: the bundle is Debian's CA certificates: only certificate
// PEM blocks, and many of them.
func checkCABundle(t *testing.T, b []byte) {
	t.Helper()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				t.Errorf("CA bundle: %d bytes that are not PEM after %d certificates", len(rest), n)
			}
			break
		}
		if _, err := x509.ParseCertificate(block.Bytes); block.Type != "CERTIFICATE" || err != nil {
			t.Errorf("CA bundle block %d: %s, %v", n, block.Type, err)
		}
		n++
	}
	if n < 100 {
		t.Errorf("CA bundle has %d certificates, want Debian's ca-certificates (>100)", n)
	}
	if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(b) {
		t.Error("CA bundle: crypto/x509 loads nothing")
	}
}
