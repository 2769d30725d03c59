package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ts-node-agent/ts-node-agent/test/apiserver"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// LabPodImage is the image of the lab's pods: containerd's sandbox image
// on every node, and the workload of EgressPod (see labpod/main.go).
const LabPodImage = "tsna.test/labpod:v1"

// ServiceCIDR is the cluster's Service range; the kubernetes Service is
// its first address, APIServiceIP. APIServerVIP is the API server's
// address with ExternalControlPlane: off the nodes' LAN, routed to the
// control-plane node, as a load balancer's or a managed control plane's.
var (
	ServiceCIDR  = netip.MustParsePrefix("198.18.96.0/24")
	APIServiceIP = netip.MustParseAddr("198.18.96.1")
	APIServerVIP = netip.MustParseAddr("198.18.64.10")
)

// Options configure New.
type Options struct {
	// Lab is the lab whose nodes become the cluster's Nodes. Every lab
	// node runs a kubelet with its own containerd.
	Lab *lab.Lab
	// ControlPlane is the lab node that also runs etcd, kube-apiserver,
	// kube-controller-manager and kube-scheduler, as on a kubeadm or k3s
	// server. Default: the first node.
	ControlPlane string
	// ExternalControlPlane makes the control-plane node run no kubelet,
	// and the API server listen on APIServerVIP, off the LAN: like a
	// managed control plane or an API server behind a load balancer, no
	// node address and no LAN route covers it.
	ExternalControlPlane bool
	// NodeLabels are extra labels of the Node objects, by node name. The
	// harness creates each Node (with its labels and its lab pod CIDR)
	// before its kubelet registers, as a provisioning tool would.
	NodeLabels map[string]map[string]string
	// Images are OCI archives imported into every node's containerd
	// (namespace k8s.io) before its kubelet starts, tagged by their
	// io.containerd.image.name annotation. The lab pod image always is.
	Images []string
	// Dir holds every file: certificates, kubeconfigs, containerd and
	// kubelet state and the logs. Default: a new temporary directory,
	// removed by Close unless KeepDir.
	Dir string
	// KeepDir keeps Dir after Close (the logs of a failed test).
	KeepDir bool
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Cluster is a running control plane plus one kubelet per lab node.
type Cluster struct {
	opts    Options
	dir     string
	ownDir  bool
	cp      *lab.Node
	apiAddr netip.Addr // where the API server listens
	api     *apiserver.Server
	nodes   []*Node

	mu     sync.Mutex
	stops  []func() error // the control plane's processes, last started first
	closed bool
}

// Node is a lab node with its kubelet and containerd.
type Node struct {
	*lab.Node
	c          *Cluster
	dir        string
	cgroupRoot string
	token      string
	holderPid  int
	kubelet    *apiserver.Process
	stops      []func() error // holder, containerd, kubelet
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf("cluster: "+format, args...)
	}
}

// New starts the control plane in the control-plane node's namespace and
// a containerd and kubelet on every node, and waits until every Node is
// Ready. The caller must Close the cluster.
func New(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Lab == nil || len(opts.Lab.Nodes()) == 0 {
		return nil, errors.New("cluster: Options.Lab with at least one node is required")
	}
	if err := CheckHost(); err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, dir: opts.Dir}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "tsna-cluster-"); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		c.ownDir = true
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if opts.ControlPlane == "" {
		c.cp = opts.Lab.Nodes()[0]
	} else if c.cp = opts.Lab.Node(opts.ControlPlane); c.cp == nil {
		return nil, fmt.Errorf("cluster: control plane %q is not a lab node", opts.ControlPlane)
	}
	start := time.Now()
	if err := c.startControlPlane(ctx); err != nil {
		return nil, err
	}
	labpod, err := c.buildLabPodImage(ctx)
	if err != nil {
		return nil, err
	}
	images := append([]string{labpod}, opts.Images...)
	for _, ln := range opts.Lab.Nodes() {
		if ln == c.cp && opts.ExternalControlPlane {
			continue
		}
		n, err := c.addNode(ctx, ln, images)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return nil, err
	}
	// The controller-manager's: without it no Pod can be created in default.
	if err := c.WaitServiceAccount(ctx, "default", "default"); err != nil {
		return nil, err
	}
	c.logf("%d nodes Ready in %v", len(c.nodes), time.Since(start).Round(time.Millisecond))
	return c, nil
}

