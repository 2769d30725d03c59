package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The annotations of the image's descriptor in the layout's index.json.
const (
	// annotationImageName is what `ctr images import` names the image.
	annotationImageName = "io.containerd.image.name"
	// annotationRefName is the OCI layout's own name for it: the tag.
	annotationRefName = "org.opencontainers.image.ref.name"
)

// result is what build made.
type result struct {
	Digest        v1.Hash // of the manifest
	Layer         v1.Hash // of the compressed layer
	LayerSize     int64
	Entries       int
	ArchiveSHA256 string // hex, when an archive was written
}

// build makes the image from o and writes the layout and the archive.
func build(o options) (result, error) {
	var res result
	src, err := os.ReadFile(o.Dockerfile)
	if err != nil {
		return res, err
	}
	args, err := parseBuildArgs(o.BuildArgs)
	if err != nil {
		return res, err
	}
	spec, err := finalStage(string(src), args)
	if err != nil {
		return res, fmt.Errorf("%s: %w", o.Dockerfile, err)
	}
	platform, err := v1.ParsePlatform(o.Platform)
	if err != nil {
		return res, err
	}
	entries, err := treeEntries(o.Rootfs)
	if err != nil {
		return res, fmt.Errorf("rootfs: %w", err)
	}
	if err := checkEntrypoint(entries, spec.Entrypoint[0]); err != nil {
		return res, fmt.Errorf("rootfs %s: %w", o.Rootfs, err)
	}
	img, err := image(spec, entries, *platform)
	if err != nil {
		return res, err
	}
	tag, err := name.NewTag(o.Name, name.StrictValidation)
	if err != nil {
		return res, err
	}
	if err := writeLayout(o.Layout, img, tag, *platform); err != nil {
		return res, fmt.Errorf("layout %s: %w", o.Layout, err)
	}
	if o.Archive != "" {
		if res.ArchiveSHA256, err = writeArchive(o.Archive, o.Layout); err != nil {
			return res, fmt.Errorf("archive %s: %w", o.Archive, err)
		}
	}
	if res.Digest, err = img.Digest(); err != nil {
		return res, err
	}
	layers, err := img.Layers()
	if err != nil {
		return res, err
	}
	if res.Layer, err = layers[0].Digest(); err != nil {
		return res, err
	}
	if res.LayerSize, err = layers[0].Size(); err != nil {
		return res, err
	}
	res.Entries = len(entries)
	return res, nil
}

// checkEntrypoint fails when the entrypoint is not an executable file of
// the rootfs: an image that cannot start is better refused here.
func checkEntrypoint(entries []entry, entrypoint string) error {
	want := strings.TrimPrefix(path.Clean(entrypoint), "/")
	for _, e := range entries {
		if e.hdr.Name == want {
			if e.hdr.Mode&0o111 == 0 {
				return fmt.Errorf("the entrypoint %s is not executable", entrypoint)
			}
			return nil
		}
	}
	return fmt.Errorf("no entrypoint %s (run make build-static)", entrypoint)
}

// image assembles the OCI image: one layer of entries, the config of spec.
func image(spec stageSpec, entries []entry, platform v1.Platform) (v1.Image, error) {
	var layerTar bytes.Buffer
	if err := writeTar(&layerTar, entries); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "COPY " + spec.Copy + " # hack/image",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: epoch}
	cf.OS, cf.Architecture, cf.Variant, cf.OSVersion = platform.OS, platform.Architecture, platform.Variant, platform.OSVersion
	cf.Config = v1.Config{
		Entrypoint: spec.Entrypoint,
		User:       spec.User,
		Env:        spec.Env,
		Labels:     spec.Labels,
	}
	return mutate.ConfigFile(img, cf)
}

// writeLayout writes a fresh OCI layout with img as its only manifest,
// next to dir, and then replaces dir with it: no blob of an older build
// stays behind, and a failed build leaves the old layout alone.
func writeLayout(dir string, img v1.Image, tag name.Tag, platform v1.Platform) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return err
	}
	if err := p.WriteImage(img); err != nil {
		return err
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return err
	}
	// go-containerregistry fills in artifactType from the config's media
	// type; that field is for artifacts, and this is a plain image.
	desc.ArtifactType = ""
	desc.Platform = &platform
	desc.Annotations = map[string]string{
		annotationImageName: tag.String(),
		annotationRefName:   tag.TagStr(),
	}
	if err := p.AppendDescriptor(*desc); err != nil {
		return err
	}
	// The layout's files are data: 0644 (go-containerregistry writes
	// index.json 0777 &^ umask and blobs 0600), directories 0755.
	err = filepath.WalkDir(tmp, func(file string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.Chmod(file, 0o755)
		}
		return os.Chmod(file, 0o644)
	})
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// writeArchive writes the OCI archive of the layout dir to file (entries
// as reproducible as the layer's) and returns its sha256.
func writeArchive(file, dir string) (string, error) {
	entries, err := treeEntries(dir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+"-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	if err := writeTar(io.MultiWriter(f, h), entries); err != nil {
		return "", err
	}
	if err := f.Chmod(0o644); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), file); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
