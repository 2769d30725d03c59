package netcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// urlResult is the answer of one egress check URL: an IP or an error.
type urlResult struct {
	URL string
	IP  netip.Addr
	Err error
}

// egressVerdict is what one round of answers means.
type egressVerdict struct {
	// IP is the egress IP every answering URL agrees on; invalid when no
	// URL answered or they disagree.
	IP     netip.Addr
	OK     bool
	Reason string // why not OK; "" when OK
}

// evaluateEgress turns the answers of one round into a verdict: the URLs
// that answered must agree (URLs that failed while others answered are
// tolerated: one echo service down does not make the node unready), and
// with expected IPs the agreed IP must be one of them.
func evaluateEgress(results []urlResult, expected []netip.Addr) egressVerdict {
	var answered, failed []urlResult
	for _, r := range results {
		if r.Err != nil {
			failed = append(failed, r)
		} else {
			answered = append(answered, r)
		}
	}
	if len(answered) == 0 {
		return egressVerdict{Reason: "egress check failed: " + describeFailures(failed)}
	}
	ip := answered[0].IP
	for _, r := range answered[1:] {
		if r.IP != ip {
			says := make([]string, len(answered))
			for i, r := range answered {
				says[i] = r.URL + " says " + r.IP.String()
			}
			reason := "egress check URLs disagree: " + strings.Join(says, ", ")
			if len(failed) > 0 {
				reason += "; " + describeFailures(failed)
			}
			return egressVerdict{Reason: reason}
		}
	}
	if len(expected) > 0 && !slices.Contains(expected, ip) {
		return egressVerdict{IP: ip, Reason: fmt.Sprintf("egress IP is %s, expected %s", ip, describeExpected(expected))}
	}
	return egressVerdict{IP: ip, OK: true}
}

func describeFailures(failed []urlResult) string {
	parts := make([]string, len(failed))
	for i, r := range failed {
		parts[i] = r.URL + ": " + r.Err.Error()
	}
	return strings.Join(parts, "; ")
}

func describeExpected(expected []netip.Addr) string {
	if len(expected) == 1 {
		return expected[0].String()
	}
	s := make([]string, len(expected))
	for i, a := range expected {
		s[i] = a.String()
	}
	return "one of " + strings.Join(s, ", ")
}

// egressLoop runs an egress round at once, then every EgressInterval or
// on Trigger, until ctx is done.
func (c *Checker) egressLoop(ctx context.Context) {
	for {
		// A trigger that came before this round starts is served by it.
		select {
		case <-c.trigger:
		default:
		}
		c.egressRound(ctx)
		if !c.wait(ctx, c.opts.EgressInterval, c.trigger) {
			return
		}
	}
}

// egressRound asks every URL, then publishes the verdict.
func (c *Checker) egressRound(ctx context.Context) {
	start := c.clock.Now()
	passes := 1
	if c.opts.PodEgress {
		passes = 2 // the host's, then the pods' path (podRound)
	}
	c.setBusy(loopEgress, c.opts.EgressTimeout*time.Duration(passes*batches(len(c.opts.EgressURLs))))
	defer c.setBusy(loopEgress, 0)

	results := c.askAll(ctx, c.client)
	if ctx.Err() != nil {
		return // shutting down: the answers mean nothing
	}
	d := c.clock.Since(start)
	v := evaluateEgress(results, c.opts.ExpectedEgressIPs)
	c.record(v, results)
	c.observe(CheckEgressIP, d)
	c.publish(CheckEgressIP, snapshot.Check{OK: v.OK, Reason: v.Reason, Duration: d, CheckedAt: c.clock.Now()})
	c.podRound(ctx)
}

// askAll asks every URL through hc, at most maxParallel at once.
func (c *Checker) askAll(ctx context.Context, hc *http.Client) []urlResult {
	results := make([]urlResult, len(c.opts.EgressURLs))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for i, u := range c.opts.EgressURLs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ip, err := c.fetch(ctx, hc, u)
			results[i] = urlResult{URL: redact.URL(u), IP: ip, Err: err}
		})
	}
	wg.Wait()
	return results
}

// podRound is the egress-ip-pod check of a worker: the URLs asked from a
// source address inside the pod CIDR, so that the request takes a pod
// packet's path. Other roles have no such check.
func (c *Checker) podRound(ctx context.Context) {
	if !c.opts.PodEgress {
		return
	}
	if c.store.Load().Role != snapshot.RoleWorker {
		c.unpublish(CheckEgressIPPod)
		c.setPodIP(netip.Addr{})
		return
	}
	start := c.clock.Now()
	src, why := c.podSource()
	if !src.IsValid() {
		c.setPodIP(netip.Addr{})
		c.publish(CheckEgressIPPod, snapshot.Check{Skipped: true, Reason: why, CheckedAt: c.clock.Now()})
		return
	}
	results := c.askAll(ctx, defaultHTTPClient(c.podDial(src)))
	if ctx.Err() != nil {
		return
	}
	d := c.clock.Since(start)
	v := evaluateEgress(results, c.opts.ExpectedEgressIPs)
	if !v.OK {
		v.Reason = fmt.Sprintf("from pod source %s: %s", src, v.Reason)
	}
	c.setPodIP(v.IP)
	c.observe(CheckEgressIPPod, d)
	c.publish(CheckEgressIPPod, snapshot.Check{OK: v.OK, Reason: v.Reason, Duration: d, CheckedAt: c.clock.Now()})
}

