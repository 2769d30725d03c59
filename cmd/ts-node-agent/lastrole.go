package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// The last known role, in the state dir: when the API server does not
// answer at start, the agent starts tailscaled with it (or, on a first
// start, as none) instead of crash-looping without a tailnet (an exit node
// would stay offline for the whole outage).
const (
	lastRoleFile = "ts-node-agent-role"
	// lastRoleWait is how long a start waits for the API server before
	// using the last known role, or none.
	lastRoleWait = 15 * time.Second
	// checkRoleSource is the informational check that says the role comes
	// from the state dir (OK), or that none is known (failed), until the
	// Node watch has read it.
	checkRoleSource = "role-source"
)

// lastRoleChecks declares role-source: informational.
func lastRoleChecks() []snapshot.CheckDeclaration {
	return []snapshot.CheckDeclaration{{Name: checkRoleSource, Informational: true}}
}

// Where the initial role came from, when not from the Node (initialRole).
const (
	roleFromState = "state-dir" // the last known role
	roleNoneYet   = "none-yet"  // none: a first start during an API server outage
)

// readLastRole returns the role recorded in stateDir, if any (and valid).
func readLastRole(stateDir string) (snapshot.Role, bool) {
	b, err := os.ReadFile(filepath.Join(stateDir, lastRoleFile))
	if err != nil {
		return "", false
	}
	switch r := snapshot.Role(strings.TrimSpace(string(b))); r {
	case snapshot.RoleExit, snapshot.RoleWorker, snapshot.RoleNone:
		return r, true
	}
	return "", false
}

// writeLastRole records r in stateDir, atomically.
func writeLastRole(stateDir string, r snapshot.Role) error {
	if cur, ok := readLastRole(stateDir); ok && cur == r {
		return nil
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("recording the role: %w", err)
	}
	tmp, err := os.CreateTemp(stateDir, lastRoleFile+".tmp*")
	if err != nil {
		return fmt.Errorf("recording the role: %w", err)
	}
	_, werr := tmp.WriteString(string(r) + "\n")
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the role: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(stateDir, lastRoleFile)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the role: %w", err)
	}
	return nil
}
