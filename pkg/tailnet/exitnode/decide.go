package exitnode

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Fallback is what a worker does when no candidate is healthy
// (--exit-fallback).
type Fallback string

// The fallback modes.
const (
	// FallbackBlock keeps an exit node set although it is unhealthy:
	// tailscaled keeps routing internet traffic to it, which blackholes
	// that traffic instead of leaking it (fail closed).
	FallbackBlock Fallback = "block"
	// FallbackDirect clears the exit node: internet traffic leaves the node
	// directly (fail open).
	FallbackDirect Fallback = "direct"
)

// MaxPingFailures is the least number of tailnet pings that must go
// unanswered, in a row, before a peer is down (DESIGN section 4). The
// Detection decides when; it sends many more in practice.
const MaxPingFailures = 3

// Switch reasons: the keys of State.Switches and snapshot.ExitNode.Switches
// (the reason label of ts_node_agent_exit_node_switches_total).
const (
	// ReasonInitial is the first choice after start (or after the node
	// became a worker).
	ReasonInitial = "initial"
	// ReasonOffline: control reports the current exit node offline, or it
	// left the peer list.
	ReasonOffline = "offline"
	// ReasonPing: the current exit node stopped answering tailnet pings
	// (Detection).
	ReasonPing = "ping"
	// ReasonNotOffered: the current exit node no longer offers an approved
	// exit node.
	ReasonNotOffered = "not-offered"
	// ReasonNotCandidate: the exit node in use is none of the candidates
	// (for example one set before the agent started, kept by block).
	ReasonNotCandidate = "not-candidate"
	// ReasonFailback: a better candidate stayed healthy for FailbackAfter.
	ReasonFailback = "failback"
	// ReasonRecovery: a candidate became healthy while the fallback was in
	// force.
	ReasonRecovery = "recovery"
)

// Health is what Decide knows of one peer.
type Health struct {
	Online  bool // control reports the peer online
	Offered bool // the peer offers an exit node that control approved
	// PingDown: the peer's tailnet pings went unanswered long enough
	// (Detection); Silence is for how long, Unanswered how many were sent
	// in that time.
	PingDown   bool
	Silence    time.Duration
	Unanswered int
	LastPingOK bool // the last tailnet ping was answered (false before the first)
}

// Healthy reports whether a peer in this state can be used as exit node:
// offered and approved, online, and not down by its pings. A peer not
// pinged yet is healthy.
func (h Health) Healthy() bool {
	return h.Offered && h.Online && !h.PingDown
}

// Input is everything Decide looks at besides the State.
type Input struct {
	// Candidates are the resolved candidates, best first (Resolve).
	Candidates []snapshot.Peer
	// Health of the candidates and of the current exit node, by peer ID.
	// A peer without an entry is not in the tailnet's peer list.
	Health map[string]Health
	// CurrentID is the exit node tailscaled's prefs use now, "" for none.
	// Decide only uses it before its first choice: FallbackBlock keeps it.
	CurrentID string
	// FailbackAfter is how long a better candidate must stay healthy
	// before the selection fails back to it.
	FailbackAfter time.Duration
	// Fallback is the mode with no healthy candidate; "" means
	// FallbackBlock.
	Fallback Fallback
}

// State is what Decide remembers between calls. The zero value is the
// state before the first decision. Decide never modifies the maps of the
// State it is given.
type State struct {
	// Chosen is true once an exit node has been chosen (or, with
	// FallbackBlock, kept).
	Chosen bool
	// Current is the exit node ID in use, "" for none.
	Current string
	// Fallback is the fallback in force after the last decision, "" when a
	// healthy exit node is in use.
	Fallback Fallback
	// Reason is the reason of the last switch, Detail its explanation.
	Reason     string
	Detail     string
	SwitchedAt time.Time
	// Switches counts switches by reason.
	Switches map[string]uint64
	// HealthySince is, for every candidate that is healthy, since when it
	// has been healthy without interruption (as seen by Decide).
	HealthySince map[string]time.Time
}

