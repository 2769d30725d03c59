package tailnet

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"k8s.io/utils/clock"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

const (
	// LoopName is the heartbeat name of the Manager's loop in the snapshot.
	LoopName = "tailnet"
	// HeartbeatInterval is how often the loop beats while idle or waiting
	// for tailscaled. A beat is late by at most the LocalAPI calls of one
	// iteration (each bounded by 10s, at most three in a row, and the 5s
	// answer check), so a loop without a beat for a minute is stuck.
	HeartbeatInterval = 5 * time.Second
	// AnswerInterval: while connected, the LocalAPI answers at least this
	// often (a cheap call is made when nothing else did), so that the
	// snapshot's Tailnet.LocalAPIAnsweredAt tells a live tailscaled from a
	// wedged one.
	AnswerInterval = 15 * time.Second
)

// watchMask is what the Manager subscribes to. The initial message carries
// the state and prefs; after it, any message is only a trigger to re-read
// Status. NotifyPeerPatches is needed for peer changes (additions, removals,
// online/offline) to reach the bus at all on Linux; patches are the small
// form of them. Self changes (addresses, approved routes), state, prefs,
// health and login URLs reach every watcher.
const watchMask = ipn.NotifyInitialState | ipn.NotifyInitialPrefs | ipn.NotifyInitialHealthState | ipn.NotifyPeerPatches

// timings are the Manager's intervals; tests shorten them.
type timings struct {
	refreshMin    time.Duration // minimum time between two Status reads
	resync        time.Duration // Status is re-read at least this often
	heartbeat     time.Duration // loop heartbeat
	callTimeout   time.Duration // bound of one LocalAPI call
	connectMin    time.Duration // LocalAPI connect backoff
	connectMax    time.Duration
	stableSession time.Duration // a bus watch that lasted this long resets the backoff
	loginMin      time.Duration // login retry backoff
	loginMax      time.Duration
	applyMin      time.Duration // prefs re-apply backoff
	applyMax      time.Duration
	answerEvery   time.Duration // a quiet LocalAPI is called this often, to see it answers
	answerTimeout time.Duration // bound of that call
}

var defaultTimings = timings{
	refreshMin:    250 * time.Millisecond,
	resync:        30 * time.Second,
	heartbeat:     HeartbeatInterval,
	callTimeout:   10 * time.Second,
	connectMin:    250 * time.Millisecond,
	connectMax:    5 * time.Second,
	stableSession: 30 * time.Second,
	loginMin:      15 * time.Second,
	loginMax:      5 * time.Minute,
	applyMin:      time.Second,
	applyMax:      time.Minute,
	answerEvery:   AnswerInterval,
	answerTimeout: 5 * time.Second,
}

// Manager logs tailscaled in, keeps its prefs as the role wants them and
// publishes its state into the snapshot. Create it with New, run it with
// Run; SetRole, SetExitNode and Kick may be called from any goroutine.
type Manager struct {
	lc    LocalAPI
	store *snapshot.Store
	log   *slog.Logger
	clock clock.WithTicker
	t     timings

	kick    chan struct{}
	running atomic.Bool // Run was called: a role set before it is the start's, not a change

	// Lock order: applyMu, then mu.
	mu       sync.Mutex // guards the desired state below
	opts     Options
	role     snapshot.Role
	exitNode *tailcfg.StableNodeID // nil: no choice yet, tailscaled's is kept
	lastKey  string                // last auth key read, only to redact it

	applyMu sync.Mutex // serialises prefs changes (Start, EditPrefs)

	// Owned by the Run goroutine.
	loginErr  string // last login error, cleared when Running
	applyErr  string // last prefs error, cleared when prefs match
	lastState string
	loggedURL string // the last login URL logged, so each is logged once
}

// Option configures a Manager.
type Option func(*Manager)

// WithLogger sets the logger (default slog.Default()); the Manager adds
// component=tailnet.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// WithClock sets the clock used for backoff, debouncing and heartbeats.
func WithClock(c clock.WithTicker) Option { return func(m *Manager) { m.clock = c } }

