package deploy_test

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"go/version"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

type stage struct {
	from, name string
	instrs     []instruction
}

// parseDockerfile returns the ARGs before the first FROM (with their
// defaults) and the stages. It knows what this Dockerfile uses: comments,
// line continuations, FROM ... AS name.
func parseDockerfile(t *testing.T, src string) (map[string]string, []stage) {
	t.Helper()
	var instrs []instruction
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		cont := strings.HasSuffix(trimmed, "\\")
		cur.WriteString(strings.TrimSuffix(trimmed, "\\"))
		cur.WriteString(" ")
		if cont {
			continue
		}
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		instrs = append(instrs, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	globals := map[string]string{}
	var stages []stage
	for _, in := range instrs {
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			var s stage
			for _, w := range f {
				if !strings.HasPrefix(w, "--") {
					s.from = os.Expand(w, func(k string) string { return globals[k] })
					break
				}
			}
			if len(f) >= 2 && strings.EqualFold(f[len(f)-2], "AS") {
				s.name = f[len(f)-1]
			}
			stages = append(stages, s)
		case len(stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			globals[k] = v
		case len(stages) > 0:
			stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		}
	}
	return globals, stages
}

func (s stage) all(cmd string) []string {
	var out []string
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// argDefault returns the default of ARG name in the stage.
func (s stage) argDefault(name string) (string, bool) {
	for _, a := range s.all("ARG") {
		if k, v, ok := strings.Cut(a, "="); k == name {
			return v, ok
		}
	}
	return "", false
}

var goImage = regexp.MustCompile(`^golang:(1\.\d+\.\d+)(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?$`)

// TestDockerfile: a builder stage that runs the Makefile's build-static
// target (so the Go build commands exist only in the Makefile), a pinned Go
// image at least as new as go.mod's go line, a final stage FROM scratch that
// copies build-static's rootfs and nothing else and uses only what
// hack/image also understands, version build args and OCI labels, root, the
// agent as entrypoint.
func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	_, stages := parseDockerfile(t, string(readFile(t, filepath.Join(root, "Dockerfile"))))
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a builder and a final stage", len(stages))
	}
	mod, err := modfile.Parse("go.mod", readFile(t, filepath.Join(root, "go.mod")), nil)
	if err != nil {
		t.Fatal(err)
	}
	var tsVersion string
	for _, r := range mod.Require {
		if r.Mod.Path == "tailscale.com" {
			tsVersion = r.Mod.Version
		}
	}

	build, final := stages[0], stages[len(stages)-1]
	t.Run("builder", func(t *testing.T) {
		m := goImage.FindStringSubmatch(build.from)
		if m == nil {
			t.Fatalf("builder image %q: want golang:<exact patch version>[-variant][@sha256:...]", build.from)
		}
		if version.Compare("go"+m[1], "go"+mod.Go.Version) < 0 {
			t.Errorf("builder Go %s is older than go.mod's go %s", m[1], mod.Go.Version)
		}
		runs := build.all("RUN")
		if !slices.ContainsFunc(runs, func(r string) bool { return regexp.MustCompile(`\bmake build-static\b`).MatchString(r) }) {
			t.Errorf("no RUN of `make build-static` in the builder: the image must be built by the Makefile's commands (RUN lines: %q)", runs)
		}
		for _, r := range runs {
			if regexp.MustCompile(`\bgo (build|install)\b`).MatchString(r) {
				t.Errorf("RUN %q builds Go itself: keep the build commands in the Makefile", r)
			}
		}
		if v, _ := build.argDefault("TS_VERSION"); v != tsVersion {
			t.Errorf("ARG TS_VERSION=%s, but go.mod pins tailscale.com %s", v, tsVersion)
		}
		if _, ok := build.argDefault("VERSION"); !ok {
			t.Error("no ARG VERSION in the builder")
		}
	})
	t.Run("final", func(t *testing.T) {
		// No base image: the rootfs is the whole image, so that the image
		// hack/image builds without an engine (and without a registry to
		// pull a base from) holds the same files.
		if final.from != "scratch" {
			t.Errorf("final image %q, want scratch (build-static stages the whole rootfs)", final.from)
		}
		for _, in := range final.instrs {
			if !slices.Contains([]string{"ARG", "LABEL", "ENV", "USER", "ENTRYPOINT", "COPY"}, in.cmd) {
				t.Errorf("%s %s in the final stage: hack/image (make image without an engine) does not understand it", in.cmd, in.args)
			}
		}
		var entry []string
		if e := final.all("ENTRYPOINT"); len(e) != 1 || json.Unmarshal([]byte(e[0]), &entry) != nil {
			t.Errorf("ENTRYPOINT %q: want exactly one, in exec form", e)
		}
		if !slices.Equal(entry, []string{"/usr/local/bin/ts-node-agent"}) {
			t.Errorf("ENTRYPOINT %q, want [/usr/local/bin/ts-node-agent]", entry)
		}
		if u := final.all("USER"); !slices.Equal(u, []string{"0:0"}) {
			t.Errorf("USER %q, want 0:0 (the agent needs root)", u)
		}
		if c := final.all("COPY"); !slices.Equal(c, []string{"--from=" + build.name + " /out/ /"}) {
			t.Errorf("COPY %q: want only the builder's /out (what build-static stages), to /", c)
		}
		env := keyValues(t, strings.Join(final.all("ENV"), " "), nil)
		for k, v := range map[string]string{"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"} {
			if env[k] != v {
				t.Errorf("ENV %s=%q, want %q", k, env[k], v)
			}
		}
		labels := keyValues(t, strings.Join(final.all("LABEL"), " "), nil)
		for _, l := range []string{"source", "version", "revision", "licenses", "title", "description"} {
			if labels["org.opencontainers.image."+l] == "" {
				t.Errorf("no OCI label org.opencontainers.image.%s", l)
			}
		}
		for l, v := range map[string]string{
			"org.opencontainers.image.version":          "${VERSION}",
			"org.opencontainers.image.revision":         "${REVISION}",
			"io.github.ts-node-agent.tailscale-version": "${TS_VERSION}",
		} {
			if labels[l] != v {
				t.Errorf("LABEL %s=%q, want %q", l, labels[l], v)
			}
		}
		for _, a := range []string{"VERSION", "TS_VERSION", "REVISION"} {
			if _, ok := final.argDefault(a); !ok {
				t.Errorf("no ARG %s in the final stage (labels)", a)
			}
		}
		if v, _ := final.argDefault("TS_VERSION"); v != tsVersion {
			t.Errorf("final ARG TS_VERSION=%s, but go.mod pins tailscale.com %s", v, tsVersion)
		}
	})
	t.Run("dockerignore", func(t *testing.T) {
		ignored := map[string]bool{}
		for _, l := range strings.Split(string(readFile(t, filepath.Join(root, ".dockerignore"))), "\n") {
			ignored[strings.Trim(strings.TrimSpace(l), "/")] = true
		}
		// A stale bin/tailscale-*/.done from the host would make
		// build-static skip building tailscaled for the image.
		for _, p := range []string{"bin", "out", ".git"} {
			if !ignored[p] {
				t.Errorf(".dockerignore does not exclude %s", p)
			}
		}
	})
}

