package lab

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Prefix starts the name of everything a lab creates: namespaces
// (tsl-<id>-<name>), their /etc/netns/ directories and the lab directory
// (/tmp/tsl-<id>).
const Prefix = "tsl-"

const (
	netnsRunDir = "/run/netns"
	netnsEtcDir = "/etc/netns"
	ownerFile   = "owner"
	keptFile    = "kept" // a closed lab whose directory was kept (Options.KeepDir)
)

// stopTimeout is how long Close lets processes exit after SIGTERM.
const stopTimeout = 5 * time.Second

// baseDir holds the lab directories. Fixed, not $TMPDIR: unix socket paths
// under it must stay short, and CleanupStale must find labs of other runs.
const baseDir = "/tmp"

func labDir(id string) string { return filepath.Join(baseDir, Prefix+id) }

// Close tears the lab down: running Sprays, processes (SIGTERM, then
// SIGKILL after 5 s), any other process still inside a lab namespace
// (SIGKILL), the servers, the namespaces (wan, nodes, pods: everything
// named tsl-<id>-*) with their links, routes and nftables tables
// (DirectWatch's too), /etc/netns entries and, unless Options.KeepDir, the
// lab directory. It then checks that no namespace or process of the lab is
// left and reports what is. Safe to call more than once and from any
// goroutine.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.close() })
	return l.closeErr
}

