package snapshot

import (
	"slices"
	"testing"
	"time"
)

func fired(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestSettersPublishAndSignal(t *testing.T) {
	start := time.Unix(1000, 0)
	s := New(start, RoleWorker)
	old := s.Load()
	ch := s.Changed()
	s.SetCheck("tun", Check{OK: true})
	if !fired(ch) {
		t.Fatal("SetCheck did not signal Changed")
	}
	if _, ok := old.Checks["tun"]; ok {
		t.Fatal("SetCheck modified a published snapshot")
	}
	if !s.Load().Checks["tun"].OK {
		t.Fatal("check not published")
	}
	if got := s.Load().Supervisor.DownSince; !got.Equal(start) {
		t.Fatalf("DownSince = %v, want agent start %v", got, start)
	}
}

func TestNoSignalWithoutChange(t *testing.T) {
	s := New(time.Unix(0, 0), RoleExit)
	if !s.MarkReady(time.Unix(5, 0)) {
		t.Fatal("first MarkReady returned false")
	}
	ch := s.Changed()
	if s.MarkReady(time.Unix(6, 0)) {
		t.Fatal("second MarkReady returned true")
	}
	s.DeleteCheck("absent")
	s.SetRole(RoleExit)
	s.Beat("loop", time.Unix(7, 0))
	if fired(ch) {
		t.Fatal("a no-op signalled Changed")
	}
	if got := s.Load().FirstReadyAt; !got.Equal(time.Unix(5, 0)) {
		t.Fatalf("FirstReadyAt = %v, want the first one", got)
	}
	if got := s.Load().Heartbeats["loop"]; !got.Equal(time.Unix(7, 0)) {
		t.Fatalf("heartbeat not recorded: %v", got)
	}
	s.SetRole(RoleWorker)
	if !fired(ch) {
		t.Fatal("role change did not signal")
	}
}

func TestTailnetHelpers(t *testing.T) {
	tn := Tailnet{Peers: []Peer{{Online: true}, {Online: false}, {Online: true}}}
	if on, off := tn.PeerCounts(); on != 2 || off != 1 {
		t.Fatalf("PeerCounts = %d,%d", on, off)
	}
	if _, ok := tn.IPv4(); ok {
		t.Fatal("IPv4 found in empty list")
	}
}

func TestLocalAPIAnswered(t *testing.T) {
	s := New(time.Unix(0, 0), RoleNone)
	at := func() time.Time { return s.Load().Tailnet.LocalAPIAnsweredAt }
	ch := s.Changed()
	s.LocalAPIAnswered(time.Unix(10, 0))
	if fired(ch) {
		t.Error("LocalAPIAnswered signalled Changed")
	}
	if !at().Equal(time.Unix(10, 0)) {
		t.Errorf("LocalAPIAnsweredAt = %v, want 10s", at())
	}
	s.LocalAPIAnswered(time.Unix(5, 0))
	if !at().Equal(time.Unix(10, 0)) {
		t.Errorf("an earlier answer moved LocalAPIAnsweredAt back to %v", at())
	}
	// A full Tailnet from the watcher keeps the later answer...
	s.SetTailnet(Tailnet{BackendState: "Running"})
	if !at().Equal(time.Unix(10, 0)) || s.Load().Tailnet.BackendState != "Running" {
		t.Errorf("SetTailnet without an answer time: %+v", s.Load().Tailnet)
	}
	// ...or its own, when later.
	s.SetTailnet(Tailnet{LocalAPIAnsweredAt: time.Unix(20, 0)})
	if !at().Equal(time.Unix(20, 0)) {
		t.Errorf("LocalAPIAnsweredAt = %v, want 20s", at())
	}
	s.UpdateTailnet(func(tn *Tailnet) { tn.Connected = false })
	if !at().Equal(time.Unix(20, 0)) {
		t.Errorf("a lost connection reset LocalAPIAnsweredAt to %v", at())
	}
}

// TestPeerIndex: the Store's setters index the peers; Peer and PeerCounts
// give the same answers with and without the index, and a peer list
// replaced after the index was built is not looked up in it.
func TestPeerIndex(t *testing.T) {
	peers := []Peer{{ID: "n1", HostName: "a", Online: true}, {ID: "n2", HostName: "b"}, {ID: "n3", HostName: "c", Online: true}}
	st := New(time.Now(), RoleWorker)
	st.SetTailnet(Tailnet{Peers: peers})
	indexed := st.Load().Tailnet
	byHand := Tailnet{Peers: peers}
	if indexed.index() == nil || byHand.index() != nil {
		t.Fatal("the Store's Tailnet is not indexed, or one built by hand is")
	}
	for _, tn := range []Tailnet{indexed, byHand} {
		if p, ok := tn.Peer("n2"); !ok || p.HostName != "b" {
			t.Errorf("Peer(n2) = %+v, %v", p, ok)
		}
		if _, ok := tn.Peer("n9"); ok {
			t.Error("Peer(n9) found")
		}
		if on, off := tn.PeerCounts(); on != 2 || off != 1 {
			t.Errorf("PeerCounts = %d, %d; want 2, 1", on, off)
		}
	}
	replaced := indexed
	replaced.Peers = []Peer{{ID: "n9", HostName: "z"}, {ID: "n8"}, {ID: "n7"}}
	if p, ok := replaced.Peer("n9"); !ok || p.HostName != "z" {
		t.Errorf("after replacing the list: Peer(n9) = %+v, %v", p, ok)
	}
	st.UpdateTailnet(func(tn *Tailnet) { tn.Peers = append(slices.Clone(tn.Peers), Peer{ID: "n4", Online: true}) })
	if p, ok := st.Load().Tailnet.Peer("n4"); !ok || st.Load().Tailnet.index() == nil {
		t.Errorf("UpdateTailnet: Peer(n4) = %+v, %v; indexed %v", p, ok, st.Load().Tailnet.index() != nil)
	}
}
