// Package apiserver starts a real kube-apiserver, backed by a real etcd, for
// Go tests that need the API server's real behaviour: RBAC, watches,
// server-side apply, validation, TokenRequest, outages.
//
// etcd is Debian's etcd-server package (/usr/bin/etcd). kube-apiserver is
// built from k8s.io/kubernetes in the separate tools module
// test/tools/kubernetes by its build.sh (`make kubernetes`) into
// bin/kubernetes-<version>/kube-apiserver, once per version.
// When a binary is missing, Start skips the test with the command that
// provides it, or fails it when the environment variable CI is "true".
// TSNA_TEST_KUBE_APISERVER and TSNA_TEST_ETCD override the binaries' paths.
//
// Everything listens on 127.0.0.1 on free ports, lives in a temporary
// directory and is stopped and removed when the test ends (SIGTERM, then
// SIGKILL). The children also get SIGKILL if the test binary dies.
//
// Authentication is by static bearer tokens (--token-auth-file): an admin
// token in group system:masters, the users of Options.Users, and
// ServiceAccount tokens from the TokenRequest API (ServiceAccountToken),
// signed with keys the harness generates. Authorization is RBAC only, so
// a ServiceAccount token has exactly the permissions its (Cluster)Role
// bindings grant.
//
// There is no controller-manager, scheduler or kubelet: nothing creates
// "default" ServiceAccounts, schedules pods, runs garbage collection or
// fills in Endpoints. Namespaces "default", "kube-system" and
// "kube-public" exist (Start waits for them). The admission plugins are
// kube-apiserver's defaults, so creating a Pod needs its ServiceAccount
// to exist.
//
// Debian's etcd (3.4.23) lacks the watch-progress requests that
// kube-apiserver uses to serve consistent reads from its watch cache, so
// those reads go to etcd; clients see the same behaviour.
package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// AdminUser is the user name of the admin token (group system:masters).
const AdminUser = "test-admin"

// Environment variables that override where the binaries are found.
const (
	EnvKubeAPIServer = "TSNA_TEST_KUBE_APISERVER"
	EnvEtcd          = "TSNA_TEST_ETCD"
)

// User is a static token user (a line of --token-auth-file).
type User struct {
	Name   string
	Groups []string
	// Token is the bearer token; empty means generate one (see
	// Server.UserToken).
	Token string
}

// Options configure Start and New. The zero value is fine.
type Options struct {
	// Users are extra static token users besides the admin.
	Users []User
	// ExtraArgs are appended to kube-apiserver's command line; a flag
	// given here replaces the harness's own value of that flag (list flags
	// such as --authorization-mode too), e.g.
	// "--disable-admission-plugins=ServiceAccount" or "--v=4".
	ExtraArgs []string
	// StartTimeout bounds each start of etcd and of kube-apiserver until
	// ready. Default 90s (the machine may be busy).
	StartTimeout time.Duration
	// Dir is where data, keys, certificates and logs go. Default: a new
	// temporary directory (t.TempDir with Start), removed at the end.
	Dir string
	// Logf receives progress lines. Start defaults it to t.Logf.
	Logf func(format string, args ...any)

	// Wrap is put before etcd's and kube-apiserver's command lines, e.g.
	// nsenter --net=/run/netns/NAME -- to run them in a network namespace
	// (test/cluster runs them in the lab's router namespace).
	Wrap []string
	// Address is the address kube-apiserver binds, advertises and is
	// reached at (it is in the serving certificate). Default 127.0.0.1.
	// etcd always listens on 127.0.0.1 of the namespace they run in.
	Address string
	// ServingIPs are more IP addresses in the serving certificate, e.g. the
	// kubernetes Service's ClusterIP that pods reach it at.
	ServingIPs []string
	// Dial, when set, is how the harness and the clients it makes reach
	// etcd and kube-apiserver (a dialer into the namespace of Wrap).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

func (o Options) address() string {
	if o.Address != "" {
		return o.Address
	}
	return "127.0.0.1"
}

// httpClient is a client for etcd's plain HTTP, through Options.Dial.
func (o Options) httpClient() *http.Client {
	if o.Dial == nil {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{DialContext: o.Dial}}
}

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	opts          Options
	dir           string
	ownDir        bool
	apiserverBin  string
	etcdBin       string
	port          int
	etcdURL       string
	caPEM         []byte
	adminToken    string
	users         map[string]User
	apiserverArgs []string

	mu        sync.Mutex
	etcd      *process
	apiserver *process
	closed    bool
	kubecfgs  int
}

