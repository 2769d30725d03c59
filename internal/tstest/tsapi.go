package tstest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Tailscale API endpoints a login with an OAuth client or with workload
// identity uses, as FakeAPI serves them.
const (
	APIOAuthToken    = "/api/v2/oauth/token"
	APITokenExchange = "/api/v2/oauth/token-exchange"
	APIKeys          = "/api/v2/tailnet/-/keys"
)

// APIRequest is what FakeAPI was sent, one request.
type APIRequest struct {
	Path      string
	UserAgent string
	// Token endpoints: the form.
	GrantType, ClientID, ClientSecret, JWT string
	// Key creation: the bearer token and the JSON body.
	Bearer        string
	Reusable      bool
	Ephemeral     bool
	Preauthorized bool
	Tags          []string
	ExpirySeconds int64
	// Status is what FakeAPI answered.
	Status int
}

// FakeAPI is an in-process fake of the Tailscale API endpoints of a key
// minting login: the OAuth token (client credentials grant), the token
// exchange (workload identity) and key creation. It speaks their wire
// format (form-encoded token requests answered with OAuth JSON; key
// creation as JSON with a bearer token) and checks what it is sent: the
// client secret, the client ID, the ID token, and that key creation carries
// an access token it issued. Keys it hands out come from the Keys list, in
// order, then are random.
type FakeAPI struct {
	URL string

	mu           sync.Mutex
	srv          *httptest.Server
	clientID     string
	clientSecret string
	idTokens     []string
	keys         []string
	issued       map[string]bool // access tokens handed out
	minted       []string
	fail         map[string]int
	failBody     map[string]string
	requests     []APIRequest
}

// FakeAPIConfig configures a FakeAPI.
type FakeAPIConfig struct {
	// ClientID and ClientSecret are the OAuth client's. ClientID "" accepts
	// any client ID with the secret (Tailscale reads the client from the
	// secret).
	ClientID, ClientSecret string
	// IDTokens are the ID tokens the token exchange accepts (with
	// ClientID); AcceptIDToken adds more.
	IDTokens []string
	// Keys are the keys to mint, in order.
	Keys []string
}

// NewFakeAPI starts a FakeAPI on loopback. Close stops it.
func NewFakeAPI(cfg FakeAPIConfig) *FakeAPI {
	f := &FakeAPI{
		clientID:     cfg.ClientID,
		clientSecret: cfg.ClientSecret,
		idTokens:     slices.Clone(cfg.IDTokens),
		keys:         slices.Clone(cfg.Keys),
		issued:       map[string]bool{},
		fail:         map[string]int{},
		failBody:     map[string]string{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL
	return f
}

// StartFakeAPI is NewFakeAPI, closed when the test ends.
func StartFakeAPI(t testing.TB, cfg FakeAPIConfig) *FakeAPI {
	f := NewFakeAPI(cfg)
	t.Cleanup(f.Close)
	return f
}

// Close stops the server.
func (f *FakeAPI) Close() { f.srv.Close() }

// Fail makes path answer status (with an error message) from now on; 0
// restores normal answers.
func (f *FakeAPI) Fail(path string, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[path] = status
}

// FailWithBody makes path answer status with body as text/html, as a
// proxy in front of the API would.
func (f *FakeAPI) FailWithBody(path string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[path], f.failBody[path] = status, body
}

// AcceptIDToken adds an ID token the token exchange accepts.
func (f *FakeAPI) AcceptIDToken(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idTokens = append(f.idTokens, tok)
}

// Requests returns every request so far, in order.
func (f *FakeAPI) Requests() []APIRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// Minted returns the keys handed out so far.
func (f *FakeAPI) Minted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.minted)
}

// Secrets returns every secret value the fake handed out or accepts
// (access tokens, minted keys, the client secret, the ID tokens), for leak
// scans.
func (f *FakeAPI) Secrets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Concat(f.minted, f.idTokens, f.keys)
	for t := range f.issued {
		out = append(out, t)
	}
	if f.clientSecret != "" {
		out = append(out, f.clientSecret)
	}
	return out
}