// New returns a Manager for the tailscaled behind lc that publishes into
// store. opts must be valid.
func New(lc LocalAPI, store *snapshot.Store, opts Options, options ...Option) (*Manager, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("tailnet options: %w", err)
	}
	opts.AdvertiseTags = append([]string(nil), opts.AdvertiseTags...)
	m := &Manager{
		lc:    lc,
		store: store,
		log:   slog.Default(),
		clock: clock.RealClock{},
		t:     defaultTimings,
		kick:  make(chan struct{}, 1),
		opts:  opts,
		role:  opts.Role,
	}
	for _, o := range options {
		o(m)
	}
	m.log = m.log.With("component", "tailnet")
	m.lc = answering{lc: lc, answered: m.answered}
	return m, nil
}

// answered records that the LocalAPI answered now. Any goroutine may call
// it (the bus reader does).
func (m *Manager) answered() { m.store.LocalAPIAnswered(m.clock.Now()) }

// checkAnswering calls the LocalAPI (GetPrefs, small and cheap) when
// nothing has answered for answerEvery: on a quiet tailnet no notification
// comes and Status is read only every resync, yet liveness must see a
// wedged tailscaled. The call is bounded by answerTimeout; its answer is
// recorded by the answering LocalAPI.
func (m *Manager) checkAnswering(ctx context.Context) {
	if m.clock.Since(m.store.Load().Tailnet.LocalAPIAnsweredAt) < m.t.answerEvery {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, m.t.answerTimeout)
	defer cancel()
	if _, err := m.lc.GetPrefs(cctx); err != nil && ctx.Err() == nil {
		m.log.Debug("tailscaled's LocalAPI did not answer", "err", err)
	}
}

// Kick makes the Manager reconnect to the LocalAPI now if it is waiting to,
// and re-read and reconcile tailscaled's state. Call it when tailscaled
// has (re)started and its LocalAPI answers (the supervisor's ready hook).
// It never blocks.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// SetRole changes the role at run time. The new prefs are applied by the
// Run loop without restarting tailscaled or logging in again: an exit
// node that becomes a worker stops advertising the exit routes. Leaving
// the worker role forgets the chosen exit node.
func (m *Manager) SetRole(r snapshot.Role) error {
	if err := validateRole(r); err != nil {
		return err
	}
	m.mu.Lock()
	old := m.role
	m.role = r
	if r != snapshot.RoleWorker {
		m.exitNode = nil
	}
	m.mu.Unlock()
	if old != r && m.running.Load() {
		m.log.Info("role changed", "from", old, "to", r)
	}
	m.Kick()
	return nil
}

// Role returns the current role.
func (m *Manager) Role() snapshot.Role {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.role
}

// SetExitNode makes a worker use the exit node id ("" to use none), with
// Options.ExitNodeAllowLANAccess. It applies the change now and returns
// its error; the choice is also remembered, so the Run loop applies it
// again after a tailscaled restart. It fails when the role is not worker.
func (m *Manager) SetExitNode(ctx context.Context, id tailcfg.StableNodeID) error {
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	m.mu.Lock()
	if m.role != snapshot.RoleWorker {
		r := m.role
		m.mu.Unlock()
		return fmt.Errorf("set exit node %q: role is %s, not worker", id, r)
	}
	m.exitNode = &id
	allowLAN := m.opts.ExitNodeAllowLANAccess
	m.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, m.t.callTimeout)
	defer cancel()
	if _, err := m.lc.EditPrefs(ctx, WithExitNode(&ipn.MaskedPrefs{}, id, allowLAN)); err != nil {
		return fmt.Errorf("set exit node %q: %w", id, err)
	}
	m.log.Info("exit node set", "exit_node_id", id)
	return nil
}