// CheckHost returns an error naming what this machine lacks to run a
// cluster: root, the Kubernetes binaries, containerd, runc, ctr, the CNI
// plugins, nsenter, unshare and nft.
func CheckHost() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces, containerd, kubelet)")
	}
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"} {
		p, err := apiserver.KubernetesBinary(name)
		if err != nil {
			return err
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, name+" at "+p+" (make kubernetes)")
		}
	}
	for _, bin := range []string{"etcd", "containerd", "ctr", "runc", "nsenter", "unshare", "nft", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" (apt-get install -y etcd-server containerd nftables iproute2 util-linux)")
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir, plugin)); err != nil {
			missing = append(missing, "CNI plugin "+plugin+" in "+CNIBinDir+" (apt-get install -y containernetworking-plugins)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("cluster: missing %s", strings.Join(missing, "; "))
	}
	return nil
}

// CNIBinDir is where Debian's containernetworking-plugins installs them.
const CNIBinDir = "/usr/lib/cni"

// startControlPlane starts etcd and kube-apiserver (test/apiserver, in the
// control-plane node's namespace on its LAN address), then the
// controller-manager and the scheduler.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	addr := c.cp.Addr()
	if c.opts.ExternalControlPlane {
		if err := c.cp.AddRoutedAddr(APIServerVIP); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		addr = APIServerVIP
	}
	c.apiAddr = addr
	var users []apiserver.User
	for _, n := range c.opts.Lab.Nodes() { // a token for cp too, unused when external
		users = append(users, apiserver.User{Name: "system:node:" + n.Name(), Groups: []string{"system:nodes"}})
	}
	api, err := apiserver.New(ctx, apiserver.Options{
		Users: users,
		Dir:   filepath.Join(c.dir, "control-plane"),
		Wrap:  []string{"nsenter", "--net=/run/netns/" + c.cp.NSName(), "--"},
		// Where kubelets and pods reach it, and what the kubernetes
		// Service's endpoints say.
		Address:    addr.String(),
		ServingIPs: []string{APIServiceIP.String()},
		Dial:       c.cp.DialContext,
		ExtraArgs: []string{
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--endpoint-reconciler-type=lease",
			"--service-cluster-ip-range=" + ServiceCIDR.String(),
			// kubectl logs and the node proxy dial the node's address, not
			// its name (nothing resolves lab node names).
			"--kubelet-preferred-address-types=InternalIP",
		},
		Logf: c.opts.Logf,
	})
	if err != nil {
		return fmt.Errorf("cluster: control plane: %w", err)
	}
	c.api = api
	cpDir := api.Dir()
	admin := api.Kubeconfig(api.AdminToken())
	wrap := []string{"--net=/run/netns/" + c.cp.NSName(), "--"}
	for _, p := range []struct {
		name string
		args []string
	}{
		{"kube-controller-manager", []string{
			"--kubeconfig=" + admin,
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=false",
			// The kube-root-ca.crt ConfigMap of every namespace (projected
			// ServiceAccount tokens need it) and the tokens' signing key.
			"--root-ca-file=" + filepath.Join(cpDir, "ca.crt"),
			"--service-account-private-key-file=" + filepath.Join(cpDir, "sa.key"),
			"--service-cluster-ip-range=" + ServiceCIDR.String(),
			// Pod CIDRs come from the lab's topology (Node objects are
			// created with them); no cloud, no node IPAM.
			"--allocate-node-cidrs=false",
			"--v=1",
		}},
		{"kube-scheduler", []string{
			"--kubeconfig=" + admin,
			"--leader-elect=false",
			"--secure-port=0",
			"--v=1",
		}},
	} {
		bin, err := apiserver.KubernetesBinary(p.name)
		if err != nil {
			return err
		}
		proc, err := apiserver.StartProcess("nsenter", filepath.Join(cpDir, p.name+".log"), append(slices.Clone(wrap), append([]string{bin}, p.args...)...), nil)
		if err != nil {
			return fmt.Errorf("cluster: start %s: %w", p.name, err)
		}
		c.mu.Lock()
		c.stops = append(c.stops, func() error { return proc.Stop(15 * time.Second) })
		c.mu.Unlock()
		c.logf("started %s in %s", p.name, c.cp.Name())
	}
	return nil
}

