package hostnet

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEnsureTUNDeviceCreates(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "dev", "net", "tun")
	err := EnsureTUNDevice(path)

	var st unix.Stat_t
	if serr := unix.Stat(path, &st); serr != nil {
		t.Fatalf("device node not created: %v (EnsureTUNDevice: %v)", serr, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Errorf("mode %#o is not a character device", st.Mode)
	}
	if maj, mnr := unix.Major(st.Rdev), unix.Minor(st.Rdev); maj != 10 || mnr != 200 {
		t.Errorf("device %d:%d, want 10:200", maj, mnr)
	}
	if perm := st.Mode & 0o777; perm != 0o600 {
		t.Errorf("permissions %#o, want 0600", perm)
	}
	if fi, serr := os.Stat(filepath.Dir(path)); serr != nil || !fi.IsDir() {
		t.Errorf("parent directory not created: %v", serr)
	}

	// Opening the node proves the kernel has TUN, except on a nodev
	// filesystem, where no device can be opened: that must be said.
	if isNodev(filepath.Dir(path)) {
		if err == nil || !strings.Contains(err.Error(), "nodev") {
			t.Errorf("on a nodev temp dir: %v, want an error saying nodev", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("EnsureTUNDevice: %v", err)
	}
	// An existing, correct node is fine.
	if err := EnsureTUNDevice(path); err != nil {
		t.Errorf("EnsureTUNDevice on the existing node: %v", err)
	}
}

func TestEnsureTUNDeviceNotADevice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tun")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := EnsureTUNDevice(path)
	if err == nil || !strings.Contains(err.Error(), "not a character device") || !strings.Contains(err.Error(), "10:200") {
		t.Errorf("EnsureTUNDevice on a regular file: %v", err)
	}
	dir := t.TempDir()
	if err := EnsureTUNDevice(dir); err == nil || !strings.Contains(err.Error(), "not a character device") {
		t.Errorf("EnsureTUNDevice on a directory: %v", err)
	}
}

func TestEnsureTUNDeviceWrongDevice(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "tun")
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	err := EnsureTUNDevice(path)
	if err == nil || !strings.Contains(err.Error(), "character device 1:3, want the TUN device 10:200") {
		t.Errorf("EnsureTUNDevice on /dev/null's numbers: %v", err)
	}
}

func TestEnsureTUNDeviceWithoutCapMknod(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "dev", "net", "tun")
	var err error
	if terr := onThrowawayThread(func() error {
		if err := dropCap(unix.CAP_MKNOD); err != nil {
			return err
		}
		err = EnsureTUNDevice(path)
		return nil
	}); terr != nil {
		t.Fatal(terr)
	}
	if err == nil || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_MKNOD") {
		t.Errorf("EnsureTUNDevice without CAP_MKNOD: %v, want EPERM naming CAP_MKNOD", err)
	}
}

// deviceDir is a temporary directory where device nodes can be opened:
// on a machine whose temp dir is nodev (a tmpfs /tmp often is), a tmpfs
// without nodev is mounted on it for the test.
func deviceDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if !isNodev(dir) {
		return dir
	}
	if err := unix.Mount("tsna-test-dev", dir, "tmpfs", unix.MS_NOSUID, "mode=0700"); err != nil {
		t.Fatalf("the temp dir is nodev, and a tmpfs for devices cannot be mounted on it: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if isNodev(dir) {
		t.Fatalf("%s is still nodev after mounting a tmpfs on it", dir)
	}
	return dir
}

func TestEnsureTUNDeviceWithoutCapNetAdmin(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(deviceDir(t), "tun")
	var err error
	if terr := onThrowawayThread(func() error {
		if err := dropCap(unix.CAP_NET_ADMIN); err != nil {
			return err
		}
		err = EnsureTUNDevice(path)
		return nil
	}); terr != nil {
		t.Fatal(terr)
	}
	if err == nil || !strings.Contains(err.Error(), "CAP_NET_ADMIN") || !strings.Contains(err.Error(), `capabilities.add: ["NET_ADMIN"]`) {
		t.Errorf("EnsureTUNDevice without CAP_NET_ADMIN: %v", err)
	}
}

func TestExplainTUNOpenErr(t *testing.T) {
	const path = "/dev/net/tun"
	tests := []struct {
		err   error
		nodev bool
		want  []string
	}{
		{unix.ENODEV, false, []string{"kernel lacks TUN support", "modprobe tun", "userspace-networking"}},
		{unix.ENXIO, false, []string{"kernel lacks TUN support", "modprobe tun"}},
		{unix.EPERM, false, []string{"CAP_NET_ADMIN", "10:200", "privileged: true"}},
		{unix.EACCES, false, []string{"CAP_NET_ADMIN"}},
		{unix.EACCES, true, []string{"nodev", "hostPath", "CharDevice"}},
		{unix.EIO, false, []string{"open TUN device /dev/net/tun", "input/output error"}},
	}
	for _, tt := range tests {
		err := explainTUNOpenErr(path, &os.PathError{Op: "open", Path: path, Err: tt.err}, tt.nodev)
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v (nodev %v): %q lacks %q", tt.err, tt.nodev, err, w)
			}
		}
		if !errors.Is(err, tt.err) {
			t.Errorf("%v: explained error does not wrap it", tt.err)
		}
	}
}

// TestEnsureTUNDeviceNodev: on a filesystem mounted nodev the node can be
// created but not opened, and the error says why. The tmpfs is mounted in
// a private mount namespace of a throw-away thread.
func TestEnsureTUNDeviceNodev(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	var err error
	if terr := onThrowawayThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			return err
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NODEV, ""); err != nil {
			return err
		}
		err = EnsureTUNDevice(filepath.Join(dir, "dev", "net", "tun"))
		return nil
	}); terr != nil {
		t.Fatal(terr)
	}
	if err == nil || !strings.Contains(err.Error(), "mounted nodev") {
		t.Errorf("EnsureTUNDevice on a nodev filesystem: %v", err)
	}
}