// Decision is the outcome of one Decide call.
type Decision struct {
	// ExitNodeID is the exit node to use, "" for none.
	ExitNodeID string
	// Switched is true when this decision changed the choice; From is the
	// previous exit node ("" for none) and Reason why.
	Switched bool
	From     string
	Reason   string
	// Healthy is true when ExitNodeID is a healthy candidate.
	Healthy bool
	// Fallback is the fallback in force, "" when Healthy.
	Fallback Fallback
	// BlockImpossible is true when FallbackBlock is in force but there is
	// no exit node to block with: no candidate resolved and none was ever
	// used. Internet traffic then goes direct; the agent reports it (not
	// ready, a warning) rather than invent an exit node.
	BlockImpossible bool
	// Detail explains the decision to an operator.
	Detail string
}

// Decide chooses the exit node (DESIGN section 4). It is pure: the same
// arguments give the same result, and st is not modified.
//
//   - A candidate is healthy when Health.Healthy.
//   - The first choice is the first healthy candidate (ReasonInitial).
//   - The current exit node is down when it is not healthy (offline per
//     control or gone, no longer offered, down by its pings) or
//     no longer a candidate; Decide then switches to the first healthy
//     candidate at once, with the reason of the failure.
//   - A candidate earlier than the current one is failed back to once it
//     has been healthy for FailbackAfter without interruption and its
//     last ping was answered (ReasonFailback). A flap restarts the wait.
//   - With no healthy candidate, in.Fallback applies; the choice is then
//     never healthy. FallbackBlock keeps the current exit node; before any
//     choice it keeps in.CurrentID, else takes the first candidate even if
//     unhealthy, else reports BlockImpossible. FallbackDirect clears the
//     exit node.
//   - Leaving the fallback for a healthy candidate is ReasonRecovery.
func Decide(st State, in Input, now time.Time) (Decision, State) {
	d := decider{st: st, in: in, now: now, pos: map[string]int{}}
	for i, p := range in.Candidates {
		if _, dup := d.pos[p.ID]; !dup {
			d.pos[p.ID] = i
		}
	}
	next := st
	next.HealthySince = map[string]time.Time{}
	for _, p := range in.Candidates {
		if d.healthy(p.ID) {
			if t, ok := st.HealthySince[p.ID]; ok {
				next.HealthySince[p.ID] = t
			} else {
				next.HealthySince[p.ID] = now
			}
		}
	}
	d.next = next
	return d.decide()
}

type decider struct {
	st   State
	next State // st with HealthySince updated
	in   Input
	now  time.Time
	pos  map[string]int // candidate ID -> index
}

func (d *decider) healthy(id string) bool {
	h, ok := d.in.Health[id]
	return ok && h.Healthy()
}

func (d *decider) isCandidate(id string) bool {
	_, ok := d.pos[id]
	return ok
}

func (d *decider) fallback() Fallback {
	if d.in.Fallback == "" {
		return FallbackBlock
	}
	return d.in.Fallback
}

// name is how id is shown in Detail.
func (d *decider) name(id string) string {
	if id == "" {
		return "none"
	}
	if i, ok := d.pos[id]; ok {
		return peerName(d.in.Candidates[i])
	}
	return id
}

// down returns why id cannot be used, as a switch reason and a phrase.
func (d *decider) down(id string) (reason, why string) {
	h, ok := d.in.Health[id]
	switch {
	case !ok:
		return ReasonOffline, "is not in the peer list"
	case !h.Online:
		return ReasonOffline, "is offline"
	case !h.Offered:
		return ReasonNotOffered, "does not offer an approved exit node"
	case h.PingDown:
		return ReasonPing, fmt.Sprintf("answered none of %d tailnet pings in %v", h.Unanswered, h.Silence.Round(time.Millisecond))
	case !d.isCandidate(id):
		return ReasonNotCandidate, "is not an exit node candidate"
	}
	return "", "is healthy"
}

