package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultProcSys is where the kernel's sysctls are.
const DefaultProcSys = "/proc/sys"

// The forwarding sysctls of an exit node.
const (
	SysctlIPv4Forward = "net.ipv4.ip_forward"
	SysctlIPv6Forward = "net.ipv6.conf.all.forwarding"
)

// Forwarding names IP families, for example those whose forwarding the
// agent turned on.
type Forwarding struct {
	IPv4 bool
	IPv6 bool
}

// Any reports whether any family is set.
func (f Forwarding) Any() bool { return f.IPv4 || f.IPv6 }

// sysctlPath returns the file of a sysctl key under the procSys root.
func sysctlPath(procSys, key string) string {
	if procSys == "" {
		procSys = DefaultProcSys
	}
	return filepath.Join(procSys, strings.ReplaceAll(key, ".", "/"))
}

// readSysctl returns the trimmed value of key.
func readSysctl(procSys, key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(procSys, key))
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

// writeSysctl writes v to key (no create, no truncate: sysctl files are
// rewritten whole by one write).
func writeSysctl(procSys, key, v string) error {
	f, err := os.OpenFile(sysctlPath(procSys, key), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(v + "\n")
	cerr := f.Close()
	return errors.Join(werr, cerr)
}

// ReadForwarding reads the forwarding sysctls under procSys ("" means
// DefaultProcSys). A kernel without IPv6 is not an error (IPv6Missing).
//
// /proc/sys/net shows the network namespace of the thread that opens the
// file, so a caller in another namespace must read from a thread in it.
func ReadForwarding(procSys string) (ForwardingState, error) {
	var st ForwardingState
	v4, err := readSysctl(procSys, SysctlIPv4Forward)
	if err != nil {
		return st, fmt.Errorf("read %s: %w", SysctlIPv4Forward, err)
	}
	st.IPv4 = v4 != "0"
	v6, err := readSysctl(procSys, SysctlIPv6Forward)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		st.IPv6Missing = true
	case err != nil:
		return st, fmt.Errorf("read %s: %w", SysctlIPv6Forward, err)
	default:
		st.IPv6 = v6 != "0"
	}
	return st, nil
}

// EnableForwarding turns on IPv4 and IPv6 forwarding under procSys (""
// means DefaultProcSys) for the exit role, reading each value back. It
// writes only what is off, so a read-only /proc/sys is fine when the
// sysctls were already set (by the node or an initContainer). changed says
// which families the agent turned on (for /metrics and the log). Nothing
// ever turns forwarding off again: on a Kubernetes node pod networking
// depends on it. A kernel without IPv6 is not an error.
//
// A read-only /proc/sys (the default for an unprivileged container) is an
// error that names the securityContext setting the operator must change.
func EnableForwarding(procSys string) (changed Forwarding, err error) {
	if procSys == "" {
		procSys = DefaultProcSys
	}
	for _, key := range []string{SysctlIPv4Forward, SysctlIPv6Forward} {
		did, err := setSysctl(procSys, key, true)
		if err != nil {
			return changed, fmt.Errorf("enable IP forwarding: %w", explainSysctlErr(procSys, err))
		}
		switch key {
		case SysctlIPv4Forward:
			changed.IPv4 = did
		case SysctlIPv6Forward:
			changed.IPv6 = did
		}
	}
	return changed, nil
}

// setSysctl sets a boolean sysctl and reads it back. It reports whether it
// had to write. A missing IPv6 sysctl (kernel without IPv6) is a no-op.
func setSysctl(procSys, key string, on bool) (changed bool, err error) {
	want := "0"
	if on {
		want = "1"
	}
	cur, err := readSysctl(procSys, key)
	if errors.Is(err, fs.ErrNotExist) && key == SysctlIPv6Forward {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	if (cur != "0") == on {
		return false, nil
	}
	if err := writeSysctl(procSys, key, want); err != nil {
		return false, fmt.Errorf("write %s=%s: %w", key, want, err)
	}
	got, err := readSysctl(procSys, key)
	if err != nil {
		return true, fmt.Errorf("read back %s: %w", key, err)
	}
	if got != want {
		return true, fmt.Errorf("wrote %s=%s but it reads %q", key, want, got)
	}
	return true, nil
}

// explainSysctlErr adds what the operator must change to a permission
// error; other errors are returned as they are.
func explainSysctlErr(procSys string, err error) error {
	switch {
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%w: %s is read-only in this container, and the exit role needs it writable: "+
			"set securityContext.privileged: true on the ts-node-agent container, "+
			"or set %s=1 and %s=1 on the node before the agent starts "+
			"(for example in a privileged initContainer; pod securityContext.sysctls cannot set them for a hostNetwork pod)",
			err, procSys, SysctlIPv4Forward, SysctlIPv6Forward)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: writing %s needs root (securityContext.runAsUser: 0) and a writable %s "+
			"(securityContext.privileged: true on the ts-node-agent container)", err, procSys, procSys)
	}
	return err
}