// desired returns the prefs the Manager wants now.
func (m *Manager) desired() *ipn.MaskedPrefs {
	m.mu.Lock()
	defer m.mu.Unlock()
	mp := DesiredPrefs(m.opts, m.role)
	if m.role == snapshot.RoleWorker && m.exitNode != nil {
		WithExitNode(mp, *m.exitNode, m.opts.ExitNodeAllowLANAccess)
	}
	return mp
}

// authKey reads (or mints) the auth key. It returns "" when there is none.
func (m *Manager) authKey(ctx context.Context) (string, error) {
	if m.opts.AuthKey == nil {
		return "", nil
	}
	// Minting a key takes up to two API requests, with applyMu held:
	// bound the whole of it.
	ctx, cancel := context.WithTimeout(ctx, 2*m.t.callTimeout)
	defer cancel()
	k, err := m.opts.AuthKey(ctx)
	if err != nil {
		return "", err
	}
	k = strings.TrimSpace(k)
	if k != "" {
		m.mu.Lock()
		m.lastKey = k
		m.mu.Unlock()
	}
	return k, nil
}

// redact removes the auth key from s, in case an error echoes it.
func (m *Manager) redact(s string) string {
	m.mu.Lock()
	k := m.lastKey
	m.mu.Unlock()
	if k == "" {
		return s
	}
	return strings.ReplaceAll(s, k, "[REDACTED]")
}

func (m *Manager) beat() { m.store.Beat(LoopName, m.clock.Now()) }

// Run connects to the LocalAPI, watches the IPN bus and reconciles until
// ctx is done, reconnecting with backoff whenever tailscaled goes away.
// It returns nil when ctx is done; it never gives up otherwise.
func (m *Manager) Run(ctx context.Context) error {
	m.running.Store(true)
	hb := m.clock.NewTicker(m.t.heartbeat)
	defer hb.Stop()
	m.beat()

	failures := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		w, wcancel, err := m.watch(ctx)
		if err == nil {
			m.log.Info("connected to tailscaled LocalAPI")
			started := m.clock.Now()
			err = m.session(ctx, w, hb)
			wcancel()
			m.store.UpdateTailnet(func(t *snapshot.Tailnet) {
				t.Connected = false
				t.UpdatedAt = m.clock.Now()
			})
			if ctx.Err() != nil {
				return nil
			}
			m.log.Warn("tailscaled IPN bus watch ended; reconnecting", "err", m.redact(err.Error()))
			if m.clock.Since(started) >= m.t.stableSession {
				failures = 0
			}
		} else if ctx.Err() != nil {
			return nil
		} else if failures == 0 {
			m.log.Info("waiting for tailscaled LocalAPI", "err", err)
		} else {
			m.log.Debug("tailscaled LocalAPI not available", "err", err)
		}
		failures++
		if !m.wait(ctx, hb, backoff(m.t.connectMin, m.t.connectMax, failures)) {
			return nil
		}
	}
}

// watch subscribes to the IPN bus. Like every LocalAPI call, the
// subscription must answer within callTimeout, so a wedged tailscaled
// cannot stall the loop; the returned cancel ends the subscription.
func (m *Manager) watch(ctx context.Context) (IPNBusWatcher, context.CancelFunc, error) {
	wctx, cancel := context.WithCancel(ctx)
	timeout := time.AfterFunc(m.t.callTimeout, cancel)
	w, err := m.lc.WatchIPNBus(wctx, watchMask)
	if !timeout.Stop() && err == nil {
		w.Close()
		err = fmt.Errorf("watching the IPN bus: no answer within %v", m.t.callTimeout)
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return w, cancel, nil
}

// wait waits for d, a Kick or ctx, beating meanwhile. It returns false
// when ctx is done.
func (m *Manager) wait(ctx context.Context, hb clock.Ticker, d time.Duration) bool {
	t := m.clock.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C():
			return true
		case <-m.kick:
			return true
		case <-hb.C():
			m.beat()
		}
	}
}