// cleanMakeEnv is the environment for a nested make: without the parent
// make's flags (jobserver, -k) and with PATH replaced when path != "".
func cleanMakeEnv(path string) []string {
	var env []string
	for _, e := range os.Environ() {
		k, _, _ := strings.Cut(e, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES":
			continue
		case "PATH":
			if path != "" {
				continue
			}
		}
		env = append(env, e)
	}
	if path != "" {
		env = append(env, "PATH="+path)
	}
	return env
}

// TestMakeBuildStatic runs `make build-static` as the Dockerfile does, but
// into temporary directories (AGENT, TSBIN and IMAGE_ROOTFS overridden, so
// bin/ is not touched): it must build the agent and tailscaled with
// CGO_ENABLED=0 and -trimpath (the build target's commands), stage both
// where the Dockerfile copies them from, and the staged binaries must be
// static and run. With -short it only checks the commands (make -n).
func TestMakeBuildStatic(t *testing.T) {
	root := repoRoot(t)
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs")
	args := []string{"build-static", "AGENT=" + filepath.Join(tmp, "ts-node-agent"), "TSBIN=" + filepath.Join(tmp, "tailscale"),
		"IMAGE_ROOTFS=" + rootfs, "CA_BUNDLE=" + filepath.Join(tmp, "ca.crt")}
	if testing.Short() {
		args = append([]string{"-n"}, args...)
	}
	cmd := exec.Command("make", args...)
	cmd.Dir = root
	cmd.Env = cleanMakeEnv("")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	q := regexp.QuoteMeta
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^CGO_ENABLED=0 \S*go build -trimpath .*-o ` + q(filepath.Join(tmp, "ts-node-agent")) + ` \./cmd/ts-node-agent$`),
		// Stamped: unstamped, tailscaled says 1.102.5-ERR-BuildInfo.
		regexp.MustCompile(`(?m)^CGO_ENABLED=0 \S*go build -trimpath -ldflags '-X tailscale\.com/version\.longStamp=\S+ -X tailscale\.com/version\.shortStamp=\S+' .*tailscale\.com/cmd/tailscaled\b`),
		regexp.MustCompile(`(?m)^install .* ` + q(rootfs+"/usr/local/bin/ts-node-agent") + `$`),
		regexp.MustCompile(`(?m)^install .*/tailscaled ` + q(rootfs+"/usr/local/bin/tailscaled") + `$`),
		regexp.MustCompile(`(?m)^install .* ` + q(rootfs+"/etc/ssl/certs/ca-certificates.crt") + `$`),
		regexp.MustCompile(`(?m)^install -d -m 1777 ` + q(rootfs+"/tmp") + `$`),
	} {
		if !want.Match(out) {
			t.Errorf("make build-static does not run %s:\n%s", want, out)
		}
	}
	if testing.Short() {
		return
	}
	for _, name := range []string{"ts-node-agent", "tailscaled"} {
		b := filepath.Join(rootfs, "usr", "local", "bin", name)
		f, err := elf.Open(b)
		if err != nil {
			t.Errorf("%s: %v", b, err)
			continue
		}
		libs, _ := f.ImportedLibraries()
		interp := slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP })
		f.Close()
		if interp || len(libs) > 0 {
			t.Errorf("%s is dynamically linked (%v): the image has no libc", name, libs)
		}
	}
	help, err := exec.Command(filepath.Join(rootfs, "usr", "local", "bin", "ts-node-agent"), "--help").CombinedOutput()
	if err != nil || !bytes.Contains(help, []byte("Usage: ts-node-agent")) {
		t.Errorf("the staged agent does not run: %v\n%s", err, help)
	}
}

// fakeEngines writes docker, podman and buildah scripts into a new
// directory: `info` exits with infoStatus, anything else appends its
// arguments to log.
func fakeEngines(t *testing.T, infoStatus map[string]int, log string) string {
	t.Helper()
	dir := t.TempDir()
	for _, e := range []string{"docker", "podman", "buildah"} {
		script := "#!/bin/sh\nif [ \"$1\" = info ]; then exit " + itoa(infoStatus[e]) + "; fi\necho \"$0 $*\" >> " + log + "\n"
		if err := os.WriteFile(filepath.Join(dir, e), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func itoa(i int) string { return strconv.Itoa(i) }

func runMakeImage(t *testing.T, bindir string, args ...string) (string, error) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		testenv.SkipOrFail(t, "go not in PATH")
	}
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(makeBin, append([]string{"image", "GO=" + goBin}, args...)...)
	cmd.Dir = repoRoot(t)
	// The fake engines shadow any real one; git stays reachable for REVISION.
	cmd.Env = cleanMakeEnv(bindir + ":/usr/bin:/bin")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// TestMakeImageWithoutEngine: with no reachable container engine `make
// image` says so and builds with the Go builder (make image-oci) instead:
// a dry run (make -n) shows the commands, no engine is called.
// TestMakeImageOCI runs image-oci for real.
func TestMakeImageWithoutEngine(t *testing.T) {
	log := filepath.Join(t.TempDir(), "calls")
	out, err := runMakeImage(t, fakeEngines(t, map[string]int{"docker": 1, "podman": 1, "buildah": 1}, log), "-n", "IMAGE=registry.example.com/tsna:test")
	if err != nil {
		t.Fatalf("make -n image without a container engine: %v\n%s", err, out)
	}
	for _, want := range []string{"no container engine", "hack/image (make image-oci)"} {
		if !strings.Contains(out, want) {
			t.Errorf("make image output does not say %q:\n%s", want, out)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^install .* out/image/usr/local/bin/ts-node-agent$`),
		regexp.MustCompile(`(?m)go run \./hack/image --dockerfile Dockerfile `),
		regexp.MustCompile(`(?m)--rootfs 'out/image' .*--build-arg TS_VERSION='v\S+' --build-arg REVISION=`),
		regexp.MustCompile(`(?m)--name 'registry\.example\.com/tsna:test' --layout 'out/ts-node-agent-oci' --archive 'out/ts-node-agent-oci\.tar'$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("make -n image does not run %s:\n%s", want, out)
		}
	}
	if b, _ := os.ReadFile(log); len(b) > 0 {
		t.Errorf("an engine was called although none is reachable: %s", b)
	}
}

// TestMakeImageWithEngine: with a reachable engine `make image` builds the
// Dockerfile with the version build args.
func TestMakeImageWithEngine(t *testing.T) {
	log := filepath.Join(t.TempDir(), "calls")
	out, err := runMakeImage(t, fakeEngines(t, map[string]int{"docker": 1, "podman": 0, "buildah": 0}, log))
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	if !strings.Contains(out, "make image: building the Dockerfile with podman") {
		t.Errorf("make image does not say which engine it uses:\n%s", out)
	}
	calls := string(readFile(t, log))
	mod, err := modfile.Parse("go.mod", readFile(t, filepath.Join(repoRoot(t), "go.mod")), nil)
	if err != nil {
		t.Fatal(err)
	}
	tsVersion := ""
	for _, r := range mod.Require {
		if r.Mod.Path == "tailscale.com" {
			tsVersion = r.Mod.Version
		}
	}
	for _, want := range []string{
		"/podman build -f Dockerfile -t ghcr.io/ts-node-agent/ts-node-agent:",
		"--build-arg VERSION=",
		"--build-arg TS_VERSION=" + tsVersion + " ",
		"--build-arg REVISION=",
	} {
		if !strings.Contains(calls, want) {
			t.Errorf("make image ran %q, want it to contain %q", calls, want)
		}
	}
	if strings.Contains(calls, "/buildah") || strings.Contains(calls, "/docker") {
		t.Errorf("more than one engine ran: %q", calls)
	}
}
