package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netns"
)

// KillSwitchStateFile is the file in tailscaled's state dir that says the
// kill switch is armed: a new agent, or the node after a reboot, puts it
// back before tailscaled starts.
const KillSwitchStateFile = "ts-node-agent-kill-switch"

const armedContent = "armed: with --exit-fallback=block this worker's traffic never leaves directly; remove with `ts-node-agent cleanup`\n"

// KillSwitchArmed reports whether stateDir's KillSwitchStateFile says the
// kill switch is armed: the node was a worker that used an exit node, and
// has not stopped being one.
func KillSwitchArmed(stateDir string) bool {
	return readArmed(filepath.Join(stateDir, KillSwitchStateFile))
}

// readArmed reports whether the state file says the kill switch is armed.
func readArmed(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.HasPrefix(string(b), "armed")
}

// writeArmed records (armed) or forgets the kill switch, atomically.
func writeArmed(path string, armed bool) error {
	if !armed {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	if readArmed(path) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := tmp.WriteString(armedContent)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Cleanup removes everything the agent ever puts into the kernel and the
// state dir for a worker: every policy rule tagged BypassProtocol (the
// bypass and the kill switch, at any priority), the kill switch's sink
// routes, the nftables table inet ts-node-agent and the kill switch state
// file in stateDir (skipped when stateDir is empty). It is the explicit
// uninstall path (`ts-node-agent cleanup`); ns is the network namespace
// (netns.None() for the caller's own).
func Cleanup(stateDir string, ns netns.NsHandle, log *slog.Logger) error {
	b := NewBypass(BypassOptions{}, WithBypassLogger(log), WithBypassNetNS(ns))
	err := b.Remove()
	if stateDir != "" {
		path := filepath.Join(stateDir, KillSwitchStateFile)
		existed := readArmed(path)
		if ferr := writeArmed(path, false); ferr != nil {
			err = errors.Join(err, ferr)
		} else if existed {
			log.Info("kill switch state removed", "component", "bypass", "file", path)
		}
	}
	return err
}