// addNode creates the Node object, the kube-proxy stand-in, containerd and
// the kubelet of lab node ln.
func (c *Cluster) addNode(ctx context.Context, ln *lab.Node, images []string) (_ *Node, err error) {
	n := &Node{
		Node:       ln,
		c:          c,
		dir:        filepath.Join(c.dir, "nodes", ln.Name()),
		cgroupRoot: "/tsna-" + c.opts.Lab.ID() + "-" + ln.Name(),
		token:      c.api.UserToken("system:node:" + ln.Name()),
	}
	if err := os.MkdirAll(filepath.Join(n.dir, "log"), 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	// A node that fails half-way is not in c.nodes: stop what it started.
	defer func() {
		if err != nil {
			n.stop()
		}
	}()
	if err := c.createNode(ctx, n); err != nil {
		return nil, err
	}
	if err := n.prepareNetwork(ctx); err != nil {
		return nil, err
	}
	if err := n.writeFiles(); err != nil {
		return nil, err
	}
	if err := makeCgroupRoot(n.cgroupRoot); err != nil {
		return nil, err
	}
	if err := n.start(ctx, images); err != nil {
		return nil, err
	}
	return n, nil
}

// createNode creates the Node object with the node's pod CIDR and labels;
// the kubelet then registers onto it and adds its default labels.
func (c *Cluster) createNode(ctx context.Context, n *Node) error {
	cidr := n.PodCIDR().String()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name(), Labels: c.opts.NodeLabels[n.Name()]},
		Spec:       corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
	}
	if _, err := c.Client().CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("cluster: create Node %s: %w", n.Name(), err)
	}
	return nil
}

// prepareNetwork does for the node what a cluster's setup does: IP
// forwarding on (kubeadm requires it), the wan router's route to the
// node's pod CIDR (a routed pod network, as with flannel's host-gw or
// Calico's BGP), and kube-proxy's rule for the kubernetes Service: DNAT
// of APIServiceIP:443 to the API server.
func (n *Node) prepareNetwork(ctx context.Context) error {
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := n.WriteSysctl(s, "1"); err != nil {
			return fmt.Errorf("cluster: %s: %w", n.Name(), err)
		}
	}
	if err := n.RoutePodCIDR(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	dst := fmt.Sprintf("%s:%d", n.c.apiAddr, n.c.api.Port())
	rules := fmt.Sprintf(`table ip tsna-kube-proxy {
	chain prerouting { type nat hook prerouting priority dstnat; ip daddr %[1]s tcp dport 443 dnat to %[2]s; }
	chain output { type nat hook output priority -100; ip daddr %[1]s tcp dport 443 dnat to %[2]s; }
}
`, APIServiceIP, dst)
	rulesFile := filepath.Join(n.dir, "kube-proxy.nft")
	if err := os.WriteFile(rulesFile, []byte(rules), 0o644); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if _, err := n.Exec(ctx, "nft", "-f", rulesFile); err != nil {
		return fmt.Errorf("cluster: %s: kube-proxy rules: %w", n.Name(), err)
	}
	return nil
}

func (n *Node) path(name string) string { return filepath.Join(n.dir, name) }

