// Package authkey owns the credential the agent logs in with: it turns what
// the operator configured into the auth key of one login. A plain auth key
// is returned as it is. An OAuth client secret (tskey-client-..., or
// TS_CLIENT_SECRET) is traded for an API token with the client credentials
// grant, and workload identity (a client ID and an OIDC ID token, such as a
// projected ServiceAccount token) is traded for one at the token exchange
// endpoint; the API token then creates a single-use, short-lived key for
// the node's tags through the Tailscale API. Every login reads the secret
// and the ID token again (a rotated file is picked up) and mints a new key;
// nothing is cached.
//
// It speaks the API with the pinned tailscale.com module's public client
// (tailscale.com/client/tailscale) and golang.org/x/oauth2, like tailscale
// up does. What it must not do: log, publish, or put into an error any
// secret (the client secret, the ID token, the API token or the minted
// key): failures name the step (Step) and the HTTP status, and their
// messages are scrubbed of every secret value. It must not talk to
// tailscaled, or retry by itself: the caller (pkg/tailnet's login) retries
// with backoff.
package authkey

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	tsapi "tailscale.com/client/tailscale"

	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// DefaultAPIURL is the Tailscale API.
const DefaultAPIURL = "https://api.tailscale.com"

// ClientSecretPrefix starts every Tailscale OAuth client secret; an auth key
// (TS_AUTHKEY, --authkey-file) with it is a client secret.
const ClientSecretPrefix = "tskey-client-"

// KeyExpiry is the lifetime of a minted key. The key is used at once; a
// short lifetime bounds what a key that leaked from a failed login is
// worth.
const KeyExpiry = time.Hour

// DefaultRequestTimeout bounds each API request.
const DefaultRequestTimeout = 10 * time.Second

// The steps of a login that can fail, as Error.Step names them.
const (
	StepConfig        = "configuration"
	StepSecret        = "reading the auth key or client secret"
	StepIDToken       = "reading the ID token"
	StepOAuthToken    = "OAuth token"
	StepTokenExchange = "token exchange"
	StepKeyCreation   = "key creation"
)

// Error is a failed step. Its text names the step and, for an API answer,
// the HTTP status and the server's message, never a secret.
type Error struct {
	Step    string
	Status  int    // HTTP status; 0 when no answer came
	Message string // scrubbed
}

func (e *Error) Error() string {
	if e.Status == 0 {
		if e.Message == "" {
			return e.Step + " failed"
		}
		return e.Step + " failed: " + e.Message
	}
	msg := fmt.Sprintf("%s failed: HTTP %d %s", e.Step, e.Status, http.StatusText(e.Status))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// Options configures a Source. Exactly one of Secret and IDToken is set.
type Options struct {
	// Secret returns what TS_AUTHKEY, --authkey-file or TS_CLIENT_SECRET
	// hold, at every login.
	Secret func() (string, error)
	// ClientSecret: Secret is an OAuth client secret whatever its prefix
	// (TS_CLIENT_SECRET). Otherwise only a value starting with
	// ClientSecretPrefix is one; anything else is an auth key.
	ClientSecret bool
	// ClientID is the OAuth client's ID, optionally followed by
	// ?ephemeral=&preauthorized=&baseURL= (the attributes tailscale up
	// understands). It is required with IDToken.
	ClientID string
	// IDToken returns the OIDC ID token of workload identity, at every
	// login.
	IDToken func() (string, error)
	// Audience, when set, must be one of the ID token's audiences: checked
	// before the exchange, so that a token for the wrong audience is named
	// as such instead of an HTTP 401.
	Audience string
	// Tags are the minted key's tags (--advertise-tags); required.
	Tags []string
	// APIURL is the API's base URL; a baseURL attribute wins.
	APIURL string
	// RequestTimeout bounds each API request.
	RequestTimeout time.Duration
	// Transport carries the API requests; nil means http.DefaultTransport.
	Transport http.RoundTripper
	// UserAgent is sent with every request.
	UserAgent string
}

// Defaults sets every field to its default.
func (o *Options) Defaults() {
	*o = Options{APIURL: DefaultAPIURL, RequestTimeout: DefaultRequestTimeout, UserAgent: "ts-node-agent"}
}

// Validate reports every problem of o at once. It never reads the secret.
func (o Options) Validate() error {
	var errs []error
	switch {
	case o.Secret == nil && o.IDToken == nil:
		errs = append(errs, errors.New("neither a secret nor an ID token is set"))
	case o.Secret != nil && o.IDToken != nil:
		errs = append(errs, errors.New("a secret and an ID token cannot both be set"))
	case o.IDToken != nil && o.ClientID == "":
		errs = append(errs, errors.New("an ID token needs the client ID"))
	}
	if o.ClientID != "" {
		if _, _, err := ParseAttributes(o.ClientID); err != nil {
			errs = append(errs, fmt.Errorf("client ID: %w", err))
		}
	}
	if err := validate.HTTPURL(o.APIURL); err != nil {
		errs = append(errs, fmt.Errorf("API URL %q: want an http:// or https:// URL with a host: %w", redact.URL(o.APIURL), err))
	}
	for _, t := range o.Tags {
		if err := validate.Tag(t); err != nil {
			errs = append(errs, fmt.Errorf("tag %q: %w", t, err))
		}
	}
	if o.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("request timeout %v: must be positive", o.RequestTimeout))
	}
	return errors.Join(errs...)
}