// session is the per-connection state: a new tailscaled starts from
// scratch, so everything here is forgotten when the bus breaks.
type session struct {
	prefs       *ipn.Prefs
	status      *ipnstate.Status
	browseURL   string
	lastRefresh time.Time
	timer       clock.Timer // pending debounced refresh, nil if none
	stale       bool        // the last Status read failed
	stateLogged bool        // the backend state was logged in this session

	loginAttempts int
	nextLogin     time.Time
	loginDone     bool // a login was started in this session
	interactive   bool // an interactive login was requested in this session

	applyAttempts int
	nextApply     time.Time
	machineAuth   bool // NeedsMachineAuth was logged
}

// session runs one IPN bus subscription until it breaks or ctx is done.
func (m *Manager) session(ctx context.Context, w IPNBusWatcher, hb clock.Ticker) error {
	ctx, cancel := context.WithCancel(ctx)
	notes := make(chan ipn.Notify)
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := w.Next()
			if err != nil {
				errc <- err
				return
			}
			select {
			case notes <- n:
			case <-ctx.Done():
				return
			}
		}
	}()
	s := &session{}
	defer func() {
		cancel()
		w.Close()
		<-done
		if s.timer != nil {
			s.timer.Stop()
		}
	}()

	for {
		var timerC <-chan time.Time
		if s.timer != nil {
			timerC = s.timer.C()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case n := <-notes:
			m.handleNotify(s, n)
			switch {
			case n.State != nil || n.Prefs != nil || n.SelfChange != nil:
				// A backend state change (Starting -> Running, ...), new
				// prefs (the exit node just set) and a change of this
				// node (control approved its exit routes) are rare and
				// what readiness waits for: read Status now, not after
				// the debounce.
				if s.timer != nil {
					s.timer.Stop()
					s.timer = nil
				}
				m.refresh(ctx, s)
			case notifyMatters(&n):
				m.scheduleRefresh(ctx, s)
			}
		case <-timerC:
			s.timer = nil
			m.refresh(ctx, s)
		case <-m.kick:
			s.applyAttempts, s.nextApply = 0, time.Time{}
			m.scheduleRefresh(ctx, s)
		case <-hb.C():
			m.beat()
			if s.stale || m.clock.Since(s.lastRefresh) >= m.t.resync {
				m.scheduleRefresh(ctx, s)
			} else {
				m.reconcile(ctx, s) // retries that are due
			}
			m.checkAnswering(ctx)
		}
	}
}

func (m *Manager) handleNotify(s *session, n ipn.Notify) {
	if n.ErrMessage != nil {
		msg := m.redact(*n.ErrMessage)
		m.log.Warn("tailscaled reports an error", "err", msg)
		m.loginErr = "login failed: " + msg
	}
	if n.Prefs != nil && n.Prefs.Valid() {
		s.prefs = n.Prefs.AsStruct()
	}
	if n.BrowseToURL != nil {
		s.browseURL = *n.BrowseToURL
		m.logLoginURL(s.browseURL)
	}
	if n.LoginFinished != nil {
		m.log.Info("login finished")
		m.loginErr = ""
	}
}

// notifyMatters reports whether n may change what the snapshot shows, so
// Status must be read again. Peer patches that only move endpoints, DERP
// homes or last-seen times (the bulk of them in a large tailnet) do not.
func notifyMatters(n *ipn.Notify) bool {
	if n.State != nil || n.Prefs != nil || n.SelfChange != nil || n.Health != nil ||
		n.LoginFinished != nil || n.BrowseToURL != nil || n.ErrMessage != nil ||
		n.NetMap != nil || n.InitialStatus != nil ||
		len(n.PeersChanged) > 0 || len(n.PeersRemoved) > 0 {
		return true
	}
	for _, pc := range n.PeerChangedPatch {
		if pc != nil && (pc.Online != nil || pc.KeyExpiry != nil) {
			return true
		}
	}
	return false
}

// scheduleRefresh reads Status now, or at refreshMin after the last read.
func (m *Manager) scheduleRefresh(ctx context.Context, s *session) {
	if s.timer != nil {
		return
	}
	if d := m.t.refreshMin - m.clock.Since(s.lastRefresh); d > 0 {
		s.timer = m.clock.NewTimer(d)
		return
	}
	m.refresh(ctx, s)
}

