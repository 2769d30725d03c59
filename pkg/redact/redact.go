// Package redact owns how the agent shows values that may carry a
// credential, wherever they appear: log lines, check reasons, errors,
// metrics labels. Today that is URLs: an egress check URL may hold an API
// token in its query (https://ipinfo.io/json?token=...), a login server a
// user and password.
//
// It is a leaf: it must not import any other package of this module, so
// that every package can use the one implementation, and it must never do
// I/O or log.
package redact

import "net/url"

// URL returns s as it may be shown: without its user info
// (user:password@), with its query, if any, replaced by "..." and without
// its fragment; scheme, host and path stay. A string that does not parse
// as a URL is returned unchanged (validation rejects those before they are
// used).
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil || (u.User == nil && u.RawQuery == "" && !u.ForceQuery && u.Fragment == "") {
		return s // nothing to hide (or not a URL)
	}
	u.User = nil
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = "...", false
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}
