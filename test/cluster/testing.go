package cluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// Start starts a cluster for t and closes it in t.Cleanup. It skips t when
// the machine lacks something (fails it when CI=true). When t has failed,
// the tail of every log is logged and the whole directory is kept under
// TSNA_CLUSTER_KEEP_DIR (default /tmp/tsna-cluster), named after the test
// (its first 17 characters: kubelet's and containerd's unix sockets live
// there, and their paths may not exceed 107 bytes), and its path logged.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if err := CheckHost(); err != nil {
		testenv.SkipOrFail(t, "real cluster: %v", err)
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	if opts.Dir == "" {
		keep := os.Getenv("TSNA_CLUSTER_KEEP_DIR")
		if keep == "" {
			keep = "/tmp/tsna-cluster"
		}
		if err := os.MkdirAll(keep, 0o755); err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(t.Name())
		if len(name) > 17 {
			name = name[:17]
		}
		dir, err := os.MkdirTemp(keep, name+"-")
		if err != nil {
			t.Fatal(err)
		}
		opts.Dir = dir
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("cluster: the logs of kubelet, containerd, the control plane and the pods are kept in %s", dir)
				return
			}
			os.RemoveAll(dir)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("real cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(t.Logf, 40)
		}
		if err := c.Close(); err != nil {
			t.Errorf("real cluster: close: %v", err)
		}
	})
	return c
}
