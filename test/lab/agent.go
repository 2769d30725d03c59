package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// AgentPort is where a lab agent serves probes and metrics, on the node's
// own loopback (every node namespace has its own).
const AgentPort = 9002

// AgentBinary finds the ts-node-agent binary: $TSNA_TEST_AGENT_BIN (set by
// `make`) or bin/ts-node-agent.
func AgentBinary() (string, error) { return Binary("TSNA_TEST_AGENT_BIN", "ts-node-agent") }

// Agent is a ts-node-agent process running in a lab node, supervising the
// node's tailscaled with a kernel TUN.
type Agent struct {
	Node *Node
	*Process
}

// AgentArgs are the flags StartAgent passes before the caller's: the lab's
// control server, the node's state dir and socket, kernel TUN, probes on
// the node's loopback.
func (l *Lab) AgentArgs(n *Node, role string) ([]string, error) {
	tsd, err := TailscaledBinary()
	if err != nil {
		return nil, err
	}
	return []string{
		"--role=" + role,
		"--login-server=" + l.ControlURL(),
		"--hostname=" + n.Name(),
		"--state-dir=" + n.StateDir(),
		"--socket=" + n.SocketPath(),
		"--tun=" + TUNName,
		"--tailscaled=" + tsd,
		"--tailscaled-arg=--no-logs-no-support",
		"--tailscaled-arg=--encrypt-state=false",
		fmt.Sprintf("--listen=127.0.0.1:%d", AgentPort),
		"--shutdown-timeout=5s",
		"--log-format=text",
	}, nil
}

// StartAgent runs ts-node-agent in node n with the given role (exit,
// worker, none) and extra flags. The auth key reaches it through
// TS_AUTHKEY, as in a pod.
func (l *Lab) StartAgent(n *Node, role string, extra ...string) (*Agent, error) {
	bin, err := AgentBinary()
	if err != nil {
		return nil, err
	}
	args, err := l.AgentArgs(n, role)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(n.StateDir(), 0o700); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	argv := append([]string{bin}, args...)
	argv = append(argv, extra...)
	env := append(n.TailscaledEnv(), "TS_AUTHKEY="+l.AuthKey())
	p, err := n.Start(argv, env)
	if err != nil {
		return nil, err
	}
	return &Agent{Node: n, Process: p}, nil
}

// Get fetches path (for example "/readyz?verbose") from the agent, from
// inside its namespace. It returns the status code and body.
func (a *Agent) Get(ctx context.Context, path string) (int, string, error) {
	url := fmt.Sprintf("http://127.0.0.1:%d%s", AgentPort, path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := a.Node.HTTPClient().Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b), err
}

// WaitStatus polls path until it answers want or ctx ends; it returns the
// last body. It stops early if the agent exits.
func (a *Agent) WaitStatus(ctx context.Context, path string, want int) (string, error) {
	var code int
	var body string
	var err error
	for {
		code, body, err = a.Get(ctx, path)
		if err == nil && code == want {
			return body, nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return body, fmt.Errorf("%s on %s: want %d: %w (last error %v)", path, a.Node.Name(), want, ctx.Err(), err)
			}
			return body, fmt.Errorf("%s on %s: want %d, last %d: %w\n%s", path, a.Node.Name(), want, code, ctx.Err(), body)
		case <-a.Done():
			return body, fmt.Errorf("agent on %s exited (%v) while waiting for %s %d", a.Node.Name(), a.Err(), path, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Metric returns the value of the first sample of /metrics whose line
// starts with series (a name, or a name with labels, e.g.
// `ts_node_agent_check_up{check="tun"}`).
func (a *Agent) Metric(ctx context.Context, series string) (string, bool) {
	_, body, err := a.Get(ctx, "/metrics")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimSpace(strings.TrimPrefix(line, series)), true
		}
	}
	return "", false
}

// MetricLines returns the /metrics lines starting with prefix.
func (a *Agent) MetricLines(ctx context.Context, prefix string) []string {
	_, body, err := a.Get(ctx, "/metrics")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return out
}
