// Command image builds the ts-node-agent container image without a
// container engine (`make image` falls back to it when docker, podman and
// buildah are all missing; `make image-oci` runs it directly).
//
// It never defines what goes into the image: the files are the root
// filesystem that `make build-static` stages (--rootfs), and the config
// (labels, environment, user, entrypoint) is the final stage of the
// Dockerfile (--dockerfile), read with the same --build-arg values the
// engine gets. It interprets only what that stage may use (FROM scratch,
// ARG, LABEL, ENV, USER, ENTRYPOINT in exec form, one COPY --from=<stage>
// of the rootfs to /) and fails on anything else, so the two ways to build
// the image cannot drift apart silently.
//
// The image has one layer; every entry is owned by 0:0, has mtime 0 (the
// Unix epoch) and a normalized mode (directories 0755, or 1777 when sticky;
// files 0755 when executable, else 0644), and the entries are sorted by
// path, so the same rootfs gives the same layer and image digest with the
// same Go toolchain (gzip output may change between Go releases).
//
// Output: an OCI image layout directory (--layout) and an OCI archive, a
// tarball of that directory (--archive), whose index carries the
// annotation io.containerd.image.name=<--name>, so that
// `ctr -n k8s.io images import` tags the image; org.opencontainers.image.ref.name
// is the tag. It prints the manifest digest and the paths.
//
// Flags:
//
//	--dockerfile   Dockerfile whose final stage is the config (Dockerfile)
//	--rootfs       root filesystem of the layer (out/image)
//	--build-arg    KEY=VALUE for an ARG of the final stage; repeatable
//	--name         fully qualified image name with tag, e.g. ghcr.io/o/n:v1 (required)
//	--platform     os/arch[/variant] of the binaries in the rootfs (linux/<GOARCH>)
//	--layout       OCI layout directory to write; replaced (out/ts-node-agent-oci)
//	--archive      OCI archive to write; empty: none (out/ts-node-agent-oci.tar)
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/pflag"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// options are the command's flags.
type options struct {
	Dockerfile string
	Rootfs     string
	BuildArgs  []string // KEY=VALUE
	Name       string
	Platform   string
	Layout     string
	Archive    string
}

// defaults returns the options `make image-oci` would use.
func defaults() options {
	return options{
		Dockerfile: "Dockerfile",
		Rootfs:     "out/image",
		Platform:   "linux/" + runtime.GOARCH,
		Layout:     "out/ts-node-agent-oci",
		Archive:    "out/ts-node-agent-oci.tar",
	}
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Dockerfile, "dockerfile", o.Dockerfile, "Dockerfile whose final stage is the image config")
	fs.StringVar(&o.Rootfs, "rootfs", o.Rootfs, "root filesystem of the layer (what make build-static stages)")
	fs.StringArrayVar(&o.BuildArgs, "build-arg", o.BuildArgs, "KEY=VALUE for an ARG of the final stage (repeatable)")
	fs.StringVar(&o.Name, "name", o.Name, "fully qualified image name with tag (registry/repository:tag)")
	fs.StringVar(&o.Platform, "platform", o.Platform, "os/arch[/variant] of the binaries in the rootfs")
	fs.StringVar(&o.Layout, "layout", o.Layout, "OCI layout directory to write (replaced)")
	fs.StringVar(&o.Archive, "archive", o.Archive, "OCI archive (tarball of the layout) to write; empty: none")
}

// validate returns every problem with the options at once.
func (o *options) validate() error {
	var errs []error
	for _, f := range []struct{ flag, value string }{
		{"--dockerfile", o.Dockerfile}, {"--rootfs", o.Rootfs}, {"--name", o.Name}, {"--layout", o.Layout},
	} {
		if f.value == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.flag))
		}
	}
	if o.Name != "" {
		// Strict: the registry and the tag are explicit. A short name would
		// be stored as given by ctr, but the kubelet asks for the normalized
		// one (docker.io/library/...), and the pod would not find it.
		if _, err := name.NewTag(o.Name, name.StrictValidation); err != nil {
			errs = append(errs, fmt.Errorf("--name %q: %w (want registry/repository:tag)", o.Name, err))
		}
	}
	if _, err := v1.ParsePlatform(o.Platform); err != nil || !strings.Contains(o.Platform, "/") {
		errs = append(errs, fmt.Errorf("--platform %q: want os/arch[/variant]", o.Platform))
	}
	if _, err := parseBuildArgs(o.BuildArgs); err != nil {
		errs = append(errs, err)
	}
	if o.Archive != "" && o.Archive == o.Layout {
		errs = append(errs, errors.New("--archive and --layout are the same path"))
	}
	return errors.Join(errs...)
}

// parseBuildArgs turns KEY=VALUE flags into a map; a key given twice is an
// error, as it is ambiguous which one the engine would use.
func parseBuildArgs(args []string) (map[string]string, error) {
	m := map[string]string{}
	var errs []error
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		switch _, dup := m[k]; {
		case !ok || k == "":
			errs = append(errs, fmt.Errorf("--build-arg %q: want KEY=VALUE", a))
		case dup:
			errs = append(errs, fmt.Errorf("--build-arg %s given twice", k))
		default:
			m[k] = v
		}
	}
	return m, errors.Join(errs...)
}

func run(args []string, stdout, stderr io.Writer) int {
	o := defaults()
	fs := pflag.NewFlagSet("image", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "image: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := o.validate(); err != nil {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 2
	}
	res, err := build(o)
	if err != nil {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "name:     %s\n", o.Name)
	fmt.Fprintf(stdout, "digest:   %s (manifest, %s)\n", res.Digest, o.Platform)
	fmt.Fprintf(stdout, "layer:    %s (%d entries from %s, %.1f MiB compressed)\n", res.Layer, res.Entries, o.Rootfs, float64(res.LayerSize)/(1<<20))
	fmt.Fprintf(stdout, "layout:   %s\n", o.Layout)
	if o.Archive != "" {
		fmt.Fprintf(stdout, "archive:  %s (sha256:%s)\n", o.Archive, res.ArchiveSHA256)
		fmt.Fprintf(stdout, "load it:  ctr -n k8s.io images import %s\n", o.Archive)
	}
	return 0
}
