package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ts-node-agent/ts-node-agent/test/apiserver"
)

const cgroupMount = "/sys/fs/cgroup"

// cgroupDirs returns the directories of root (a kubelet's cgroupRoot) in
// every cgroup v1 hierarchy it exists in, deepest first.
func cgroupDirs(root string) []string {
	var dirs []string
	hier, _ := os.ReadDir(cgroupMount)
	for _, h := range hier {
		base := filepath.Join(cgroupMount, h.Name(), root)
		filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return dirs
}

// makeCgroupRoot creates root in every cgroup v1 hierarchy (kubelet
// refuses a cgroupRoot that is missing in one), with the parent's CPUs
// and memory nodes in cpuset (a new cpuset has none).
func makeCgroupRoot(root string) error {
	hier, err := os.ReadDir(cgroupMount)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	for _, h := range hier {
		if h.Name() == "unified" || !h.IsDir() {
			continue
		}
		d := filepath.Join(cgroupMount, h.Name(), root)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cluster: cgroup %s: %w", d, err)
		}
		if h.Name() == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(cgroupMount, h.Name(), f))
				if err == nil {
					err = os.WriteFile(filepath.Join(d, f), b, 0o644)
				}
				if err != nil {
					return fmt.Errorf("cluster: cgroup %s: %s: %w", d, f, err)
				}
			}
		}
	}
	return nil
}

// killCgroupTree SIGKILLs every process in root's cgroups (the pods'
// containers, which outlive kubelet and containerd) until none is left.
func killCgroupTree(root string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var pids []int
		for _, d := range cgroupDirs(root) {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				continue
			}
			for f := range strings.FieldsSeq(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: processes %v in cgroup %s survive SIGKILL", pids, root)
		}
		// A frozen cgroup would hold a killed process forever.
		for _, d := range cgroupDirs(root) {
			if strings.Contains(d, "/freezer/") {
				os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
			}
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroupTree removes root's (now empty) cgroups.
func removeCgroupTree(root string) error {
	var errs []error
	for _, d := range cgroupDirs(root) {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("cluster: rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// killNetNSProcesses SIGKILLs every process in the node's network
// namespace except keep (the mount namespace's holder): containerd's
// shims, which leave containerd's process group, and the containers of
// hostNetwork pods if their cgroups were missed.
func (n *Node) killNetNSProcesses(keep int) error {
	out, err := exec.Command("ip", "netns", "pids", n.NSName()).Output()
	if err != nil {
		return nil // the namespace is gone: so are its processes
	}
	self := os.Getpid()
	for f := range strings.FieldsSeq(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == keep || pid == self {
			continue
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}

func tail(path string, n int) string { return apiserver.Tail(path, n) }

// RepoRoot is the directory holding the main module's go.mod, found
// upwards from the working directory.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/ts-node-agent/ts-node-agent\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("cluster: the repository root is not above %s", wd)
		}
		dir = parent
	}
}

// buildLabPodImage builds labpod (static) and packages it with hack/image
// and labpod/Dockerfile, as `make image-oci` packages the agent, into an
// OCI archive tagged LabPodImage; it returns the archive's path.
func (c *Cluster) buildLabPodImage(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.dir, "labpod-image")
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	archive := filepath.Join(dir, "labpod-oci.tar")
	for _, argv := range [][]string{
		{"go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(rootfs, "labpod"), "./test/cluster/labpod"},
		{"go", "run", "./hack/image", "--dockerfile", "test/cluster/labpod/Dockerfile", "--rootfs", rootfs,
			"--platform", "linux/" + runtime.GOARCH, "--name", LabPodImage,
			"--layout", filepath.Join(dir, "layout"), "--archive", archive},
	} {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("cluster: lab pod image: %q: %w\n%s", argv, err, out)
		}
	}
	return archive, nil
}
