package exitnode

import "time"

// Detection is how a peer's pings decide that it is down. A dead exit
// node must be found within about two seconds, but one ping in three may
// be lost at random and a path may be slow without being dead. So the
// judgement is on silence, not on single pings:
//
//   - A peer is pinged at its interval while it answers (the exit node
//     in use, the standby and better candidates every PingInterval).
//   - It is late when no answer arrived for its interval plus Late: from then on
//     it is pinged every Reprobe, so that a lost ping is repeated at once
//     and a dead peer is asked many times before it is declared dead.
//   - It is down when no answer arrived for DownAfter although at least
//     MaxPingFailures pings were sent in that time, each Late before now.
//
// Under random loss of one ping in three, a live peer is declared down
// only when every one of about a dozen pings in a row is lost: about once
// in a million seconds. A slow path still answers every Interval (the
// answers arrive late, but as often as the pings leave), so it is never
// silent for long.
//
// The zero value is not useful: start from DefaultDetection.
type Detection struct {
	Late      time.Duration // grace after Interval before re-pinging
	Reprobe   time.Duration // pings while late
	DownAfter time.Duration // silence that makes the peer down
}

// DefaultDetection is the detection of DESIGN section 4.
var DefaultDetection = Detection{
	Late:      250 * time.Millisecond,
	Reprobe:   50 * time.Millisecond,
	DownAfter: 1500 * time.Millisecond,
}

// monitor is what the Selector knows of the pings to one peer. Only the
// Run goroutine uses it.
type monitor struct {
	interval time.Duration // pause between pings while it answers
	started  time.Time     // first ping sent, zero before
	lastOK   time.Time     // last answer arrived, zero before the first
	lastSent time.Time
	inFlight int
	// early are the send times of the first MaxPingFailures pings sent
	// since the silence began (silentSince), n of them.
	early [MaxPingFailures]time.Time
	n     int
	since int // pings sent since the silence began

	failures int           // pings that failed since the last answer
	ok       bool          // the last completed ping was answered
	err      string        // error of the last failed ping
	latency  time.Duration // of the last answered ping

	published time.Time // when a result was last published
	pubOK     bool
}

// silentSince is when the current silence began: the last answer, or the
// first ping before any answer.
func (m *monitor) silentSince() time.Time {
	if !m.lastOK.IsZero() {
		return m.lastOK
	}
	return m.started
}

// sent records a ping sent at now.
func (m *monitor) sent(now time.Time) {
	if m.started.IsZero() {
		m.started = now
	}
	m.lastSent = now
	m.inFlight++
	m.since++
	if m.n < len(m.early) {
		m.early[m.n] = now
		m.n++
	}
}

// answered records the outcome of a ping that completed at now.
func (m *monitor) answered(now time.Time, ok bool, latency time.Duration, err string) {
	m.inFlight--
	if !ok {
		m.failures++
		m.ok, m.err = false, err
		return
	}
	m.ok, m.err, m.latency = true, "", latency
	m.failures = 0
	if now.After(m.lastOK) {
		m.lastOK = now
		m.n, m.since = 0, 0 // the pings in flight were sent before the answer
	}
}

// downAt is when the peer is (or will be, if it stays silent) down; zero
// when it is not being pinged or too few pings were sent yet.
func (m *monitor) downAt(d Detection) time.Time {
	if m.started.IsZero() || m.n < MaxPingFailures {
		return time.Time{}
	}
	at := m.silentSince().Add(d.DownAfter)
	if third := m.early[MaxPingFailures-1].Add(d.Late); third.After(at) {
		at = third
	}
	return at
}

// down reports whether the peer is down at now.
func (m *monitor) down(d Detection, now time.Time) bool {
	at := m.downAt(d)
	return !at.IsZero() && !now.Before(at)
}

// lateAt is when the peer is late if it stays silent.
func (m *monitor) lateAt(d Detection) time.Time {
	return m.silentSince().Add(m.interval + d.Late)
}

// nextPing is when the peer should be pinged next; zero means at once.
func (m *monitor) nextPing(d Detection, now time.Time) time.Time {
	if m.started.IsZero() {
		return time.Time{}
	}
	late := m.lateAt(d)
	if !now.Before(late) && !m.down(d, now) {
		// Late: re-ping at once when it became late, then every Reprobe.
		return maxTime(late, m.lastSent.Add(d.Reprobe))
	}
	next := m.lastSent.Add(m.interval)
	if late.After(now) && late.Before(next) {
		next = late // wake when it becomes late
	}
	return next
}

// answering reports whether the peer answered a ping and is not down: a
// lost ping alone does not make it fail its check.
func (m *monitor) answering(d Detection, now time.Time) bool {
	return !m.lastOK.IsZero() && !m.down(d, now)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
