package main

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// epoch is every entry's mtime, and the image's creation time.
var epoch = time.Unix(0, 0).UTC()

// entry is one file of a tree to archive.
type entry struct {
	hdr  tar.Header
	path string // on disk, for regular files
}

// treeEntries lists dir's contents as tar entries, reproducibly: sorted by
// path, owned by 0:0, mtime 0, and a mode that depends only on the kind of
// file (directories 0755, or 1777 when sticky; regular files 0755 when the
// owner may execute them, else 0644; symlinks 0777), not on umask or on who
// staged the tree. setuid, setgid and special files are refused: nothing
// in the image needs them.
func treeEntries(dir string) ([]entry, error) {
	var out []entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		m := fi.Mode()
		if m&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			return fmt.Errorf("%s: setuid or setgid (%v)", p, m)
		}
		e := entry{hdr: tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch}}
		switch {
		case m.IsDir():
			e.hdr.Typeflag, e.hdr.Name, e.hdr.Mode = tar.TypeDir, e.hdr.Name+"/", 0o755
			if m&fs.ModeSticky != 0 {
				e.hdr.Mode = 0o1777
			}
		case m.IsRegular():
			e.hdr.Typeflag, e.hdr.Size, e.hdr.Mode, e.path = tar.TypeReg, fi.Size(), 0o644, p
			if m.Perm()&0o100 != 0 {
				e.hdr.Mode = 0o755
			}
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.hdr.Typeflag, e.hdr.Linkname, e.hdr.Mode = tar.TypeSymlink, target, 0o777
		default:
			return fmt.Errorf("%s: not a directory, regular file or symlink (%v)", p, m)
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// WalkDir gives a, a/c, a-b (it enters a before it visits a-b); the
	// layer lists full paths in order: a, a-b, a/c.
	slices.SortFunc(out, func(a, b entry) int {
		return strings.Compare(strings.TrimSuffix(a.hdr.Name, "/"), strings.TrimSuffix(b.hdr.Name, "/"))
	})
	return out, nil
}

// writeTar writes entries as a tar stream to w. A file that changed size
// since it was listed is an error rather than a corrupt archive.
func writeTar(w io.Writer, entries []entry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		hdr := e.hdr
		if err := tw.WriteHeader(&hdr); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		if err := copyFile(tw, e.path, hdr.Size); err != nil {
			return err
		}
	}
	return tw.Close()
}

func copyFile(w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if n != size {
		return fmt.Errorf("%s: changed while archiving (%d bytes, listed as %d)", path, n, size)
	}
	return nil
}
