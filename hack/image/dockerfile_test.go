package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWords(t *testing.T) {
	vars := map[string]string{"V": "1.2", "EMPTY": ""}
	for _, tt := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: `a=b c="d e"`, want: []string{"a=b", "c=d e"}},
		{in: `  a=b	 c=d  `, want: []string{"a=b", "c=d"}},
		{in: `v="${V}" w=$V x=x$V-y`, want: []string{"v=1.2", "w=1.2", "x=x1.2-y"}},
		{in: `s='$V "q"' t="say \"hi\" \$V \n"`, want: []string{`s=$V "q"`, `t=say "hi" $V \n`}},
		{in: `a\ b=c\"d`, want: []string{`a b=c"d`}},
		{in: `e=$EMPTY u=$UNSET end=$`, want: []string{"e=", "u=", "end=$"}},
		{in: `k=""`, want: []string{"k="}},
		{in: `""`, want: []string{""}},
		{in: `a="b`, err: "unterminated"},
		{in: `a='b`, err: "unterminated"},
		{in: `a=${V:-x}`, err: "only plain"},
		{in: `a=${V`, err: "unterminated ${"},
		{in: `a=${}`, err: "empty"},
	} {
		got, err := words(tt.in, vars)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("words(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || !cmp.Equal(got, tt.want) {
			t.Errorf("words(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if got, _ := words(`a=$V`, nil); !cmp.Equal(got, []string{"a=$V"}) {
		t.Errorf("words without vars expanded: %q", got)
	}
}

// A Dockerfile in the shape of the repository's.
const testDockerfile = `# syntax=docker/dockerfile:1
ARG GO_IMAGE=golang:1.26.8-bookworm
FROM ${GO_IMAGE} AS build
ARG VERSION=dev
RUN make build-static IMAGE_ROOTFS=/out

FROM scratch
ARG VERSION=dev
ARG REVISION
LABEL a="x y" \
      # a comment inside the continuation
      org.example.version="${VERSION}" org.example.revision=$REVISION
ENV PATH=/bin \
    V=$VERSION
ENV PATH=/usr/bin
COPY --from=build /out/ /
USER 0:0
ENTRYPOINT ["/bin/agent", "--flag"]
`

func TestFinalStage(t *testing.T) {
	got, err := finalStage(testDockerfile, map[string]string{"VERSION": "v1"})
	if err != nil {
		t.Fatal(err)
	}
	want := stageSpec{
		Labels:     map[string]string{"a": "x y", "org.example.version": "v1", "org.example.revision": ""},
		Env:        []string{"V=v1", "PATH=/usr/bin"},
		User:       "0:0",
		Entrypoint: []string{"/bin/agent", "--flag"},
		Copy:       "--from=build /out/ /",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("finalStage (-want +got):\n%s", d)
	}
}

func TestFinalStageRefuses(t *testing.T) {
	final := func(lines ...string) string {
		return "FROM golang AS build\nRUN true\nFROM scratch\n" + strings.Join(lines, "\n") + "\n"
	}
	ok := []string{`COPY --from=build /out/ /`, `ENTRYPOINT ["/a"]`}
	for _, tt := range []struct {
		name, src string
		args      map[string]string
		err       string
	}{
		{"base image", "FROM gcr.io/distroless/static\nCOPY --from=b /out/ /\nENTRYPOINT [\"/a\"]\n", nil, "must be FROM scratch"},
		{"no FROM", "LABEL a=b\n", nil, "no FROM"},
		{"RUN", final(append(ok, "RUN true")...), nil, "RUN: not supported"},
		{"WORKDIR", final(append(ok, "WORKDIR /x")...), nil, "WORKDIR: not supported"},
		{"ADD", final(append(ok, "ADD x /")...), nil, "ADD: not supported"},
		{"shell form", final(`COPY --from=build /out/ /`, `ENTRYPOINT /a`), nil, "exec form"},
		{"chown", final(`COPY --chown=1:1 --from=build /out/ /`, `ENTRYPOINT ["/a"]`), nil, "want COPY --from"},
		{"not to /", final(`COPY --from=build /out/ /x`, `ENTRYPOINT ["/a"]`), nil, "want COPY --from"},
		{"two COPY", final(append(ok, `COPY --from=build /etc/ /`)...), nil, "a second COPY"},
		{"no COPY", final(`ENTRYPOINT ["/a"]`), nil, "no COPY"},
		{"no ENTRYPOINT", final(`COPY --from=build /out/ /`), nil, "no ENTRYPOINT"},
		{"legacy ENV", final(append(ok, `ENV A b`)...), nil, "want KEY=VALUE"},
		{"bad quote", final(append(ok, `LABEL a="b`)...), nil, "unterminated"},
		{"undeclared arg", final(ok...), map[string]string{"REVISION": "x"}, "REVISION is not declared"},
		{"continuation at the end", final(append(ok, `LABEL a=b \`)...), nil, "line continuation"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := finalStage(tt.src, tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("finalStage: %v, want an error with %q", err, tt.err)
			}
		})
	}
}

// TestRepoDockerfile: hack/image understands the repository's Dockerfile,
// with the build args `make image` passes.
func TestRepoDockerfile(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := finalStage(string(src), map[string]string{"VERSION": "v9.9.9", "TS_VERSION": "v1.2.3", "REVISION": "abc"})
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(spec.Entrypoint, []string{"/usr/local/bin/ts-node-agent"}) || spec.User != "0:0" {
		t.Errorf("entrypoint %q, user %q", spec.Entrypoint, spec.User)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.version":          "v9.9.9",
		"org.opencontainers.image.revision":         "abc",
		"io.github.ts-node-agent.tailscale-version": "v1.2.3",
	} {
		if spec.Labels[k] != v {
			t.Errorf("label %s=%q, want %q", k, spec.Labels[k], v)
		}
	}
}