// podSource is the source address of the egress-ip-pod check: the
// override, or the node's address inside one of its pod CIDRs (the CNI's
// gateway on the node). Without one, why says what is missing.
func (c *Checker) podSource() (src netip.Addr, why string) {
	if c.opts.PodEgressSource.IsValid() {
		return c.opts.PodEgressSource, ""
	}
	cidrs := c.store.Load().Cluster.OwnPodCIDRs
	if len(cidrs) == 0 {
		return netip.Addr{}, "no pod CIDR known (Node.spec.podCIDRs is empty or not read yet); set --pod-egress-source to a node address inside the pod network"
	}
	addrs, err := c.localAddrs()
	if err != nil {
		return netip.Addr{}, fmt.Sprintf("listing the node's addresses: %v", err)
	}
	for _, a := range addrs {
		if slices.ContainsFunc(cidrs, func(p netip.Prefix) bool { return p.Contains(a.Addr()) }) {
			return a.Addr(), ""
		}
	}
	var s []string
	for _, p := range cidrs {
		s = append(s, p.String())
	}
	return netip.Addr{}, fmt.Sprintf("no address of this node is inside its pod CIDRs %s (no CNI gateway yet); set --pod-egress-source", strings.Join(s, ", "))
}

// setPodIP moves egress_ip_info{from="pod"} to ip.
func (c *Checker) setPodIP(ip netip.Addr) {
	c.mu.Lock()
	old := c.podIP
	c.podIP = ip
	c.mu.Unlock()
	c.m.setEgressIP(fromPod, old, ip)
}

// record updates the egress IP, its metrics and the change count.
func (c *Checker) record(v egressVerdict, results []urlResult) {
	if v.IP.IsValid() {
		switch {
		case !c.lastObserved.IsValid():
			c.log.Info("egress IP observed", "ip", v.IP)
		case c.lastObserved != v.IP:
			c.m.egressChanges.Inc()
			c.log.Info("egress IP changed", "from", c.lastObserved, "to", v.IP)
		}
		c.lastObserved = v.IP
		if v.OK {
			for _, r := range results {
				if r.Err != nil {
					c.log.Warn("egress check URL failed; the others agree", "url", r.URL, "err", r.Err)
				}
			}
		}
	}
	c.mu.Lock()
	old := c.egressIP
	c.egressIP = v.IP
	c.mu.Unlock()
	c.m.setEgressIP(fromHost, old, v.IP)
	if c.m.egressMatch != nil {
		c.m.egressMatch.Set(boolGauge(v.IP.IsValid() && slices.Contains(c.opts.ExpectedEgressIPs, v.IP)))
	}
}

// fetch asks one URL for the caller's IP, within EgressTimeout.
func (c *Checker) fetch(ctx context.Context, hc *http.Client, u string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.EgressTimeout)
	defer cancel()
	addr, err := c.get(ctx, hc, u)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return netip.Addr{}, fmt.Errorf("no complete answer within %v", c.opts.EgressTimeout)
	}
	return addr, err
}

func (c *Checker) get(ctx context.Context, hc *http.Client, u string) (netip.Addr, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return netip.Addr{}, err
	}
	req.Header.Set("Accept", "text/plain, application/json;q=0.9, */*;q=0.1")
	req.Header.Set("User-Agent", "ts-node-agent-egress-check")
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is already in the reason
		}
		return netip.Addr{}, err
	}
	defer resp.Body.Close()
	// The status only: never the body (an error page, or whatever the
	// URL's server holds) nor the server's own reason phrase.
	switch code := resp.StatusCode; {
	case code >= 300 && code <= 399:
		return netip.Addr{}, fmt.Errorf("%s: redirects are not followed", httpStatus(code))
	case code < 200 || code > 299:
		return netip.Addr{}, errors.New(httpStatus(code))
	}
	if resp.ContentLength > MaxResponseBytes {
		return netip.Addr{}, errTooLarge
	}
	body, err := readBounded(resp.Body)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return netip.Addr{}, err
		}
		return netip.Addr{}, fmt.Errorf("reading the response: %w", err)
	}
	ct := resp.Header.Get("Content-Type")
	addr, err := ParseEgressResponse(ct, body)
	if err != nil {
		return netip.Addr{}, answerError(ct, body, err)
	}
	return addr, nil
}

// httpStatus names an HTTP status by its code and Go's text for it, never
// by the reason phrase the server sent.
func httpStatus(code int) string {
	if text := http.StatusText(code); text != "" {
		return fmt.Sprintf("HTTP %d %s", code, text)
	}
	return fmt.Sprintf("HTTP %d", code)
}

// answerError describes why a body is not an egress IP without quoting it:
// ParseEgressResponse's errors quote the body, and a reason or a log line
// must never carry what the URL's server answered (a token, an internal
// service's page). Only the media type of the answer is named.
func answerError(contentType string, body []byte, err error) error {
	trimmed := bytes.TrimSpace(body)
	switch {
	case errors.Is(err, errTooLarge):
		return err
	case len(trimmed) == 0:
		return errors.New("empty response")
	case trimmed[0] == '{':
		return errors.New(`the JSON answer has no valid "ip"`)
	}
	if _, perr := netip.ParseAddr(string(trimmed)); perr == nil {
		return errors.New("the answer is not a usable IP address (unspecified, or with a zone)")
	}
	if mt, _, perr := mime.ParseMediaType(contentType); perr == nil {
		return fmt.Errorf("the answer is not an IP address (content type %s)", mt)
	}
	return errors.New("the answer is not an IP address")
}

// batches is how many batches of maxParallel n jobs take.
func batches(n int) int { return max(1, (n+maxParallel-1)/maxParallel) }
