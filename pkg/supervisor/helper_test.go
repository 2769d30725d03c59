//go:build linux

package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// The test binary doubles as a fake tailscaled: with GO_WANT_HELPER_PROCESS=1
// it runs helperMain in the mode named by HELPER_MODE instead of the tests.
const (
	helperWant = "GO_WANT_HELPER_PROCESS"
	helperMode = "HELPER_MODE"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperWant) == "1" {
		os.Exit(helperMain(os.Getenv(helperMode)))
	}
	os.Exit(m.Run())
}

// helperEnv is the environment of a fake tailscaled in mode, plus extra
// HELPER_* settings.
func helperEnv(mode string, extra ...string) []string {
	env := append(os.Environ(), helperWant+"=1", helperMode+"="+mode)
	return append(env, extra...)
}

// helperMain is the fake tailscaled. Modes:
//
//	run           print a line to stdout and stderr, listen on --socket, exit 0 on SIGTERM
//	print         print assorted lines (long, CRLF, unterminated), listen, exit 0 on SIGTERM
//	term-default  listen, no SIGTERM handler (dies by SIGTERM)
//	term-exit     listen, exit $HELPER_EXIT on SIGTERM
//	ignore-term   ignore SIGTERM, listen; with HELPER_GRANDCHILD=1 first start a
//	              child in its process group and print "grandchild=<pid>"
//	crash         print "crashing", exit $HELPER_EXIT (default 1) at once
//	orphans       start $HELPER_ORPHANS children in their own process groups that
//	              exit once orphaned, print "orphan=<pid>" for each, exit $HELPER_EXIT
//	orphan-child  wait until its parent is no longer $HELPER_PARENT, then exit 0
//	sleep         sleep until killed
//	agent         run a Supervisor of a "run" child on $HELPER_SOCKET, print
//	              "child=<pid>" when it is ready, run until killed
func helperMain(mode string) int {
	socket := flagValue(os.Args[1:], "--socket")
	exitCode := envInt("HELPER_EXIT", 1)
	switch mode {
	case "run":
		term := notifyTerm()
		fmt.Println("hello stdout")
		fmt.Fprintln(os.Stderr, "hello stderr")
		listen(socket)
		<-term
		return 0
	case "print":
		term := notifyTerm()
		fmt.Println("line one")
		fmt.Print("crlf line\r\n")
		fmt.Println(strings.Repeat("x", MaxLineBytes+3000))
		fmt.Println("after long")
		fmt.Println()
		fmt.Fprintln(os.Stderr, "stderr line")
		fmt.Print("tail without newline")
		listen(socket)
		<-term
		return 0
	case "term-default":
		listen(socket)
		sleepForever()
	case "term-exit":
		term := notifyTerm()
		listen(socket)
		<-term
		return exitCode
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		if os.Getenv("HELPER_GRANDCHILD") == "1" {
			c := exec.Command(os.Args[0])
			c.Env = helperEnv("sleep")
			if err := c.Start(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			fmt.Printf("grandchild=%d\n", c.Process.Pid)
		}
		listen(socket)
		sleepForever()
	case "crash":
		fmt.Println("crashing")
		return exitCode
	case "orphans":
		for range envInt("HELPER_ORPHANS", 1) {
			c := exec.Command(os.Args[0])
			c.Env = helperEnv("orphan-child", fmt.Sprintf("HELPER_PARENT=%d", os.Getpid()))
			c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := c.Start(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			fmt.Printf("orphan=%d\n", c.Process.Pid)
		}
		return exitCode
	case "orphan-child":
		parent := envInt("HELPER_PARENT", 0)
		for deadline := time.Now().Add(time.Minute); os.Getppid() == parent && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		return 0
	case "sleep":
		sleepForever()
	case "agent":
		return helperAgent()
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

func helperAgent() int {
	dir := os.Getenv("HELPER_DIR")
	opts := Options{
		Tailscaled:      os.Args[0],
		StateDir:        dir,
		Socket:          dir + "/ts.sock",
		TUN:             UserspaceNetworking,
		ShutdownTimeout: DefaultShutdownTimeout,
		Backoff:         DefaultBackoff,
	}
	ready := make(chan int, 1)
	sup, err := New(opts, snapshot.New(time.Now(), snapshot.RoleNone),
		WithEnv(helperEnv("run")),
		WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))),
		WithOnReady(func(pid int) { ready <- pid }))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	go func() { fmt.Printf("child=%d\n", <-ready) }()
	if err := sup.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return 1
}

func notifyTerm() <-chan os.Signal {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM)
	return c
}

// listen serves the unix socket at path (if any) like tailscaled's LocalAPI:
// it removes a stale file, then accepts and hangs up.
func listen(path string) {
	if path == "" {
		return
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}
