package tailnet

import (
	"context"
	"errors"
	"fmt"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// Options configures a Manager. Start from Defaults, then apply
// configuration, then Validate.
type Options struct {
	// Role is the initial role; change it at run time with
	// Manager.SetRole.
	Role snapshot.Role
	// AuthKey returns the auth key. It is called at every login (never
	// cached, so a rotated key file is picked up, and a key minted by
	// pkg/authkey is used once) and its result is never logged, published
	// or included in an error. Its error should name the step that failed:
	// it is logged and published as the login error. nil, or "" with a nil
	// error, means no key: the login is interactive and its URL is logged
	// and published.
	AuthKey func(context.Context) (string, error)
	// AuthOnce logs in only when tailscaled needs a login. Without it the
	// agent logs in with the key again after every tailscaled start (the
	// containerboot behaviour without TS_AUTH_ONCE).
	AuthOnce bool
	// Hostname is the tailnet hostname; "" keeps tailscaled's (the OS
	// hostname).
	Hostname string
	// AdvertiseTags are the ACL tags to request ("tag:name").
	AdvertiseTags []string
	// AcceptDNS applies the tailnet DNS configuration (CorpDNS).
	AcceptDNS bool
	// AcceptRoutes accepts subnet routes advertised by peers (RouteAll).
	AcceptRoutes bool
	// LoginServer is the control server URL; "" means Tailscale's.
	LoginServer string
	// ExitNodeAllowLANAccess keeps the LAN reachable while a worker uses
	// an exit node.
	ExitNodeAllowLANAccess bool
}

// Defaults sets every field to its default (DESIGN section 3). Call it
// before applying flags and environment.
func (o *Options) Defaults() {
	*o = Options{
		Role:                   snapshot.RoleNone,
		AuthOnce:               true,
		ExitNodeAllowLANAccess: true,
	}
}

// Validate reports every problem of o at once. The hostname, tag and URL
// rules are pkg/validate's, which pkg/config applies at startup too.
func (o *Options) Validate() error {
	var errs []error
	if err := validateRole(o.Role); err != nil {
		errs = append(errs, err)
	}
	if o.Hostname != "" {
		if err := validate.Hostname(o.Hostname); err != nil {
			errs = append(errs, fmt.Errorf("hostname %q: %w", o.Hostname, err))
		}
	}
	for _, tag := range o.AdvertiseTags {
		if err := validate.Tag(tag); err != nil {
			errs = append(errs, fmt.Errorf("advertise tag %q: %w", tag, err))
		}
	}
	if o.LoginServer != "" {
		if err := validate.HTTPURL(o.LoginServer); err != nil {
			errs = append(errs, fmt.Errorf("login server %q: want an http:// or https:// URL with a host: %w", o.LoginServer, err))
		}
	}
	return errors.Join(errs...)
}

func validateRole(r snapshot.Role) error {
	switch r {
	case snapshot.RoleExit, snapshot.RoleWorker, snapshot.RoleNone:
		return nil
	}
	return fmt.Errorf("role %q: want one of exit, worker, none", r)
}