func (d *decider) decide() (Decision, State) {
	st, in := d.st, d.in
	cur := ""
	if st.Chosen {
		cur = st.Current
	}
	best := ""
	for _, p := range in.Candidates {
		if d.healthy(p.ID) {
			best = p.ID
			break
		}
	}

	// The current exit node is fine: stay, or fail back to a better one.
	if cur != "" && d.isCandidate(cur) && d.healthy(cur) {
		for _, p := range in.Candidates[:d.pos[cur]] {
			since, ok := d.next.HealthySince[p.ID]
			if ok && d.now.Sub(since) >= in.FailbackAfter && in.Health[p.ID].LastPingOK {
				return d.switchTo(p.ID, ReasonFailback, fmt.Sprintf(
					"%s has been healthy for %v (--failback-after %v): failing back from %s",
					d.name(p.ID), d.now.Sub(since), in.FailbackAfter, d.name(cur)))
			}
		}
		next := d.next
		next.Fallback = ""
		if st.Fallback != "" {
			next.Detail = d.name(cur) + " is healthy again"
		}
		return Decision{ExitNodeID: cur, Healthy: true, Detail: next.Detail}, next
	}

	// The current exit node (if any) is down: fail over.
	if best != "" {
		switch {
		case !st.Chosen:
			return d.switchTo(best, ReasonInitial, d.name(best)+" is the first healthy candidate")
		case st.Fallback != "" || cur == "":
			return d.switchTo(best, ReasonRecovery, fmt.Sprintf(
				"%s is healthy: leaving --exit-fallback=%s", d.name(best), d.fallback()))
		}
		reason, why := d.down(cur)
		return d.switchTo(best, reason, fmt.Sprintf(
			"%s %s: switching to %s, the first healthy candidate", d.name(cur), why, d.name(best)))
	}

	// No healthy candidate: fall back.
	problems := d.problems()
	if d.fallback() == FallbackDirect {
		detail := fmt.Sprintf("no healthy exit node candidate (%s): --exit-fallback=direct cleared the exit node, internet traffic goes direct", problems)
		if cur != "" {
			reason, _ := d.down(cur)
			dec, next := d.switchTo("", reason, detail)
			dec.Fallback, next.Fallback = FallbackDirect, FallbackDirect
			return dec, next
		}
		next := d.next
		next.Current, next.Fallback = "", FallbackDirect
		return Decision{Fallback: FallbackDirect, Detail: detail}, next
	}

	keep := cur
	if keep == "" {
		keep = in.CurrentID
	}
	switch {
	case keep != "":
		next := d.next
		next.Chosen, next.Current, next.Fallback = true, keep, FallbackBlock
		detail := fmt.Sprintf("no healthy exit node candidate (%s): --exit-fallback=block keeps %s so internet traffic stays blocked", problems, d.name(keep))
		return Decision{ExitNodeID: keep, Fallback: FallbackBlock, Detail: detail}, next
	case len(in.Candidates) > 0:
		first := in.Candidates[0].ID
		dec, next := d.switchTo(first, ReasonInitial, fmt.Sprintf(
			"no healthy exit node candidate (%s): --exit-fallback=block uses %s, the first candidate, so internet traffic stays blocked",
			problems, d.name(first)))
		dec.Healthy, dec.Fallback, next.Fallback = false, FallbackBlock, FallbackBlock
		return dec, next
	}
	next := d.next
	next.Current, next.Fallback = "", FallbackBlock
	return Decision{
		Fallback:        FallbackBlock,
		BlockImpossible: true,
		Detail: "no exit node candidate: no peer named by --exit-nodes offers an approved exit node, " +
			"so --exit-fallback=block has no exit node to block with and internet traffic goes direct",
	}, next
}

// switchTo makes id the choice for reason, counting the switch.
func (d *decider) switchTo(id, reason, detail string) (Decision, State) {
	from := d.in.CurrentID
	if d.st.Chosen {
		from = d.st.Current
	}
	next := d.next
	next.Chosen = true
	next.Current = id
	next.Fallback = ""
	next.Reason = reason
	next.Detail = detail
	next.SwitchedAt = d.now
	next.Switches = maps.Clone(d.st.Switches)
	if next.Switches == nil {
		next.Switches = map[string]uint64{}
	}
	next.Switches[reason]++
	return Decision{
		ExitNodeID: id,
		Switched:   true,
		From:       from,
		Reason:     reason,
		Healthy:    id != "" && d.healthy(id),
		Detail:     detail,
	}, next
}

// problems lists why each candidate is unhealthy, for Detail.
func (d *decider) problems() string {
	const maxListed = 4
	if len(d.in.Candidates) == 0 {
		return "no peer named by --exit-nodes offers an approved exit node"
	}
	var parts []string
	for i, p := range d.in.Candidates {
		if i == maxListed {
			parts = append(parts, fmt.Sprintf("and %d more", len(d.in.Candidates)-maxListed))
			break
		}
		_, why := d.down(p.ID)
		parts = append(parts, d.name(p.ID)+" "+why)
	}
	return strings.Join(parts, "; ")
}
