package tstest

import (
	"context"
	"testing"
	"time"

	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
)

// up logs d in with key the way `tailscale up --auth-key` does.
func up(t *testing.T, ctx context.Context, c *Control, d *Tailscaled, authKey string) *ipnstate.Status {
	t.Helper()
	if err := d.WaitLocalAPI(ctx); err != nil {
		t.Fatal(err)
	}
	lc := d.LocalClient()
	p := ipn.NewPrefs()
	p.ControlURL = c.URL
	p.WantRunning = true
	p.Hostname = d.Name
	if err := lc.Start(ctx, ipn.Options{AuthKey: authKey, UpdatePrefs: p}); err != nil {
		t.Fatal(err)
	}
	if err := lc.StartLoginInteractive(ctx); err != nil {
		t.Fatal(err)
	}
	return awaitRunning(t, ctx, d)
}

func awaitRunning(t *testing.T, ctx context.Context, d *Tailscaled) *ipnstate.Status {
	t.Helper()
	for {
		st, err := d.LocalClient().Status(ctx)
		if err == nil && st.BackendState == "Running" && len(st.TailscaleIPs) > 0 {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s not running: %v, %v", d.Name, st, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestHarness(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c := StartControl(t, func(s *testcontrol.Server) { s.RequireAuthKey = "tskey-harness" })
	a := NewTailscaled(t, c, "a")
	b := NewTailscaled(t, c, "b")
	if len(a.Socket) > 100 {
		t.Errorf("socket path %q is too long for a unix socket", a.Socket)
	}
	a.Start()
	b.Start()
	stA := up(t, ctx, c, a, "tskey-harness")
	stB := up(t, ctx, c, b, "tskey-harness")
	if n := c.NumNodes(); n != 2 {
		t.Errorf("NumNodes = %d, want 2", n)
	}

	// The tailnet works end to end (disco ping over DERP or direct). A
	// ping sent before the path is up can hang, so, like `tailscale
	// ping`, each attempt has its own timeout.
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := a.LocalClient().Ping(pctx, stB.TailscaleIPs[0], tailcfg.PingDisco)
		cancel()
		if err == nil && res.Err == "" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("ping a -> b, %d attempts: %v %+v", attempt, err, res)
		}
	}

	// Exit route approval through control shows in the node's AllowedIPs.
	k, err := a.NodeKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.ApproveExitRoutes(k)
	for {
		st, err := a.LocalClient().StatusWithoutPeers(ctx)
		if err == nil && st.Self.ExitNodeOption {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("exit routes never approved: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}

	// Kill -9 and restart keep the state.
	pid := a.PID()
	a.Kill()
	if a.PID() != 0 {
		t.Error("PID after Kill")
	}
	a.Start()
	if a.PID() == pid {
		t.Error("same PID after restart")
	}
	if err := a.WaitLocalAPI(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := a.LocalClient().StatusWithoutPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.HaveNodeKey {
		t.Error("state lost across restart")
	}
	_ = stA
}