func (l *Lab) close() error {
	l.mu.Lock()
	l.closed = true
	procs := append([]*Process(nil), l.procs...)
	allNS := append([]*NetNS(nil), l.allNS...)
	sprays := slices.Collect(maps.Keys(l.sprays))
	l.mu.Unlock()
	if l.id == "" {
		return nil
	}
	l.logf("closing lab %s", l.id)
	var errs []error
	for _, sp := range sprays {
		sp.stop()
	}

	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, p := range procs {
		wg.Go(func() {
			if err := p.Stop(stopTimeout); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	wg.Wait()

	if l.control != nil {
		if err := l.control.close(); err != nil {
			errs = append(errs, fmt.Errorf("lab: stop control: %w", err))
		}
	}
	for _, s := range l.echo {
		s.Close()
	}
	for _, ns := range allNS {
		if ns.handle >= 0 {
			ns.handle.Close()
			ns.handle = -1
		}
	}
	if err := destroyLab(l.id, l.opts.KeepDir, l.logf); err != nil {
		errs = append(errs, err)
	}
	if l.opts.KeepDir {
		os.WriteFile(filepath.Join(l.dir, keptFile), nil, 0o644)
		l.logf("kept lab directory %s", l.dir)
	}
	if err := errors.Join(errs...); err != nil {
		l.logf("lab %s closed with errors: %v", l.id, err)
		return err
	}
	l.logf("lab %s closed, nothing left", l.id)
	return nil
}

// CleanupStale removes every lab whose owner process is gone: a run that
// was killed (SIGKILL, Ctrl-C of `go test`, a crash) leaves namespaces,
// processes in them and its directory behind. Labs of live processes
// (for example another test package running in parallel) are left alone.
// New calls it. logf may be nil.
func CleanupStale(logf func(string, ...any)) error { return cleanup(logf, false) }

// CleanupAll removes every lab, including those of live processes. For a
// CI machine between jobs or an operator; never from a test.
func CleanupAll(logf func(string, ...any)) error { return cleanup(logf, true) }

func cleanup(logf func(string, ...any), all bool) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ids, err := findLabIDs()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if !all && fileExists(filepath.Join(labDir(id), keptFile)) {
			// Closed with KeepDir: keep the logs, but remove anything
			// else that might still carry its name.
			if err := destroyLab(id, true, logf); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !all {
			if alive, why := labAlive(id); alive {
				continue
			} else {
				logf("removing stale lab %s (%s)", id, why)
			}
		} else {
			logf("removing lab %s", id)
		}
		if err := destroyLab(id, false, logf); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// findLabIDs collects the ids of every lab that left a trace: namespaces,
// /etc/netns entries, lab directories, or links in this namespace.
func findLabIDs() ([]string, error) {
	seen := map[string]bool{}
	var ids []string
	add := func(name string) {
		if !strings.HasPrefix(name, Prefix) {
			return
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(name, Prefix), "-")
		if id == "" || seen[id] {
			return
		}
		seen[id] = true
		ids = append(ids, id)
	}
	for _, dir := range []string{netnsRunDir, netnsEtcDir, baseDir} {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("lab: cleanup: %w", err)
		}
		for _, e := range ents {
			add(e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("lab: cleanup: list links: %w", err)
	}
	for _, link := range links {
		add(link.Attrs().Name)
	}
	return ids, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeOwner records this process as the owner of the lab in dir.
func writeOwner(dir string) error {
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("lab: owner: %w", err)
	}
	content := fmt.Sprintf("%d %d\n", os.Getpid(), start)
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(content), 0o644); err != nil {
		return fmt.Errorf("lab: owner: %w", err)
	}
	return nil
}

// labAlive reports whether the lab's owner process still runs, and why not.
func labAlive(id string) (bool, string) {
	dir := labDir(id)
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		// A lab being created has its directory for an instant before its
		// owner file: leave fresh directories alone.
		if fi, serr := os.Stat(dir); serr == nil && time.Since(fi.ModTime()) < 30*time.Second {
			return true, ""
		}
		return false, "no owner file"
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false, "bad owner file"
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return false, "bad owner file"
	}
	got, err := procStartTime(pid)
	if err != nil {
		return false, fmt.Sprintf("owner pid %d is gone", pid)
	}
	if got != start {
		return false, fmt.Sprintf("owner pid %d was reused", pid)
	}
	return true, ""
}

// procStartTime is field 22 of /proc/PID/stat (start time in clock ticks
// since boot): with the pid it identifies a process across pid reuse.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may contain spaces and parens
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// labNamespaces lists the names of the lab's namespaces in /run/netns.
func labNamespaces(id string) ([]string, error) {
	ents, err := os.ReadDir(netnsRunDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), Prefix+id+"-") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// nsInode is the inode of a namespace file (/run/netns/NAME or
// /proc/PID/ns/net): equal inodes mean the same namespace.
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pidsInNamespaces lists processes whose network namespace is one of
// inodes (this process excluded).
func pidsInNamespaces(inodes map[uint64]string) map[int]string {
	out := map[int]string{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue // gone, or a zombie
		}
		if ns, ok := inodes[ino]; ok {
			out[pid] = ns
		}
	}
	return out
}

// destroyLab removes everything of lab id: processes in its namespaces
// (SIGKILL), links named after it in this namespace, its namespaces,
// /etc/netns entries and (unless keepDir) its directory. It verifies
// that no namespace or process is left.
func destroyLab(id string, keepDir bool, logf func(string, ...any)) error {
	var errs []error
	names, err := labNamespaces(id)
	if err != nil {
		errs = append(errs, fmt.Errorf("lab %s: list namespaces: %w", id, err))
	}
	inodes := map[uint64]string{}
	for _, name := range names {
		if ino, err := nsInode(filepath.Join(netnsRunDir, name)); err == nil {
			inodes[ino] = name
		}
	}
	if len(inodes) > 0 {
		if err := killInNamespaces(inodes, logf); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: %w", id, err))
		}
	}

	if links, err := netlink.LinkList(); err == nil {
		for _, link := range links {
			if strings.HasPrefix(link.Attrs().Name, Prefix+id+"-") {
				// Deleting one end of a veth deletes its peer too.
				if err := netlink.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
					errs = append(errs, fmt.Errorf("lab %s: delete link %s: %w", id, link.Attrs().Name, err))
				}
			}
		}
	}

	for _, name := range names {
		if err := deleteNamedNS(name); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: delete netns %s: %w", id, name, err))
		}
	}
	if ents, err := os.ReadDir(netnsEtcDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), Prefix+id+"-") {
				if err := os.RemoveAll(filepath.Join(netnsEtcDir, e.Name())); err != nil {
					errs = append(errs, fmt.Errorf("lab %s: %w", id, err))
				}
			}
		}
	}

	// Verify.
	if left, _ := labNamespaces(id); len(left) > 0 {
		errs = append(errs, fmt.Errorf("lab %s: namespaces left: %v", id, left))
	}
	if len(inodes) > 0 {
		if left := pidsInNamespaces(inodes); len(left) > 0 {
			errs = append(errs, fmt.Errorf("lab %s: processes left: %v", id, left))
		}
	}
	if !keepDir && len(errs) == 0 {
		if err := os.RemoveAll(labDir(id)); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: remove directory: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// killInNamespaces SIGKILLs every process in the namespaces and waits up
// to 10 s for them to be gone (processes that are not our children are
// reaped by their parent or init).
func killInNamespaces(inodes map[uint64]string, logf func(string, ...any)) error {
	deadline := time.Now().Add(10 * time.Second)
	logged := map[int]bool{}
	for {
		pids := pidsInNamespaces(inodes)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still running after SIGKILL: %v", pids)
		}
		for pid, ns := range pids {
			if !logged[pid] {
				logged[pid] = true
				logf("killing pid %d (%s) in %s", pid, procComm(pid), ns)
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// deleteNamedNS unmounts and removes /run/netns/NAME. The kernel frees the
// namespace (and its links) once nothing else refers to it.
func deleteNamedNS(name string) error {
	err := netns.DeleteNamed(name)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// Not a mount point (half-created): just remove the file.
	if rerr := os.Remove(filepath.Join(netnsRunDir, name)); rerr == nil || errors.Is(rerr, os.ErrNotExist) {
		return nil
	}
	return err
}