// Binaries returns the paths of kube-apiserver and etcd, or an error that
// says how to provide the missing ones.
func Binaries() (apiserverBin, etcdBin string, err error) {
	var missing []string
	apiserverBin = os.Getenv(EnvKubeAPIServer)
	if apiserverBin == "" {
		apiserverBin, err = KubernetesBinary("kube-apiserver")
		if err != nil {
			return "", "", err
		}
	}
	if !isExecutable(apiserverBin) {
		missing = append(missing, fmt.Sprintf("kube-apiserver not found at %s: build it with `make kubernetes` (test/tools/kubernetes/build.sh; ~12-20 minutes cold, cached after) or set %s", apiserverBin, EnvKubeAPIServer))
	}
	etcdBin = os.Getenv(EnvEtcd)
	if etcdBin == "" {
		if p, lerr := exec.LookPath("etcd"); lerr == nil {
			etcdBin = p
		} else {
			etcdBin = "/usr/bin/etcd"
		}
	}
	if !isExecutable(etcdBin) {
		missing = append(missing, fmt.Sprintf("etcd not found at %s: install it with `apt-get install -y etcd-server` or set %s", etcdBin, EnvEtcd))
	}
	if len(missing) > 0 {
		return apiserverBin, etcdBin, errors.New(strings.Join(missing, "; "))
	}
	return apiserverBin, etcdBin, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// KubernetesBinary finds the repository root (the directory holding
// test/tools/kubernetes/go.mod) upwards from the working directory and
// returns bin/kubernetes-<version>/<name> there, where version is the
// k8s.io/kubernetes version pinned in that go.mod. It does not check that
// the file exists.
func KubernetesBinary(name string) (string, error) {
	const toolsMod = "test/tools/kubernetes/go.mod"
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("apiserver: %w", err)
	}
	for dir := wd; ; {
		data, err := os.ReadFile(filepath.Join(dir, toolsMod))
		if err == nil {
			v := kubernetesVersion(data)
			if v == "" {
				return "", fmt.Errorf("apiserver: no k8s.io/kubernetes requirement in %s", filepath.Join(dir, toolsMod))
			}
			return filepath.Join(dir, "bin", "kubernetes-"+v, name), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("apiserver: %s not found above %s; set %s", toolsMod, wd, EnvKubeAPIServer)
		}
		dir = parent
	}
}

// kubernetesVersion returns the version of k8s.io/kubernetes required by
// a go.mod file (either "require k8s.io/kubernetes vX" or a line of a
// require block), as build.sh parses it.
func kubernetesVersion(gomod []byte) string {
	for line := range strings.SplitSeq(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "require" && f[1] == "k8s.io/kubernetes" {
			return f[2]
		}
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1]
		}
	}
	return ""
}

// Start starts etcd and kube-apiserver for t and stops them, and removes
// their files, in t.Cleanup. It skips t when a binary is missing (fails it
// when CI=true). When t has failed, the tail of both logs is logged
// before cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, _, err := Binaries(); err != nil {
		testenv.SkipOrFail(t, "real API server: %v", err)
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*opts.startTimeout())
	defer cancel()
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("real API server: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.DumpLogs(t.Logf, 60)
		}
		if err := s.Close(); err != nil {
			t.Errorf("real API server: close: %v", err)
		}
	})
	return s
}

func (o Options) startTimeout() time.Duration {
	if o.StartTimeout > 0 {
		return o.StartTimeout
	}
	return 90 * time.Second
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf("apiserver: "+format, args...)
	}
}

