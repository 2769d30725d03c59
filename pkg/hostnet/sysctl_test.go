package hostnet

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProcSys makes a directory shaped like /proc/sys with the forwarding
// sysctls set to v4 and v6 ("" leaves that file out).
func fakeProcSys(t *testing.T, v4, v6 string) string {
	t.Helper()
	root := t.TempDir()
	for key, v := range map[string]string{SysctlIPv4Forward: v4, SysctlIPv6Forward: v6} {
		if v == "" {
			continue
		}
		p := sysctlPath(root, key)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readKey(t *testing.T, root, key string) string {
	t.Helper()
	v, err := readSysctl(root, key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// forwardingOff turns IPv4 and IPv6 forwarding off under procSys: test
// setup only, the agent never does it.
func forwardingOff(procSys string) error {
	for _, key := range []string{SysctlIPv4Forward, SysctlIPv6Forward} {
		if _, err := setSysctl(procSys, key, false); err != nil {
			return err
		}
	}
	return nil
}

func TestEnableForwarding(t *testing.T) {
	root := fakeProcSys(t, "0", "0")
	changed, err := EnableForwarding(root)
	if err != nil {
		t.Fatal(err)
	}
	if changed != (Forwarding{IPv4: true, IPv6: true}) {
		t.Errorf("changed = %+v, want both", changed)
	}
	if v4, v6 := readKey(t, root, SysctlIPv4Forward), readKey(t, root, SysctlIPv6Forward); v4 != "1" || v6 != "1" {
		t.Errorf("after enable: %s=%s %s=%s, want 1 1", SysctlIPv4Forward, v4, SysctlIPv6Forward, v6)
	}
	// Enabling again changes nothing, so it claims nothing.
	again, err := EnableForwarding(root)
	if err != nil || again.Any() {
		t.Errorf("second enable = %+v, %v; want nothing changed", again, err)
	}
}

func TestEnableForwardingTouchesOnlyWhatIsOff(t *testing.T) {
	root := fakeProcSys(t, "1", "0")
	changed, err := EnableForwarding(root)
	if err != nil {
		t.Fatal(err)
	}
	if changed != (Forwarding{IPv6: true}) {
		t.Fatalf("changed = %+v, want IPv6 only", changed)
	}
	if v4, v6 := readKey(t, root, SysctlIPv4Forward), readKey(t, root, SysctlIPv6Forward); v4 != "1" || v6 != "1" {
		t.Errorf("after enable: %s=%s %s=%s, want 1 1", SysctlIPv4Forward, v4, SysctlIPv6Forward, v6)
	}
}

func TestForwardingWithoutIPv6(t *testing.T) {
	root := fakeProcSys(t, "0", "")
	changed, err := EnableForwarding(root)
	if err != nil {
		t.Fatal(err)
	}
	if changed != (Forwarding{IPv4: true}) {
		t.Errorf("changed = %+v, want IPv4 only", changed)
	}
	st, err := ReadForwarding(root)
	if err != nil {
		t.Fatal(err)
	}
	if st != (ForwardingState{IPv4: true, IPv6Missing: true}) {
		t.Errorf("ReadForwarding = %+v", st)
	}
}

func TestForwardingWithoutProcSys(t *testing.T) {
	root := t.TempDir()
	if _, err := EnableForwarding(root); err == nil || !strings.Contains(err.Error(), SysctlIPv4Forward) {
		t.Errorf("EnableForwarding on an empty root: %v, want an error naming %s", err, SysctlIPv4Forward)
	}
	if _, err := ReadForwarding(root); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadForwarding on an empty root: %v, want not-exist", err)
	}
}

func TestExplainSysctlErr(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want []string
	}{
		{syscall.EROFS, []string{"read-only", "securityContext.privileged: true", "initContainer", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"}},
		{syscall.EACCES, []string{"runAsUser: 0", "securityContext.privileged: true"}},
		{syscall.EPERM, []string{"runAsUser: 0"}},
	} {
		got := explainSysctlErr("/proc/sys", &os.PathError{Op: "open", Path: "/proc/sys/net/ipv4/ip_forward", Err: tt.err})
		for _, w := range tt.want {
			if !strings.Contains(got.Error(), w) {
				t.Errorf("%v: %q lacks %q", tt.err, got, w)
			}
		}
		if !errors.Is(got, tt.err) {
			t.Errorf("%v: explained error does not wrap it", tt.err)
		}
	}
	other := errors.New("boom")
	if got := explainSysctlErr("/proc/sys", other); got != other {
		t.Errorf("other errors must pass unchanged, got %v", got)
	}
}

// TestForwardingInNetNS writes and reads back the real forwarding sysctls
// inside a throw-away network namespace. /proc/sys/net resolves against
// the network namespace of the thread that opens the file (not of the
// process, and not of whoever mounted /proc), so the thread in the
// namespace sees the namespace's own values while a file opened earlier
// in the host namespace keeps showing the host's.
func TestForwardingInNetNS(t *testing.T) {
	requireRoot(t)
	hostFile, err := os.Open(sysctlPath(DefaultProcSys, SysctlIPv4Forward))
	if err != nil {
		t.Fatal(err)
	}
	defer hostFile.Close()
	hostBefore := readAt(t, hostFile)

	ns := newNetNS(t)
	var (
		before, after ForwardingState
		changed       Forwarding
		disabled      ForwardingState
	)
	inNS(t, ns, func() error {
		// A new namespace starts with forwarding off (unless
		// net.core.devconf_inherit_init_net says otherwise): make sure.
		if err := forwardingOff(DefaultProcSys); err != nil {
			return err
		}
		var err error
		if before, err = ReadForwarding(DefaultProcSys); err != nil {
			return err
		}
		if changed, err = EnableForwarding(DefaultProcSys); err != nil {
			return err
		}
		if after, err = ReadForwarding(DefaultProcSys); err != nil {
			return err
		}
		if err := forwardingOff(DefaultProcSys); err != nil {
			return err
		}
		disabled, err = ReadForwarding(DefaultProcSys)
		return err
	})
	if before.IPv4 || before.IPv6 {
		t.Fatalf("forwarding in the new namespace before enabling: %+v", before)
	}
	wantChanged := Forwarding{IPv4: true, IPv6: !before.IPv6Missing}
	if changed != wantChanged {
		t.Errorf("changed = %+v, want %+v", changed, wantChanged)
	}
	if !after.IPv4 || (!after.IPv6 && !after.IPv6Missing) {
		t.Errorf("forwarding in the namespace after enabling: %+v", after)
	}
	if disabled.IPv4 || disabled.IPv6 {
		t.Errorf("forwarding in the namespace after disabling: %+v", disabled)
	}
	if hostAfter := readAt(t, hostFile); hostAfter != hostBefore {
		t.Errorf("the host's %s changed from %q to %q", SysctlIPv4Forward, hostBefore, hostAfter)
	}
}

func readAt(t *testing.T, f *os.File) string {
	t.Helper()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestEnableForwardingReadOnly mounts a copy of the sysctls read-only (a
// bind mount in a private mount namespace of a throw-away thread, so
// nothing leaks to the host) and checks the operator gets told what to
// change.
func TestEnableForwardingReadOnly(t *testing.T) {
	requireRoot(t)
	root := fakeProcSys(t, "0", "0")
	var enableErr error
	var changed Forwarding
	err := withReadOnly(root, func() {
		changed, enableErr = EnableForwarding(root)
	})
	if err != nil {
		t.Fatalf("set up a read-only mount: %v", err)
	}
	if enableErr == nil {
		t.Fatal("EnableForwarding on a read-only root: no error")
	}
	if changed.Any() {
		t.Errorf("changed = %+v on a read-only root", changed)
	}
	if !errors.Is(enableErr, syscall.EROFS) {
		t.Errorf("error does not wrap EROFS: %v", enableErr)
	}
	for _, want := range []string{"enable IP forwarding", SysctlIPv4Forward, "read-only", "securityContext.privileged: true"} {
		if !strings.Contains(enableErr.Error(), want) {
			t.Errorf("error %q lacks %q", enableErr, want)
		}
	}
	t.Logf("operator sees: %v", enableErr)

	// Already-on sysctls need no write, so a read-only /proc/sys is fine
	// when the node (or an initContainer) set them.
	root = fakeProcSys(t, "1", "1")
	err = withReadOnly(root, func() {
		changed, enableErr = EnableForwarding(root)
	})
	if err != nil {
		t.Fatalf("set up a read-only mount: %v", err)
	}
	if enableErr != nil || changed.Any() {
		t.Errorf("EnableForwarding with forwarding already on, read-only: %+v, %v; want nothing to do", changed, enableErr)
	}
}

// withReadOnly runs fn on a throw-away thread that sees dir mounted
// read-only: a bind mount in a private mount namespace of that thread, so
// nothing leaks to the host and nothing needs unmounting.
func withReadOnly(dir string, fn func()) error {
	return onThrowawayThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			return err
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return err
		}
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return err
		}
		if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return err
		}
		fn()
		return nil
	})
}