// Mints reports whether the configuration mints keys (an OAuth client or
// workload identity), given the secret's current value: the tags are then
// required.
func (o Options) Mints(secret string) bool {
	return o.IDToken != nil || o.ClientSecret || strings.HasPrefix(secret, ClientSecretPrefix)
}

// Attributes are the options that may follow a client secret or a client
// ID after '?', as tailscale up understands them.
type Attributes struct {
	Ephemeral     bool   // default true
	Preauthorized bool   // default false
	BaseURL       string // "" when not given
	// set records which attributes were given.
	set map[string]bool
}

// ParseAttributes splits s into the value before '?' and its attributes
// (ephemeral, preauthorized, baseURL). Errors name the attribute, never
// the value before '?'.
func ParseAttributes(s string) (string, Attributes, error) {
	value, query, _ := strings.Cut(s, "?")
	a := Attributes{Ephemeral: true, set: map[string]bool{}}
	attrs, err := url.ParseQuery(query)
	if err != nil {
		return "", a, fmt.Errorf("attributes after '?' do not parse as a query: %v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		v := attrs.Get(k)
		switch k {
		case "ephemeral", "preauthorized":
			if v == "" {
				continue // the default, as tailscale up reads it
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return "", a, fmt.Errorf("attribute %s=%q is not a boolean; accepted: true or false", k, v)
			}
			if k == "ephemeral" {
				a.Ephemeral = b
			} else {
				a.Preauthorized = b
			}
		case "baseURL":
			if err := validate.HTTPURL(v); err != nil {
				return "", a, fmt.Errorf("attribute baseURL=%q: want an http:// or https:// URL with a host", redact.URL(v))
			}
			a.BaseURL = strings.TrimRight(v, "/")
		default:
			return "", a, fmt.Errorf("unknown attribute %q; accepted: ephemeral, preauthorized, baseURL", k)
		}
		a.set[k] = true
	}
	return value, a, nil
}

// Merge returns a with the attributes b sets; an attribute set in both is
// an error.
func (a Attributes) Merge(b Attributes) (Attributes, error) {
	out := a
	out.set = map[string]bool{}
	for k := range a.set {
		out.set[k] = true
	}
	for k := range b.set {
		if a.set[k] {
			return a, fmt.Errorf("attribute %s is given after both the client ID and the client secret; accepted: one of them", k)
		}
		out.set[k] = true
		switch k {
		case "ephemeral":
			out.Ephemeral = b.Ephemeral
		case "preauthorized":
			out.Preauthorized = b.Preauthorized
		case "baseURL":
			out.BaseURL = b.BaseURL
		}
	}
	return out, nil
}

// Source produces the auth key of each login.
type Source struct {
	o Options
}

var acknowledge sync.Once

// New returns a Source for o, which must be valid.
func New(o Options) *Source {
	// The module's API client asks its users to acknowledge that its API
	// may change; it is pinned with tailscale.com.
	acknowledge.Do(func() { tsapi.I_Acknowledge_This_API_Is_Unstable = true })
	o.APIURL = strings.TrimRight(o.APIURL, "/")
	return &Source{o: o}
}

// Describe says what the source logs in with, for the log: kind is "auth
// key", "OAuth client" or "workload identity"; apiURL is the API that
// mints the keys ("" for an auth key), a baseURL attribute's when there is
// one. It reads the secret (a file may hold a key or a client secret); on
// error it says "auth key".
func (s *Source) Describe() (kind, apiURL string) {
	_, idAttrs, _ := ParseAttributes(s.o.ClientID)
	switch {
	case s.o.IDToken != nil:
		return "workload identity", s.baseURL(idAttrs)
	case s.o.Secret == nil:
		return "auth key", ""
	}
	v, err := s.o.Secret()
	if err != nil || !s.o.Mints(v) {
		return "auth key", ""
	}
	_, attrs, _ := ParseAttributes(v)
	if merged, err := idAttrs.Merge(attrs); err == nil {
		attrs = merged
	}
	return "OAuth client", s.baseURL(attrs)
}

// Key returns the auth key for one login: the configured key, or a key
// minted now. Its errors are *Error.
func (s *Source) Key(ctx context.Context) (string, error) {
	if s.o.IDToken != nil {
		return s.workloadIdentity(ctx)
	}
	v, err := s.o.Secret()
	if err != nil {
		return "", &Error{Step: StepSecret, Message: err.Error()}
	}
	if !s.o.Mints(v) {
		return v, nil
	}
	return s.oauthClient(ctx, v)
}

func (s *Source) oauthClient(ctx context.Context, v string) (string, error) {
	secret, attrs, err := ParseAttributes(v)
	if err != nil {
		return "", &Error{Step: StepSecret, Message: err.Error()}
	}
	id, idAttrs, _ := ParseAttributes(s.o.ClientID) // valid: Validate
	if attrs, err = idAttrs.Merge(attrs); err != nil {
		return "", &Error{Step: StepSecret, Message: err.Error()}
	}
	sc := scrubber{secret}
	if len(s.o.Tags) == 0 {
		// Possible only when a key file became a client secret since the
		// start, which checked the tags.
		return "", &Error{Step: StepConfig, Message: "an OAuth client secret needs --advertise-tags: the minted key is for these tags"}
	}
	base := s.baseURL(attrs)
	cc := clientcredentials.Config{
		ClientID:     id,
		ClientSecret: secret,
		TokenURL:     base + "/api/v2/oauth/token",
		AuthStyle:    oauth2.AuthStyleInParams,
	}
	if cc.ClientID == "" {
		// Tailscale's token endpoint reads the client from the secret;
		// tailscale up sends a placeholder too.
		cc.ClientID = "ts-node-agent"
	}
	tok, err := cc.Token(s.oauthContext(ctx))
	if err != nil {
		return "", sc.tokenError(StepOAuthToken, err)
	}
	return s.createKey(ctx, base, tok, attrs, append(sc, tok.AccessToken))
}

func (s *Source) workloadIdentity(ctx context.Context) (string, error) {
	idToken, err := s.o.IDToken()
	if err != nil {
		return "", &Error{Step: StepIDToken, Message: err.Error()}
	}
	sc := scrubber{idToken}
	if idToken == "" {
		return "", &Error{Step: StepIDToken, Message: "the ID token is empty"}
	}
	if err := checkIDToken(idToken, s.o.Audience, time.Now()); err != nil {
		return "", &Error{Step: StepIDToken, Message: sc.scrub(err.Error())}
	}
	if len(s.o.Tags) == 0 {
		return "", &Error{Step: StepConfig, Message: "workload identity needs --advertise-tags: the minted key is for these tags"}
	}
	id, attrs, _ := ParseAttributes(s.o.ClientID) // valid: Validate
	base := s.baseURL(attrs)
	cfg := oauth2.Config{
		ClientID: id,
		Endpoint: oauth2.Endpoint{TokenURL: base + "/api/v2/oauth/token-exchange", AuthStyle: oauth2.AuthStyleInParams},
	}
	tok, err := cfg.Exchange(s.oauthContext(ctx), "", oauth2.SetAuthURLParam("jwt", idToken))
	if err != nil {
		return "", sc.tokenError(StepTokenExchange, err)
	}
	return s.createKey(ctx, base, tok, attrs, append(sc, tok.AccessToken))
}

func (s *Source) baseURL(a Attributes) string {
	if a.BaseURL != "" {
		return a.BaseURL
	}
	return s.o.APIURL
}

// httpClient is the client of every request: bounded, with the user agent.
func (s *Source) httpClient(rt http.RoundTripper) *http.Client {
	if rt == nil {
		rt = s.o.Transport
	}
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &http.Client{
		Timeout:   s.o.RequestTimeout,
		Transport: userAgent{rt, s.o.UserAgent},
		// A redirect would carry the form (the client secret, the ID
		// token) or the bearer token elsewhere: the answer is the 3xx.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (s *Source) oauthContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, s.httpClient(nil))
}

// createKey creates a single-use key for the tags with the API token.
func (s *Source) createKey(ctx context.Context, base string, tok *oauth2.Token, a Attributes, sc scrubber) (string, error) {
	c := tsapi.NewClient("-", nil)
	c.BaseURL = base
	c.UserAgent = s.o.UserAgent
	status := &statusRecorder{rt: &oauth2.Transport{Source: oauth2.StaticTokenSource(tok), Base: s.o.Transport}}
	c.HTTPClient = s.httpClient(status)
	caps := tsapi.KeyCapabilities{Devices: tsapi.KeyDeviceCapabilities{Create: tsapi.KeyDeviceCreateCapabilities{
		Reusable:      false,
		Ephemeral:     a.Ephemeral,
		Preauthorized: a.Preauthorized,
		Tags:          slices.Clone(s.o.Tags),
	}}}
	key, _, err := c.CreateKeyWithExpiry(ctx, caps, KeyExpiry)
	if err != nil {
		var er tsapi.ErrResponse
		if errors.As(err, &er) {
			return "", &Error{Step: StepKeyCreation, Status: er.Status, Message: shorten(sc.scrub(er.Message))}
		}
		// Not the API's JSON (a proxy's HTML page, say): the client
		// quotes the whole body.
		msg := "the answer is not the API's JSON"
		if status.code == 0 {
			msg = sc.scrub(err.Error())
		}
		return "", &Error{Step: StepKeyCreation, Status: status.code, Message: shorten(msg)}
	}
	if key == "" {
		return "", &Error{Step: StepKeyCreation, Message: "the API answered no key"}
	}
	return key, nil
}

// statusRecorder remembers the status of the last answer.
type statusRecorder struct {
	rt   http.RoundTripper
	code int
}

func (s *statusRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(r)
	if resp != nil {
		s.code = resp.StatusCode
	}
	return resp, err
}

type userAgent struct {
	rt http.RoundTripper
	ua string
}

func (u userAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	if u.ua != "" && r.Header.Get("User-Agent") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("User-Agent", u.ua)
	}
	return u.rt.RoundTrip(r)
}

// scrubber removes secret values from text that may echo them.
type scrubber []string

func (sc scrubber) scrub(s string) string {
	for _, v := range sc {
		if len(v) >= 4 {
			s = strings.ReplaceAll(s, v, "[REDACTED]")
		}
	}
	return s
}

// tokenError describes a failed token request: the HTTP status and the
// server's message, scrubbed.
func (sc scrubber) tokenError(step string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		msg := re.ErrorCode
		if re.ErrorDescription != "" {
			msg = strings.TrimPrefix(msg+": "+re.ErrorDescription, ": ")
		}
		if msg == "" {
			msg = bodyMessage(re.Body)
		}
		return &Error{Step: step, Status: re.Response.StatusCode, Message: shorten(sc.scrub(msg))}
	}
	return &Error{Step: step, Message: shorten(sc.scrub(err.Error()))}
}