// writeFiles writes containerd's config, the CNI config, the kubelet's
// config and kubeconfig, and a resolv.conf for pods.
func (n *Node) writeFiles() error {
	cidr := n.PodCIDR()
	gw := cidr.Addr().Next()
	files := map[string]string{
		"containerd.toml": fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  # The machine lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj to
  # what CRI asks for (-998), only keep it at or above containerd's own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[5]q
    conf_dir = %[6]q
`, n.path("containerd/root"), n.path("containerd/state"), n.path("containerd.sock"), LabPodImage, CNIBinDir, n.path("cni")),
		// A routed bridge network: pods keep their addresses up to the
		// node's uplink, where the node (or the agent's masquerade into
		// the tailnet) decides.
		"cni/10-lab.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "lab",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
`, n.path("cni-ipam"), cidr, gw),
		// Nothing answers DNS in the lab: lab URLs are IP literals.
		"resolv.conf": "nameserver 127.0.0.1\noptions ndots:1\n",
		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 and PID 1 is not systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
# Every kubelet of the lab shares the machine's cgroup hierarchies: each
# keeps its pods under its own root, or one would remove the others' pods
# as orphans.
cgroupRoot: %[1]s
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
resolvConf: %[4]s
podLogsDir: %[5]s
# Imported images are all there is (no registry): never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The machine's disk is shared by everything; do not evict on its usage.
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
localStorageCapacityIsolation: false
serializeImagePulls: false
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
`, n.cgroupRoot, n.path("containerd.sock"), n.Addr(), n.path("resolv.conf"), n.path("pod-logs")),
	}
	for name, content := range files {
		p := n.path(name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	return nil
}

// start runs, in the node's network namespace and a private mount
// namespace: a holder process that owns the mount namespace (tmpfs on
// /run and /var/lib, /var/log bound to the node's directory: containerd
// 1.6 and kubelet hard-code paths there), containerd, the image imports,
// and the kubelet. nsenter --net, not `ip netns exec`, which remounts
// /sys and loses the cgroup v1 mounts that kubelet needs.
func (n *Node) start(ctx context.Context, images []string) error {
	netns := "--net=/run/netns/" + n.NSName()
	holderScript := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mount --bind %q /var/log
echo ready
exec sleep infinity
`, n.path("log"))
	holderLog := n.path("mount-namespace.log")
	// nsenter, unshare (without --fork) and sh all exec: the child the
	// harness started is the holder, and its pid names the namespace.
	holder, err := apiserver.StartProcess("nsenter", holderLog,
		[]string{netns, "--", "unshare", "--mount", "--propagation", "slave", "sh", "-c", holderScript}, nil)
	if err != nil {
		return fmt.Errorf("cluster: %s: mount namespace: %w", n.Name(), err)
	}
	n.stops = append(n.stops, func() error { return holder.Stop(5 * time.Second) })
	if err := waitHolder(ctx, holder, holderLog); err != nil {
		return fmt.Errorf("cluster: %s: mount namespace: %w", n.Name(), err)
	}
	n.holderPid = holder.Pid()
	enter := []string{netns, fmt.Sprintf("--mount=/proc/%d/ns/mnt", n.holderPid), "--"}

	containerd, err := apiserver.StartProcess("nsenter", n.path("containerd.log"),
		append(slices.Clone(enter), "containerd", "--config", n.path("containerd.toml")), nil)
	if err != nil {
		return fmt.Errorf("cluster: %s: start containerd: %w", n.Name(), err)
	}
	n.stops = append(n.stops, func() error { return containerd.Stop(10 * time.Second) })
	if err := waitSocket(ctx, n.path("containerd.sock"), 30*time.Second); err != nil {
		return fmt.Errorf("cluster: %s: containerd: %w\n%s", n.Name(), err, tail(n.path("containerd.log"), 20))
	}
	for _, img := range images {
		out, err := exec.CommandContext(ctx, "ctr", "--address", n.path("containerd.sock"), "-n", "k8s.io", "images", "import", img).CombinedOutput()
		if err != nil {
			return fmt.Errorf("cluster: %s: ctr images import %s: %w: %s", n.Name(), img, err, out)
		}
	}

	kubelet, err := apiserver.KubernetesBinary("kubelet")
	if err != nil {
		return err
	}
	kl, err := apiserver.StartProcess("nsenter", n.path("kubelet.log"), append(slices.Clone(enter), kubelet,
		"--config="+n.path("kubelet.yaml"),
		"--kubeconfig="+n.c.api.Kubeconfig(n.token),
		"--hostname-override="+n.Name(),
		"--node-ip="+n.Addr().String(),
		"--root-dir="+n.path("kubelet"),
		"--v=1",
	), nil)
	if err != nil {
		return fmt.Errorf("cluster: %s: start kubelet: %w", n.Name(), err)
	}
	n.kubelet = kl
	n.stops = append(n.stops, func() error { return kl.Stop(15 * time.Second) })
	n.c.logf("%s: containerd and kubelet started (%d images imported)", n.Name(), len(images))
	return nil
}

