package kube

import (
	"fmt"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// DefaultLabel is the default label key whose value is the role
// (--role-label).
const DefaultLabel = "ts-node-agent/role"

// acceptedRoles lists the label values that name a role, for messages.
const acceptedRoles = "exit, worker, none"

// ParseRole returns the role named s (exit, worker or none).
func ParseRole(s string) (snapshot.Role, bool) {
	switch r := snapshot.Role(s); r {
	case snapshot.RoleExit, snapshot.RoleWorker, snapshot.RoleNone:
		return r, true
	}
	return "", false
}

// UnknownRoleError is the error of a role label whose value is not a role.
type UnknownRoleError struct {
	Key     string        // the label key
	Value   string        // its value
	Default snapshot.Role // the role used instead
}

func (e *UnknownRoleError) Error() string {
	return fmt.Sprintf("node label %s=%q is not a role (accepted: %s); using the default role %s",
		e.Key, e.Value, acceptedRoles, e.Default)
}

// RoleFromLabels returns the role that a Node with labels has: the value of
// the label key when it names a role, def when the label is absent. An
// unknown value (including the empty string) returns def and an
// *UnknownRoleError naming the value and the accepted ones. Values are
// case-sensitive, like label values.
func RoleFromLabels(labels map[string]string, key string, def snapshot.Role) (snapshot.Role, error) {
	v, ok := labels[key]
	if !ok {
		return def, nil
	}
	if r, ok := ParseRole(v); ok {
		return r, nil
	}
	return def, &UnknownRoleError{Key: key, Value: v, Default: def}
}

// roleCause describes where a role came from, for logs and Events.
func roleCause(labels map[string]string, key string) string {
	if v, ok := labels[key]; ok {
		return fmt.Sprintf("node label %s=%q", key, v)
	}
	return fmt.Sprintf("node label %s absent, default role", key)
}