// bodyMessage is the message of an error body: the API's JSON "message",
// else the body's first line, shortened.
func bodyMessage(b []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &m) == nil && m.Message != "" {
		return m.Message
	}
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// shorten bounds a message that ends up in a log line and a probe answer.
func shorten(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// checkIDToken checks what can be checked of an ID token without its
// issuer's keys: when it is a JWT, that it has not expired, and that its
// audience holds want (when set). The issuer checks the signature.
func checkIDToken(tok, want string, now time.Time) error {
	parts := strings.Split(tok, ".")
	var claims struct {
		Aud audience `json:"aud"`
		Exp *float64 `json:"exp"`
	}
	if len(parts) != 3 {
		if want != "" {
			return errors.New("the ID token is not a JWT, so its audience cannot be checked against TS_AUDIENCE")
		}
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err == nil {
		err = json.Unmarshal(payload, &claims)
	}
	if err != nil {
		return errors.New("the ID token is not a valid JWT: its claims do not decode")
	}
	if claims.Exp != nil {
		if exp := time.Unix(int64(*claims.Exp), 0); now.After(exp) {
			return fmt.Errorf("the ID token expired at %s; is the token file still being refreshed?", exp.UTC().Format(time.RFC3339))
		}
	}
	if want != "" && !slices.Contains(claims.Aud, want) {
		return fmt.Errorf("the ID token's audience %q does not include TS_AUDIENCE %q; set the projected token's audience to it", []string(claims.Aud), want)
	}
	return nil
}

// audience is a JWT "aud" claim: a string or a list of strings.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}