// waitHolder waits until the holder script has made its mounts.
func waitHolder(ctx context.Context, holder *apiserver.Process, logPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		b, _ := os.ReadFile(logPath)
		if bytes.Contains(b, []byte("\nready\n")) {
			return nil
		}
		select {
		case <-holder.Done():
			return fmt.Errorf("the holder exited: %s", b)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %s", b)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not appear within %v", path, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitNodesReady waits until every Node reports Ready.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last string
	for {
		list, err := c.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			var notReady []string
			for _, n := range c.nodes {
				select {
				case <-n.kubelet.Done():
					return fmt.Errorf("cluster: %s: kubelet exited\n%s", n.Name(), tail(n.path("kubelet.log"), 15))
				default:
				}
				if !nodeReady(list.Items, n.Name()) {
					notReady = append(notReady, n.Name())
				}
			}
			if len(notReady) == 0 {
				return nil
			}
			last = "not Ready: " + strings.Join(notReady, ", ")
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			var logs []string
			for _, n := range c.nodes {
				logs = append(logs, n.Name()+" kubelet:\n"+tail(n.path("kubelet.log"), 15))
			}
			return fmt.Errorf("cluster: nodes not Ready within 2m (%s)\n%s", last, strings.Join(logs, "\n"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WaitServiceAccount waits until the controller-manager (or anyone) has
// created the ServiceAccount namespace/name.
func (c *Cluster) WaitServiceAccount(ctx context.Context, namespace, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := c.Client().CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: no ServiceAccount %s/%s within a minute (%v)\n%s", namespace, name, err,
				tail(filepath.Join(c.api.Dir(), "kube-controller-manager.log"), 15))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func nodeReady(nodes []corev1.Node, name string) bool {
	for _, n := range nodes {
		if n.Name != name {
			continue
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue
			}
		}
	}
	return false
}

// Config is an admin client configuration (it dials through the
// control-plane node's namespace).
func (c *Cluster) Config() *rest.Config { return c.api.AdminConfig() }

// Client is an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.api.AdminClient() }

// APIServerAddr is the address the API server listens on: the
// control-plane node's LAN address, or APIServerVIP.
func (c *Cluster) APIServerAddr() netip.Addr { return c.apiAddr }

// APIServer is the control plane's etcd and kube-apiserver.
func (c *Cluster) APIServer() *apiserver.Server { return c.api }

// Nodes are the cluster's nodes, in the lab's order.
func (c *Cluster) Nodes() []*Node { return slices.Clone(c.nodes) }

// Node returns the named node, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.nodes {
		if n.Name() == name {
			return n
		}
	}
	return nil
}

// Dir is the directory with every file of the cluster.
func (c *Cluster) Dir() string { return c.dir }

// Logs returns the paths of the log files of the control plane, every
// containerd and kubelet.
func (c *Cluster) Logs() []string {
	var logs []string
	if c.api != nil {
		for _, name := range []string{"etcd.log", "kube-apiserver.log", "kube-controller-manager.log", "kube-scheduler.log"} {
			logs = append(logs, filepath.Join(c.api.Dir(), name))
		}
	}
	for _, n := range c.nodes {
		logs = append(logs, n.path("containerd.log"), n.path("kubelet.log"))
	}
	return logs
}

// DumpLogs logs the last lines of every log of Logs.
func (c *Cluster) DumpLogs(logf func(format string, args ...any), lines int) {
	for _, p := range c.Logs() {
		rel, _ := filepath.Rel(c.dir, p)
		logf("cluster: last %d lines of %s:\n%s", lines, rel, tail(p, lines))
	}
}

// Close stops every kubelet and containerd and what they ran, then the
// control plane, and removes the directory New created (unless KeepDir).
// Pods are not deleted through the API first: call DeletePods for a
// graceful end. It is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	stops := c.stops
	c.mu.Unlock()
	var errs []error
	for _, n := range slices.Backward(c.nodes) {
		errs = append(errs, n.stop())
	}
	for _, stop := range slices.Backward(stops) {
		errs = append(errs, stop())
	}
	if c.api != nil {
		errs = append(errs, c.api.Close())
	}
	if c.ownDir && !c.opts.KeepDir {
		errs = append(errs, os.RemoveAll(c.dir))
	} else if c.opts.KeepDir {
		c.logf("kept %s (logs: nodes/*/{kubelet,containerd}.log, control-plane/*.log)", c.dir)
	}
	return errors.Join(errs...)
}

// stop stops the kubelet, then kills what containerd ran (the processes
// of the node's cgroups, and the shims in its network namespace), then
// containerd and the mount namespace's holder, and removes the cgroups.
func (n *Node) stop() error {
	var errs []error
	stops := n.stops
	if len(stops) == 3 {
		errs = append(errs, stops[2]()) // kubelet
		stops = stops[:2]
	}
	errs = append(errs, killCgroupTree(n.cgroupRoot))
	errs = append(errs, n.killNetNSProcesses(n.holderPid))
	for _, stop := range slices.Backward(stops) {
		errs = append(errs, stop())
	}
	errs = append(errs, removeCgroupTree(n.cgroupRoot))
	return errors.Join(errs...)
}