// refresh reads Status, publishes the snapshot and reconciles.
func (m *Manager) refresh(ctx context.Context, s *session) {
	s.lastRefresh = m.clock.Now()
	cctx, cancel := context.WithTimeout(ctx, m.t.callTimeout)
	defer cancel()
	st, err := m.lc.Status(cctx)
	if err == nil && s.prefs == nil {
		s.prefs, err = m.lc.GetPrefs(cctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			m.log.Debug("reading tailscaled status", "err", err)
		}
		s.stale = true
		return
	}
	s.stale = false
	s.status = st
	m.publish(s)
	m.reconcile(ctx, s)
}

func (m *Manager) publish(s *session) {
	st := s.status
	if st.BackendState != m.lastState || !s.stateLogged {
		m.log.Info("tailscaled state", "state", st.BackendState, "previous", m.lastState)
		m.lastState = st.BackendState
		s.stateLogged = true
	}
	t := TailnetFromStatus(st, s.prefs, m.clock.Now())
	if st.BackendState == ipn.Running.String() {
		s.browseURL = ""
		m.loginErr = ""
		s.loginAttempts, s.nextLogin = 0, time.Time{}
	}
	url := st.AuthURL
	if url == "" && st.BackendState == ipn.NeedsLogin.String() {
		url = s.browseURL
	}
	m.logLoginURL(url)
	t.InteractiveLogin = url != "" && st.BackendState == ipn.NeedsLogin.String()
	for i, h := range t.Health {
		t.Health[i] = m.redact(h)
	}
	t.LoginError = m.lastError()
	m.store.SetTailnet(t)
}

// logLoginURL logs tailscaled's interactive login URL at Warn, once per
// distinct URL (a URL is logged when it is not the last one logged:
// tailscaled hands out a new URL for every new login). The log is the only
// place the URL goes: never the snapshot, so never a probe or a metric,
// because whoever opens it first enrols the node into their tailnet.
func (m *Manager) logLoginURL(url string) {
	if url == "" || url == m.loggedURL {
		return
	}
	m.log.Warn("tailscaled needs an interactive login: open this URL or set an auth key", "url", url)
	m.loggedURL = url
}

// needsLogin returns why tailscaled needs a login now, or "".
func (m *Manager) needsLogin(s *session, want *ipn.MaskedPrefs) string {
	st := s.status
	switch {
	case st.BackendState == ipn.NeedsLogin.String():
		return "tailscaled needs login"
	case st.BackendState == ipn.NoState.String() && !st.HaveNodeKey:
		return "tailscaled has never logged in"
	case st.BackendState == ipn.NoState.String():
		return "" // starting up with a node key: wait for it
	case loginServerChanged(s.prefs, want):
		return "login server changed"
	case !m.opts.AuthOnce && !s.loginDone:
		return "auth once disabled"
	}
	return ""
}

// reconcile logs in or applies prefs when needed and due.
func (m *Manager) reconcile(ctx context.Context, s *session) {
	if s.status == nil {
		return
	}
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	want := m.desired()
	if why := m.needsLogin(s, want); why != "" {
		if m.clock.Now().Before(s.nextLogin) {
			return
		}
		m.login(ctx, s, want, why)
		return
	}
	switch s.status.BackendState {
	case ipn.Running.String(), ipn.Starting.String(), ipn.Stopped.String():
	case ipn.NeedsMachineAuth.String():
		if !s.machineAuth {
			m.log.Warn("tailscaled waits for the control server to authorize this machine (device approval)")
			s.machineAuth = true
		}
	default:
		return
	}
	m.applyPrefs(ctx, s, want)
}