// New starts etcd and kube-apiserver and waits until the API server is
// ready. The caller must Close the server. Use it (for example from
// TestMain) to share one server between tests; Start is New for one test.
func New(ctx context.Context, opts Options) (_ *Server, err error) {
	apiserverBin, etcdBin, err := Binaries()
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, apiserverBin: apiserverBin, etcdBin: etcdBin, users: map[string]User{}}
	if opts.Dir == "" {
		s.dir, err = os.MkdirTemp("", "tsna-apiserver-")
		if err != nil {
			return nil, fmt.Errorf("apiserver: %w", err)
		}
		s.ownDir = true
	} else {
		s.dir = opts.Dir
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return nil, fmt.Errorf("apiserver: %w", err)
		}
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.writeFiles(); err != nil {
		return nil, err
	}
	if err := s.startEtcd(ctx); err != nil {
		return nil, err
	}
	if err := s.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// writeFiles generates the certificates, service-account keys and the
// token file, and builds kube-apiserver's arguments (minus the port).
func (s *Server) writeFiles() error {
	addr := net.ParseIP(s.opts.address())
	if addr == nil {
		return fmt.Errorf("apiserver: Options.Address %q is not an IP address", s.opts.address())
	}
	ips := []net.IP{addr}
	for _, a := range s.opts.ServingIPs {
		ip := net.ParseIP(a)
		if ip == nil {
			return fmt.Errorf("apiserver: Options.ServingIPs: %q is not an IP address", a)
		}
		ips = append(ips, ip)
	}
	pki, err := newPKI(ips...)
	if err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}
	s.caPEM = pki.caPEM
	files := map[string][]byte{
		"ca.crt":      pki.caPEM,
		"serving.crt": pki.servingCertPEM,
		"serving.key": pki.servingKeyPEM,
		"sa.key":      pki.saKeyPEM,
		"sa.pub":      pki.saPubPEM,
	}
	s.adminToken = randomToken()
	var tokens bytes.Buffer
	// token,user,uid,"group1,group2"
	fmt.Fprintf(&tokens, "%s,%s,%s,\"system:masters\"\n", s.adminToken, AdminUser, AdminUser)
	for _, u := range s.opts.Users {
		if u.Name == "" || strings.ContainsAny(u.Name, ",\"\n") || strings.ContainsAny(u.Token, ",\"\n") {
			return fmt.Errorf("apiserver: invalid user %q", u.Name)
		}
		if _, dup := s.users[u.Name]; dup || u.Name == AdminUser {
			return fmt.Errorf("apiserver: duplicate user %q", u.Name)
		}
		if u.Token == "" {
			u.Token = randomToken()
		}
		for _, g := range u.Groups {
			if strings.ContainsAny(g, ",\"\n") {
				return fmt.Errorf("apiserver: invalid group %q of user %q", g, u.Name)
			}
		}
		s.users[u.Name] = u
		fmt.Fprintf(&tokens, "%s,%s,%s,\"%s\"\n", u.Token, u.Name, u.Name, strings.Join(u.Groups, ","))
	}
	files["tokens.csv"] = tokens.Bytes()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(s.dir, name), data, 0o600); err != nil {
			return fmt.Errorf("apiserver: %w", err)
		}
	}
	for _, d := range []string{"etcd", "cert-dir"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return fmt.Errorf("apiserver: %w", err)
		}
	}
	p := func(name string) string { return filepath.Join(s.dir, name) }
	s.apiserverArgs = []string{
		"--bind-address=" + s.opts.address(),
		"--advertise-address=" + s.opts.address(),
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + p("serving.crt"),
		"--tls-private-key-file=" + p("serving.key"),
		"--cert-dir=" + p("cert-dir"),
		"--token-auth-file=" + p("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	}
	return nil
}

// overrideArgs returns base without the flags that extra sets, then extra.
func overrideArgs(base, extra []string) []string {
	name := func(a string) string { n, _, _ := strings.Cut(a, "="); return n }
	var out []string
	for _, a := range base {
		if !slices.ContainsFunc(extra, func(e string) bool { return name(e) == name(a) }) {
			out = append(out, a)
		}
	}
	return append(out, extra...)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) startEtcd(ctx context.Context) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		clientPort, err := freePort()
		if err != nil {
			return fmt.Errorf("apiserver: %w", err)
		}
		peerPort, err := freePort()
		if err != nil {
			return fmt.Errorf("apiserver: %w", err)
		}
		client := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
		peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
		start := time.Now()
		p, err := s.startProcess(s.etcdBin, filepath.Join(s.dir, "etcd.log"), []string{
			"--name=test",
			"--data-dir=" + filepath.Join(s.dir, "etcd"),
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=test=" + peer,
			"--initial-cluster-state=new",
			// One member: elect it in ~100ms instead of ~1s.
			"--heartbeat-interval=10",
			"--election-timeout=100",
			"--logger=zap",
			"--log-outputs=stderr",
		}, nil)
		if err != nil {
			return fmt.Errorf("apiserver: start etcd: %w", err)
		}
		err = waitHTTP(ctx, s.opts.startTimeout(), p, s.opts.httpClient(), client+"/health", func(code int, body []byte) bool {
			return code == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`))
		})
		if err == nil {
			s.mu.Lock()
			s.etcd, s.etcdURL = p, client
			s.mu.Unlock()
			s.logf("etcd ready at %s in %v", client, time.Since(start).Round(time.Millisecond))
			return nil
		}
		p.stop(5 * time.Second)
		lastErr = fmt.Errorf("apiserver: etcd did not become healthy: %w\n%s", err, tail(p.logPath, 30))
		if !p.exited() || !strings.Contains(tail(p.logPath, 30), "address already in use") {
			return lastErr
		}
		// Lost a race for a port: try other ones.
	}
	return lastErr
}

// StartAPIServer starts kube-apiserver (on the same port as before, if it
// ran before) and waits until /readyz is OK and the system namespaces
// exist. It fails if kube-apiserver is running.
func (s *Server) StartAPIServer(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("apiserver: server is closed")
	}
	if s.apiserver != nil && !s.apiserver.exited() {
		s.mu.Unlock()
		return errors.New("apiserver: kube-apiserver is already running")
	}
	fixedPort := s.port != 0
	s.mu.Unlock()

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := s.port
		if !fixedPort {
			var err error
			if port, err = freePort(); err != nil {
				return fmt.Errorf("apiserver: %w", err)
			}
		}
		args := append(append([]string{}, s.apiserverArgs...),
			"--etcd-servers="+s.etcdURL,
			"--secure-port="+strconv.Itoa(port))
		args = overrideArgs(args, s.opts.ExtraArgs)
		start := time.Now()
		p, err := s.startProcess(s.apiserverBin, filepath.Join(s.dir, "kube-apiserver.log"), args, nil)
		if err != nil {
			return fmt.Errorf("apiserver: start kube-apiserver: %w", err)
		}
		s.mu.Lock()
		s.apiserver, s.port = p, port
		s.mu.Unlock()
		err = s.waitReady(ctx, p)
		if err == nil {
			s.logf("kube-apiserver ready at %s in %v", s.URL(), time.Since(start).Round(time.Millisecond))
			return nil
		}
		p.stop(10 * time.Second)
		lastErr = fmt.Errorf("apiserver: kube-apiserver did not become ready: %w\n%s", err, tail(p.logPath, 40))
		// Lost a race for a port: try another one (only the first time;
		// a restart must keep its port and just retries).
		if !p.exited() || !strings.Contains(tail(p.logPath, 40), "address already in use") {
			return lastErr
		}
		if fixedPort {
			time.Sleep(time.Second)
		}
	}
	return lastErr
}

func (s *Server) waitReady(ctx context.Context, p *process) error {
	hc, err := rest.HTTPClientFor(s.AdminConfig())
	if err != nil {
		return err
	}
	deadline := s.opts.startTimeout()
	start := time.Now()
	err = waitHTTP(ctx, deadline, p, hc, s.URL()+"/readyz", func(code int, _ []byte) bool { return code == http.StatusOK })
	if err != nil {
		return err
	}
	// The system namespaces are created by a post-start hook that /readyz
	// does not wait for.
	for _, ns := range []string{"default", "kube-system", "kube-public"} {
		err := waitHTTP(ctx, deadline-time.Since(start), p, hc, s.URL()+"/api/v1/namespaces/"+ns, func(code int, _ []byte) bool { return code == http.StatusOK })
		if err != nil {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	return nil
}

// waitHTTP polls url until ok says yes, p exits, ctx ends or timeout passes.
func waitHTTP(ctx context.Context, timeout time.Duration, p *process, hc *http.Client, url string, ok func(code int, body []byte) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := "no answer yet"
	for {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if ok(resp.StatusCode, body) {
				rcancel()
				return nil
			}
			last = fmt.Sprintf("%s: %s: %s", url, resp.Status, firstLines(body, 12))
		} else {
			last = err.Error()
		}
		rcancel()
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v); last: %s", filepath.Base(p.path), p.err, last)
		case <-ctx.Done():
			return fmt.Errorf("timed out after %v; last: %s", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func firstLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}

// StopAPIServer stops kube-apiserver (SIGTERM, SIGKILL after 15s) and
// leaves etcd running: the API server is unreachable until StartAPIServer.
func (s *Server) StopAPIServer() error {
	s.mu.Lock()
	p := s.apiserver
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	start := time.Now()
	err := p.stop(15 * time.Second)
	s.logf("kube-apiserver stopped in %v", time.Since(start).Round(time.Millisecond))
	return err
}

// Restart stops kube-apiserver and starts it again on the same port with
// the same etcd (the data survives), and waits until it is ready. Clients
// see an outage in between.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.StopAPIServer(); err != nil {
		t.Fatalf("real API server: restart: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*s.opts.startTimeout())
	defer cancel()
	if err := s.StartAPIServer(ctx); err != nil {
		t.Fatalf("real API server: restart: %v", err)
	}
}

// Close stops kube-apiserver and etcd and removes the directory New
// created (not Options.Dir). It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	api, etcd := s.apiserver, s.etcd
	s.mu.Unlock()
	var errs []error
	if api != nil {
		errs = append(errs, api.stop(15*time.Second))
	}
	if etcd != nil {
		errs = append(errs, etcd.stop(10*time.Second))
	}
	if s.ownDir {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}

// URL is the API server's base URL, https://ADDRESS:PORT (Options.Address,
// default 127.0.0.1).
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "https://" + net.JoinHostPort(s.opts.address(), strconv.Itoa(s.port))
}

// Port is kube-apiserver's secure port.
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// Host is the API server's address, ADDRESS:PORT.
func (s *Server) Host() string { return strings.TrimPrefix(s.URL(), "https://") }

// EtcdURL is etcd's client URL.
func (s *Server) EtcdURL() string { return s.etcdURL }

// Dir is the directory with the data, keys, certificates and logs.
func (s *Server) Dir() string { return s.dir }

// CAData is the PEM CA certificate that signed the serving certificate.
func (s *Server) CAData() []byte { return append([]byte(nil), s.caPEM...) }

// AdminToken is the bearer token of AdminUser (group system:masters).
func (s *Server) AdminToken() string { return s.adminToken }

// UserToken is the bearer token of a user of Options.Users; it panics for
// an unknown user.
func (s *Server) UserToken(name string) string {
	u, ok := s.users[name]
	if !ok {
		panic(fmt.Sprintf("apiserver: no user %q in Options.Users", name))
	}
	return u.Token
}

// Config is a new client configuration for the given bearer token,
// verifying the server with the harness's CA.
func (s *Server) Config(token string) *rest.Config {
	return &rest.Config{
		Host:            s.URL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CAData()},
		QPS:             -1, // no client-side rate limit: tests are short bursts
		Timeout:         30 * time.Second,
		Dial:            s.opts.Dial,
	}
}

// AdminConfig is a new client configuration as the admin (system:masters).
func (s *Server) AdminConfig() *rest.Config { return s.Config(s.adminToken) }

// AdminClient is a new clientset as the admin.
func (s *Server) AdminClient() kubernetes.Interface { return s.Client(s.adminToken) }

// Client is a new clientset for the given bearer token.
func (s *Server) Client(token string) kubernetes.Interface {
	c, err := kubernetes.NewForConfig(s.Config(token))
	if err != nil {
		panic(fmt.Sprintf("apiserver: clientset: %v", err)) // only for an invalid config
	}
	return c
}

// Kubeconfig writes a kubeconfig file for the given bearer token (with the
// CA embedded) and returns its path. Every call writes a new file. A
// process that reads it must reach Options.Address (run it where Wrap
// runs kube-apiserver).
func (s *Server) Kubeconfig(token string) string {
	s.mu.Lock()
	s.kubecfgs++
	path := filepath.Join(s.dir, fmt.Sprintf("kubeconfig-%d", s.kubecfgs))
	s.mu.Unlock()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: s.URL(), CertificateAuthorityData: s.CAData()}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test", Namespace: "default"}
	cfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		panic(fmt.Sprintf("apiserver: write kubeconfig: %v", err)) // the directory is ours
	}
	return path
}

// ServiceAccountToken returns a token for the ServiceAccount namespace/name
// from the TokenRequest API (valid for an hour, for the API server's
// audience), so a test can act as that ServiceAccount with exactly the
// RBAC its bindings grant. The ServiceAccount must exist.
func (s *Server) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	exp := int64(3600)
	tr, err := s.AdminClient().CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("apiserver: token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// DumpLogs logs the last n lines of etcd's and kube-apiserver's logs.
func (s *Server) DumpLogs(logf func(format string, args ...any), n int) {
	for _, name := range []string{"etcd.log", "kube-apiserver.log"} {
		logf("apiserver: last %d lines of %s:\n%s", n, name, tail(filepath.Join(s.dir, name), n))
	}
}

// Tail returns the last n lines of a file (or why it cannot be read), for
// logs in test failures.
func Tail(path string, n int) string { return tail(path, n) }

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func randomToken() string {
	b := make([]byte, 24)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// process is a child process with its output appended to a log file.
type process struct {
	path    string
	logPath string
	pid     int
	done    chan struct{}
	err     error // valid once done is closed
}

// startProcess starts path with args. The child gets SIGKILL when the test
// binary dies (Pdeathsig). Pdeathsig fires when the OS thread that forked
// the child exits, so the child is forked from a goroutine that keeps its
// thread locked until the child exits: a thread the Go runtime retires
// (after another goroutine exited while locked, as netns code does) can
// then never be the child's parent.
func (s *Server) startProcess(path, logPath string, args, env []string) (*process, error) {
	if len(s.opts.Wrap) > 0 {
		args = append(append(slices.Clone(s.opts.Wrap[1:]), path), args...)
		path = s.opts.Wrap[0]
	}
	return startProcess(path, logPath, args, env)
}

// StartProcess starts path with args the way the harness starts its own
// children (output appended to logPath, its own process group, SIGKILL
// when the test binary dies, no Wrap). test/cluster runs the
// controller-manager, the scheduler, containerd and kubelets with it.
func StartProcess(path, logPath string, args, env []string) (*Process, error) {
	return startProcess(path, logPath, args, env)
}

// Process is a child started by StartProcess.
type Process = process

// Pid is the child's process ID.
func (p *process) Pid() int { return p.pid }

// Done is closed when the child has exited.
func (p *process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *process) Stop(grace time.Duration) error { return p.stop(grace) }

func startProcess(path, logPath string, args, env []string) (*process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== apiserver harness: %s start: %s %s\n", time.Now().Format(time.RFC3339Nano), path, strings.Join(args, " "))
	p := &process{path: path, logPath: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread exits with this goroutine, after the child.
		cmd := exec.Command(path, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			f.Close()
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		fmt.Fprintf(f, "=== apiserver harness: %s exit: %v\n", time.Now().Format(time.RFC3339Nano), p.err)
		f.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
// An exit caused by those signals is not an error.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	syscall.Kill(p.pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	syscall.Kill(p.pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", filepath.Base(p.path), p.pid)
	}
}
