package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ts-node-agent/ts-node-agent/pkg/authkey"
	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
)

// The credential variables besides TS_AUTHKEY. They are env-only, like
// the auth key: the secrets never show in ps or --help.
const (
	EnvClientID     = "TS_CLIENT_ID"
	EnvClientSecret = "TS_CLIENT_SECRET"
	EnvIDToken      = "TS_ID_TOKEN"
	EnvAudience     = "TS_AUDIENCE"
)

// SecretEnv are the variables that may hold a secret, by value; main
// removes them from the environment once Parse has read them.
var SecretEnv = []string{"TS_AUTHKEY", "TS_AUTH_KEY", EnvClientSecret, EnvIDToken}

const acceptedCredentials = "accepted: one credential: an auth key or OAuth client secret in TS_AUTHKEY or --authkey-file; " +
	"TS_CLIENT_SECRET, with TS_CLIENT_ID or not; or TS_CLIENT_ID with TS_ID_TOKEN (workload identity)"

// applyCredentialEnv reads TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN and
// TS_AUDIENCE. The secrets are a value or file:PATH; no message here
// contains a secret's value.
func (p *parser) applyCredentialEnv() {
	if v, ok := p.lookup(EnvClientID); ok {
		p.c.ClientID = strings.TrimSpace(v)
		if _, _, err := authkey.ParseAttributes(p.c.ClientID); err != nil {
			// The attributes are not shown: a baseURL may hold a password.
			p.problems = append(p.problems, invalid(EnvClientID, redact.URL(v), err))
		}
	}
	if v, ok := p.lookup(EnvAudience); ok {
		p.c.Audience = strings.TrimSpace(v)
	}
	p.c.ClientSecret = p.secretEnv(EnvClientSecret, "client secret")
	p.c.IDToken = p.secretEnv(EnvIDToken, "ID token")
}

// secretEnv reads a variable holding a secret or file:PATH.
func (p *parser) secretEnv(name, what string) Secret {
	v, ok := p.lookup(name)
	if !ok {
		return Secret{}
	}
	path, isFile := strings.CutPrefix(v, "file:")
	if !isFile {
		return SecretValue(v)
	}
	path = strings.TrimSpace(path)
	if err := checkReadableFile(path); err != nil {
		p.failed[name] = true
		p.problems = append(p.problems, invalid(name, v, err))
		return Secret{}
	}
	return SecretFileOf(what, path)
}

// Mints reports whether the agent mints its login keys through the
// Tailscale API: an OAuth client secret (in TS_CLIENT_SECRET, or in the
// auth key as it reads now) or workload identity.
func (c *Config) Mints() bool {
	if c.ClientSecret.IsSet() || c.IDToken.IsSet() {
		return true
	}
	v, err := c.AuthKey.Reveal()
	return err == nil && strings.HasPrefix(v, authkey.ClientSecretPrefix)
}

// credentialChecks are the rules between the credential settings.
func (c *Config) credentialChecks(skip map[string]bool) []error {
	var errs []error
	key, id, secret, token := c.AuthKey.IsSet(), c.ClientID != "", c.ClientSecret.IsSet(), c.IDToken.IsSet()
	switch {
	case key && (id || secret || token || c.Audience != ""):
		errs = append(errs, errors.New("TS_AUTHKEY (or --authkey-file) cannot be combined with TS_CLIENT_ID, TS_CLIENT_SECRET, "+
			"TS_ID_TOKEN or TS_AUDIENCE; "+acceptedCredentials))
	case secret && token:
		errs = append(errs, errors.New("TS_CLIENT_SECRET and TS_ID_TOKEN cannot both be set; "+acceptedCredentials))
	case token && !id:
		errs = append(errs, errors.New("TS_ID_TOKEN needs TS_CLIENT_ID, the ID of the OAuth client the identity is federated with"))
	case id && !secret && !token && !skip[EnvIDToken] && !skip[EnvClientSecret]:
		errs = append(errs, errors.New("TS_CLIENT_ID needs TS_CLIENT_SECRET (an OAuth client) or TS_ID_TOKEN (workload identity); "+
			"ID tokens from a cloud provider's metadata service are not supported"))
	case c.Audience != "" && !token && !skip[EnvIDToken]:
		errs = append(errs, errors.New("TS_AUDIENCE needs TS_ID_TOKEN: the agent does not fetch ID tokens from a cloud provider's "+
			"metadata service; mount a projected ServiceAccount token with this audience and set TS_ID_TOKEN=file:PATH"))
	}
	if len(errs) > 0 {
		return errs
	}
	if err := c.secretAttributes(); err != nil {
		errs = append(errs, err)
	}
	if c.Mints() && len(c.AdvertiseTags) == 0 && !skip["advertise-tags"] {
		what := "workload identity (TS_ID_TOKEN)"
		if !token {
			what = "an OAuth client secret"
		}
		errs = append(errs, fmt.Errorf("--advertise-tags (TS_NODE_AGENT_ADVERTISE_TAGS) is required with %s: "+
			"the agent mints a key for these tags; accepted: tag:NAME, one or more", what))
	}
	return errs
}

// secretAttributes checks the attributes after a client secret, as it
// reads now (a file is read again, and its attributes checked, at every
// login), and that the client ID and the secret do not both set one. The error names the variable, never the
// secret.
func (c *Config) secretAttributes() error {
	name, s := "TS_AUTHKEY", c.AuthKey
	if c.ClientSecret.IsSet() {
		name, s = EnvClientSecret, c.ClientSecret
	}
	v, err := s.Reveal()
	if err != nil || (name == "TS_AUTHKEY" && !strings.HasPrefix(v, authkey.ClientSecretPrefix)) {
		return nil
	}
	_, secretAttrs, err := authkey.ParseAttributes(v)
	if err != nil {
		return fmt.Errorf("invalid %s: %v", secretSource(name, s), err)
	}
	_, idAttrs, err := authkey.ParseAttributes(c.ClientID)
	if err != nil {
		return nil // reported as TS_CLIENT_ID's
	}
	if _, err := idAttrs.Merge(secretAttrs); err != nil {
		return fmt.Errorf("invalid %s and %s: %v", EnvClientID, secretSource(name, s), err)
	}
	return nil
}

// secretSource names where a secret comes from.
func secretSource(name string, s Secret) string {
	if s.Path() == "" {
		return name
	}
	if name == "TS_AUTHKEY" {
		return "auth key file " + s.Path()
	}
	return name + " file " + s.Path()
}
