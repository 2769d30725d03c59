// Command labpod is the one program of test/cluster's small image,
// tsna.test/labpod: containerd's sandbox ("pause") image on every lab
// node, and the workload pod whose egress the cluster tests watch.
//
//	labpod pause         wait for SIGTERM or SIGINT; reap children (PID 1 of a pod sandbox)
//	labpod egress URL    GET URL every second and print "egress <answer>" or
//	                     "egress error <reason>", until SIGTERM or SIGINT
//
// The echo service of the lab answers GET / with the caller's IP, so
// kubectl logs of the egress pod are the pod's egress IP over time.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch {
	case len(os.Args) == 2 && os.Args[1] == "pause":
		pause(ctx)
	case len(os.Args) == 3 && os.Args[1] == "egress":
		egress(ctx, os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "usage: labpod pause | labpod egress URL")
		os.Exit(2)
	}
}

// pause waits for a signal and reaps every child that exits meanwhile
// (a sandbox's PID 1 inherits the orphans of the pod's PID namespace).
func pause(ctx context.Context) {
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)
	for {
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-chld:
		}
	}
}

// egress asks url every second and prints what it answered.
func egress(ctx context.Context, url string) {
	hc := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		fmt.Println("egress " + ask(ctx, hc, url))
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func ask(ctx context.Context, hc *http.Client, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "error " + err.Error()
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "error " + err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "error " + err.Error()
	}
	if resp.StatusCode != http.StatusOK {
		return "error " + resp.Status
	}
	return strings.TrimSpace(string(body))
}
