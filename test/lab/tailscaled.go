package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"tailscale.com/client/local"
)

// TUNName is the TUN device name StartTailscaled uses (the default of
// tailscaled and of the agent's --tun); each node has its own namespace,
// so the name never collides.
const TUNName = "tailscale0"

// SocketPath is the conventional LocalAPI socket path for the node's
// tailscaled (short enough for a unix socket: the lab directory is
// /tmp/tsl-<id>).
func (n *Node) SocketPath() string { return filepath.Join(n.dir, "tailscaled.sock") }

// StateDir is the conventional tailscaled state directory of the node.
func (n *Node) StateDir() string { return filepath.Join(n.dir, "state") }

// TailscaledArgs are the flags StartTailscaled passes: state dir, socket,
// kernel TUN, no log upload, no state encryption (no TPM in a lab).
func (n *Node) TailscaledArgs() []string {
	return []string{
		"--statedir=" + n.StateDir(),
		"--socket=" + n.SocketPath(),
		"--tun=" + TUNName,
		"--no-logs-no-support",
		"--encrypt-state=false",
	}
}

// TailscaledEnv is the environment a tailscaled in the lab should get
// (directly or through the agent): no log upload and logs kept in the
// node's directory, a panic rather than a silent connection if anything
// tries Tailscale's production control server, no port mapping probes,
// and the lab's CA as the only root (SSL_CERT_FILE), so that the control
// client's HTTPS fallback verifies the lab's control server as it would a
// real one.
// Firewall: nftables is forced, through netlink (kernel nf_tables with NAT
// and masquerade; neither the nft nor the iptables command is needed).
// Without it tailscaled picks iptables whenever an iptables command exists,
// so the mode would depend on what the machine has installed.
func (n *Node) TailscaledEnv() []string {
	return []string{
		"TS_DEBUG_FIREWALL_MODE=nftables",
		"TS_NO_LOGS_NO_SUPPORT=true",
		"TS_LOGS_DIR=" + n.dir,
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		"TS_DISABLE_PORTMAPPER=1",
		"SSL_CERT_FILE=" + n.lab.control.caFile,
	}
}

// StartTailscaled runs tailscaled (the binary at bin) in the node with
// TailscaledArgs, TailscaledEnv and extraArgs. Logging it in is the
// caller's business (LocalClient, or the tailscale CLI with --socket).
func (n *Node) StartTailscaled(bin string, extraArgs ...string) (*Process, error) {
	if err := os.MkdirAll(n.StateDir(), 0o700); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	argv := append([]string{bin}, n.TailscaledArgs()...)
	argv = append(argv, extraArgs...)
	return n.Start(argv, n.TailscaledEnv())
}

// LocalClient is a LocalAPI client on SocketPath.
func (n *Node) LocalClient() *local.Client {
	return &local.Client{Socket: n.SocketPath(), UseSocketOnly: true}
}

// Processes lists the processes running in the node's namespace, by pid,
// with their command name (/proc/PID/comm).
func (ns *NetNS) Processes() (map[int]string, error) {
	ino, err := nsInode(filepath.Join(netnsRunDir, ns.name))
	if err != nil {
		return nil, fmt.Errorf("lab: %s: %w", ns.label, err)
	}
	pids := pidsInNamespaces(map[uint64]string{ino: ns.name})
	out := make(map[int]string, len(pids))
	for pid := range pids {
		out[pid] = procComm(pid)
	}
	return out, nil
}

// SignalProcesses sends sig to every process in the namespace whose
// command name (/proc/PID/comm, at most 15 characters) is comm, for example
// ("tailscaled", SIGKILL) to crash the tailscaled an agent supervises. It
// returns the pids signalled; none is an error.
func (ns *NetNS) SignalProcesses(comm string, sig syscall.Signal) ([]int, error) {
	procs, err := ns.Processes()
	if err != nil {
		return nil, err
	}
	var pids []int
	var errs []error
	for pid, c := range procs {
		if c != comm {
			continue
		}
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("lab: signal %d: %w", pid, err))
			continue
		}
		pids = append(pids, pid)
	}
	if len(pids) == 0 && len(errs) == 0 {
		return nil, fmt.Errorf("lab: no process %q in %s", comm, ns.label)
	}
	return pids, errors.Join(errs...)
}
