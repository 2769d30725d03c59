package exitnode

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// simulate runs one monitor at interval against a peer that answers each
// ping after rtt, loses it with probability loss, and stops answering
// altogether from deadAt on (zero: never). It returns the first time the
// monitor found the peer down (zero: never) and the pings sent.
func simulate(t *testing.T, d Detection, interval, rtt time.Duration, loss float64, deadAt, end time.Duration, seed uint64) (downAt time.Duration, sent int) {
	t.Helper()
	rnd := rand.New(rand.NewPCG(seed, 1))
	m := &monitor{interval: interval}
	var answers []time.Duration // arrival times, sorted
	start := time.Unix(0, 0)
	at := func(x time.Duration) time.Time { return start.Add(x) }
	now := time.Duration(0)
	for now < end {
		// The next event: a ping due, an answer arriving, or the time the
		// monitor would be down.
		next := m.nextPing(d, at(now)).Sub(start)
		if m.nextPing(d, at(now)).IsZero() {
			next = now
		}
		if len(answers) > 0 && answers[0] < next {
			next = answers[0]
		}
		if da := m.downAt(d); !da.IsZero() && da.Sub(start) < next {
			next = da.Sub(start)
		}
		now = max(now, next)
		if m.down(d, at(now)) {
			return now, sent
		}
		for len(answers) > 0 && answers[0] <= now {
			m.answered(at(answers[0]), true, rtt, "")
			answers = answers[1:]
		}
		if due := m.nextPing(d, at(now)); !due.After(at(now)) {
			m.sent(at(now))
			sent++
			if (deadAt == 0 || now < deadAt) && rnd.Float64() >= loss {
				answers = append(answers, now+rtt)
				slices.Sort(answers)
			}
		}
	}
	return 0, sent
}

func TestDetectionFindsADeadPeer(t *testing.T) {
	d := DefaultDetection
	for _, seed := range []uint64{1, 2, 3, 4, 5} {
		// Cut at an arbitrary point of the ping schedule.
		cut := 10*time.Second + time.Duration(seed)*97*time.Millisecond
		down, _ := simulate(t, d, DefaultPingInterval, time.Millisecond, 0, cut, time.Minute, seed)
		if down == 0 {
			t.Fatalf("seed %d: a dead peer was never found down", seed)
		}
		// The detection is bounded by DownAfter from the last answer,
		// which came at most one interval before the cut.
		if took := down - cut; took > d.DownAfter || took < d.DownAfter-DefaultPingInterval {
			t.Errorf("seed %d: down %v after the cut, want between %v and %v", seed, took, d.DownAfter-DefaultPingInterval, d.DownAfter)
		}
	}
}

// One ping in three lost, for a simulated day: a live peer is never
// found down, while the quiet rate stays two pings a second.
func TestDetectionUnderRandomLoss(t *testing.T) {
	const day = 24 * time.Hour
	down, sent := simulate(t, DefaultDetection, DefaultPingInterval, time.Millisecond, 1.0/3, 0, day, 7)
	if down != 0 {
		t.Errorf("a live peer losing one ping in three was found down after %v", down)
	}
	perSecond := float64(sent) / day.Seconds()
	if perSecond > 4 {
		t.Errorf("%.1f pings a second under loss, want at most 4", perSecond)
	}
	t.Logf("%.2f pings a second", perSecond)
}

// A path slower than the ping interval, but alive, answers as often as it
// is pinged: it is never down, and pinged at the quiet rate.
func TestDetectionSlowPath(t *testing.T) {
	for _, rtt := range []time.Duration{300 * time.Millisecond, time.Second, 1400 * time.Millisecond} {
		down, sent := simulate(t, DefaultDetection, DefaultPingInterval, rtt, 0, 0, time.Hour, 1)
		if down != 0 {
			t.Errorf("rtt %v: found down after %v", rtt, down)
		}
		if perSecond := float64(sent) / time.Hour.Seconds(); perSecond > 2.1 {
			t.Errorf("rtt %v: %.1f pings a second, want the interval's 2", rtt, perSecond)
		}
	}
}

func TestMonitorNeedsEnoughPings(t *testing.T) {
	d := DefaultDetection
	t0 := time.Unix(0, 0)
	m := &monitor{interval: DefaultPingInterval}
	m.sent(t0)
	m.answered(t0, true, time.Millisecond, "")
	// Silent for long, but asked only twice (a paused loop, a coarse
	// fake clock): not down.
	m.sent(t0.Add(time.Minute))
	m.sent(t0.Add(time.Minute + time.Millisecond))
	if m.down(d, t0.Add(2*time.Minute)) {
		t.Error("down after 2 unanswered pings")
	}
	m.sent(t0.Add(2 * time.Minute))
	if m.down(d, t0.Add(2*time.Minute)) {
		t.Error("down before the third ping had Late to answer")
	}
	if !m.down(d, t0.Add(2*time.Minute+d.Late)) {
		t.Error("not down after 3 unanswered pings and the silence")
	}
	// An answer ends it.
	m.answered(t0.Add(2*time.Minute+d.Late), true, time.Millisecond, "")
	if m.down(d, t0.Add(2*time.Minute+d.Late)) || m.since != 0 {
		t.Errorf("still down after an answer (since %d)", m.since)
	}
}