func (f *FakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	req := APIRequest{Path: r.URL.Path, UserAgent: r.UserAgent()}
	status, body := f.answer(r, &req)
	req.Status = status
	f.requests = append(f.requests, req)
	if raw, ok := f.failBody[r.URL.Path]; ok && f.fail[r.URL.Path] != 0 {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		io.WriteString(w, raw)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

// answer handles one request; f.mu is held.
func (f *FakeAPI) answer(r *http.Request, req *APIRequest) (int, any) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, apiMessage("POST only")
	}
	switch r.URL.Path {
	case APIOAuthToken, APITokenExchange:
		if err := r.ParseForm(); err != nil {
			return http.StatusBadRequest, oauthError("invalid_request", err.Error())
		}
		req.GrantType, req.ClientID = r.PostForm.Get("grant_type"), r.PostForm.Get("client_id")
		req.ClientSecret, req.JWT = r.PostForm.Get("client_secret"), r.PostForm.Get("jwt")
		if st := f.fail[r.URL.Path]; st != 0 {
			return st, oauthError("server_error", "injected failure")
		}
		if r.URL.Path == APIOAuthToken {
			if req.GrantType != "client_credentials" {
				return http.StatusBadRequest, oauthError("unsupported_grant_type", "want client_credentials")
			}
			if f.clientSecret == "" || req.ClientSecret != f.clientSecret || (f.clientID != "" && req.ClientID != f.clientID) {
				return http.StatusUnauthorized, oauthError("invalid_client", "unknown client or wrong secret")
			}
		} else if req.ClientID != f.clientID || !slices.Contains(f.idTokens, req.JWT) {
			return http.StatusUnauthorized, oauthError("invalid_grant", "the ID token is not accepted for this client")
		}
		tok := "tsapi-access-" + randomHex()
		f.issued[tok] = true
		return http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 3600}
	case APIKeys:
		bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		req.Bearer = bearer
		var kr struct {
			Capabilities struct {
				Devices struct {
					Create struct {
						Reusable, Ephemeral, Preauthorized bool
						Tags                               []string
					} `json:"create"`
				} `json:"devices"`
			} `json:"capabilities"`
			ExpirySeconds int64 `json:"expirySeconds"`
		}
		if err := json.NewDecoder(r.Body).Decode(&kr); err != nil {
			return http.StatusBadRequest, apiMessage("bad JSON: " + err.Error())
		}
		c := kr.Capabilities.Devices.Create
		req.Reusable, req.Ephemeral, req.Preauthorized, req.Tags = c.Reusable, c.Ephemeral, c.Preauthorized, c.Tags
		req.ExpirySeconds = kr.ExpirySeconds
		if st := f.fail[r.URL.Path]; st != 0 {
			return st, apiMessage("injected failure")
		}
		if !ok || !f.issued[bearer] {
			return http.StatusUnauthorized, apiMessage("API token invalid")
		}
		if len(c.Tags) == 0 {
			return http.StatusBadRequest, apiMessage("an OAuth client can only create keys with tags")
		}
		key := "tskey-auth-minted" + randomHex()
		if len(f.keys) > 0 {
			key, f.keys = f.keys[0], f.keys[1:]
		}
		f.minted = append(f.minted, key)
		now := time.Now().UTC()
		return http.StatusOK, map[string]any{
			"id":           fmt.Sprintf("k%d", len(f.minted)),
			"key":          key,
			"created":      now,
			"expires":      now.Add(time.Duration(kr.ExpirySeconds) * time.Second),
			"capabilities": kr.Capabilities,
		}
	}
	return http.StatusNotFound, apiMessage("not found")
}

func apiMessage(m string) map[string]string { return map[string]string{"message": m} }

func oauthError(code, desc string) map[string]string {
	return map[string]string{"error": code, "error_description": desc}
}

func randomHex() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// UnsignedJWT returns a JWT with the claims and a dummy signature: the
// agent checks an ID token's claims (expiry, audience), its issuer checks
// the signature.
func UnsignedJWT(claims map[string]any) string {
	b, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(b) + "." + enc([]byte("signature-"+randomHex()))
}