// login starts a login with the current auth key, or an interactive one
// without a key. applyMu is held.
func (m *Manager) login(ctx context.Context, s *session, want *ipn.MaskedPrefs, why string) {
	s.loginAttempts++
	s.nextLogin = m.clock.Now().Add(backoff(m.t.loginMin, m.t.loginMax, s.loginAttempts))
	s.loginDone = true
	key, err := m.authKey(ctx)
	if err != nil {
		m.failLogin(s, fmt.Errorf("getting the auth key: %w", err))
		return
	}
	if key == "" {
		if !m.opts.AuthOnce && why == "auth once disabled" {
			return // nothing to log in with, and no need to
		}
		if s.interactive || s.status.AuthURL != "" {
			return // the URL is there: waiting for a human
		}
	}
	cctx, cancel := context.WithTimeout(ctx, m.t.callTimeout)
	defer cancel()
	cur := s.prefs
	if cur == nil {
		if cur, err = m.lc.GetPrefs(cctx); err != nil {
			m.failLogin(s, fmt.Errorf("reading prefs: %w", err))
			return
		}
	}
	m.log.Info("logging in", "reason", why, "with_auth_key", key != "", "attempt", s.loginAttempts)
	err = m.lc.Start(cctx, ipn.Options{AuthKey: key, UpdatePrefs: startPrefs(cur, want)})
	if err != nil {
		m.failLogin(s, fmt.Errorf("starting login: %w", err))
		return
	}
	// Like `tailscale up`: a node without a node key (or a login without
	// a key) needs an explicit login; with a key it is non-interactive.
	if key == "" || !s.status.HaveNodeKey {
		if err := m.lc.StartLoginInteractive(cctx); err != nil {
			m.failLogin(s, fmt.Errorf("starting login: %w", err))
			return
		}
		s.interactive = key == ""
	}
	// Start changed the prefs: read them back now, so that the next
	// reconcile (which may come from a bus notification before the new
	// prefs do) does not compare against the old ones and log in again
	// because "the login server changed".
	if p, err := m.lc.GetPrefs(cctx); err == nil {
		s.prefs = p
	} else {
		s.prefs = nil // refresh re-reads them
	}
	m.loginErr = ""
}

func (m *Manager) failLogin(s *session, err error) {
	msg := m.redact(err.Error())
	m.log.Warn("login failed", "err", msg, "retry_in", s.nextLogin.Sub(m.clock.Now()))
	m.loginErr = msg
	m.publishError()
}

// lastError is the snapshot's LoginError: the login error, else the prefs
// error.
func (m *Manager) lastError() string {
	if m.loginErr != "" {
		return m.loginErr
	}
	return m.applyErr
}

func (m *Manager) publishError() {
	msg := m.lastError()
	m.store.UpdateTailnet(func(t *snapshot.Tailnet) { t.LoginError = msg })
}

// applyPrefs edits the prefs that differ from want. applyMu is held.
func (m *Manager) applyPrefs(ctx context.Context, s *session, want *ipn.MaskedPrefs) {
	edit := editOnly(want)
	diff := prefsDiff(s.prefs, edit)
	if len(diff) == 0 {
		s.applyAttempts, s.nextApply = 0, time.Time{}
		if m.applyErr != "" {
			m.applyErr = ""
			m.publishError()
		}
		return
	}
	if m.clock.Now().Before(s.nextApply) {
		return
	}
	s.applyAttempts++
	s.nextApply = m.clock.Now().Add(backoff(m.t.applyMin, m.t.applyMax, s.applyAttempts))
	cctx, cancel := context.WithTimeout(ctx, m.t.callTimeout)
	defer cancel()
	p, err := m.lc.EditPrefs(cctx, edit)
	if err != nil {
		msg := m.redact(fmt.Errorf("applying prefs %s: %w", strings.Join(diff, ","), err).Error())
		m.log.Warn("applying prefs failed", "err", msg)
		m.applyErr = msg
		m.publishError()
		return
	}
	m.log.Info("applied prefs", "changed", diff)
	if p != nil {
		s.prefs = p
	}
	m.applyErr = ""
	m.publish(s)
}

// backoff returns lo doubled attempt-1 times, at most hi.
func backoff(lo, hi time.Duration, attempt int) time.Duration {
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}
