package deploy_test

import (
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// allowedCapabilities are the only capabilities the agent may add; each is
// explained next to it in daemonset.yaml (TestCapabilitiesAndPrivilegedAreExplained).
var allowedCapabilities = []corev1.Capability{"NET_ADMIN", "NET_RAW"}

// TestDaemonSet checks the DaemonSet of every variant against DESIGN
// section 7.
func TestDaemonSet(t *testing.T) {
	for _, v := range daemonSetVariants {
		t.Run(v.name, func(t *testing.T) {
			o := render(t, v.dir)
			if len(o.DaemonSets) != 1 {
				t.Fatalf("%d DaemonSets, want 1", len(o.DaemonSets))
			}
			checkDaemonSet(t, o, &o.DaemonSets[0], v.privileged)
		})
	}
}

func checkDaemonSet(t *testing.T, o objects, ds *appsv1.DaemonSet, wantPrivileged bool) {
	if ds.Namespace != agentNamespace {
		t.Errorf("DaemonSet in namespace %q, want %q", ds.Namespace, agentNamespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not select the pod template's labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	pod := &ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("hostNetwork is not true: tailscaled must own the node's routes and TUN device")
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want %q (ClusterFirst falls back to the node's resolver with hostNetwork)", pod.DNSPolicy, corev1.DNSClusterFirstWithHostNet)
	}
	if pod.HostPID || pod.HostIPC {
		t.Error("hostPID or hostIPC set: not needed")
	}
	if pod.ServiceAccountName != agentName || !slices.ContainsFunc(o.ServiceAccounts, func(sa corev1.ServiceAccount) bool {
		return sa.Name == pod.ServiceAccountName && sa.Namespace == ds.Namespace
	}) {
		t.Errorf("serviceAccountName %q is not the manifests' ServiceAccount %s/%s", pod.ServiceAccountName, ds.Namespace, agentName)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
	}) {
		t.Errorf("tolerations %v: want {operator: Exists} so that the agent runs on every node, control plane included", pod.Tolerations)
	}

	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		if err := checkPinned(c.Image); err != nil {
			t.Errorf("container %s: %v", c.Name, err)
		}
	}
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("%d containers and %d initContainers, want the agent container only", len(pod.Containers), len(pod.InitContainers))
	}
	c := &pod.Containers[0]
	checkDownwardAPI(t, c)
	checkProbes(t, c)
	checkResources(t, c)
	checkSecurityContext(t, c, wantPrivileged)
	checkVolumes(t, pod, c)
}

var (
	digestRef = regexp.MustCompile(`@sha256:[0-9a-f]{64}$`)
	tagRef    = regexp.MustCompile(`^[^@]+/[^/@]+:([\w][\w.-]{0,127})$`)
)

// checkPinned accepts an image with a digest, or with a tag that is not
// latest.
func checkPinned(image string) error {
	if digestRef.MatchString(image) {
		return nil
	}
	m := tagRef.FindStringSubmatch(image)
	switch {
	case m == nil:
		return fmt.Errorf("image %q is not pinned: give it a version tag or a digest", image)
	case m[1] == "latest":
		return fmt.Errorf("image %q uses the latest tag: pin a version or a digest", image)
	}
	return nil
}

func checkDownwardAPI(t *testing.T, c *corev1.Container) {
	want := map[string]string{
		"NODE_NAME":     "spec.nodeName",
		"POD_NAME":      "metadata.name",
		"POD_NAMESPACE": "metadata.namespace",
	}
	for _, e := range c.Env {
		field, ok := want[e.Name]
		if !ok {
			continue
		}
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field || e.Value != "" {
			t.Errorf("env %s: want valueFrom.fieldRef.fieldPath %s", e.Name, field)
		}
		delete(want, e.Name)
	}
	for name, field := range want {
		t.Errorf("env %s (downward API %s) missing", name, field)
	}
}

// checkProbes: startup, liveness and readiness probes are httpGet on
// /startupz, /livez and /readyz, on a named port of the container that is
// the port --listen binds.
func checkProbes(t *testing.T, c *corev1.Container) {
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		if p.Name == "" {
			t.Errorf("container port %d has no name", p.ContainerPort)
		}
		ports[p.Name] = p
	}
	listen, ok := argValue(c.Args, "--listen")
	if !ok {
		t.Fatal("no --listen argument: the probes' port must be explicit")
	}
	_, lport, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("--listen=%s: %v", listen, err)
	}
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", c.StartupProbe, "/startupz"},
		{"livenessProbe", c.LivenessProbe, "/livez"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
	} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe on %s", pr.kind, pr.path)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path {
			t.Errorf("%s: path %q, want %q", pr.kind, g.Path, pr.path)
		}
		if g.Scheme != "" && g.Scheme != corev1.URISchemeHTTP {
			t.Errorf("%s: scheme %s, the agent serves plain HTTP", pr.kind, g.Scheme)
		}
		if g.Port.Type != intstr.String {
			t.Errorf("%s: port %s is a number, want the container's named port", pr.kind, g.Port.String())
			continue
		}
		p, ok := ports[g.Port.StrVal]
		if !ok {
			t.Errorf("%s: port %q is not a port of the container", pr.kind, g.Port.StrVal)
			continue
		}
		if strconv.Itoa(int(p.ContainerPort)) != lport {
			t.Errorf("%s: port %s is %d but --listen=%s", pr.kind, p.Name, p.ContainerPort, listen)
		}
	}
	if s := c.StartupProbe; s != nil {
		// A new exit node logs in and waits for a human to approve its
		// routes: at least 5 minutes before kubelet restarts it.
		if budget := period(s) * threshold(s); budget < 300 {
			t.Errorf("startupProbe allows %ds (periodSeconds x failureThreshold), want at least 300s for login and route approval", budget)
		}
	}
	if l := c.LivenessProbe; l != nil && period(l)*threshold(l) < 20 {
		t.Errorf("livenessProbe restarts after %ds: too eager", period(l)*threshold(l))
	}
}

func period(p *corev1.Probe) int32 {
	if p.PeriodSeconds == 0 {
		return 10
	}
	return p.PeriodSeconds
}

func threshold(p *corev1.Probe) int32 {
	if p.FailureThreshold == 0 {
		return 3
	}
	return p.FailureThreshold
}

func checkResources(t *testing.T, c *corev1.Container) {
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("resources.requests.%s missing", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		t.Error("resources.limits.memory missing")
	}
	if lim, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		if req := c.Resources.Requests[corev1.ResourceMemory]; lim.Cmp(req) < 0 {
			t.Errorf("memory limit %s below request %s", lim.String(), req.String())
		}
	}
}

// checkSecurityContext: root with every capability dropped but the allowed
// ones, a read-only root filesystem, and privileged only where asked for.
func checkSecurityContext(t *testing.T, c *corev1.Container, wantPrivileged bool) {
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser: want 0 (netlink, TUN and nftables need root)")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem: want true")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Error("capabilities.drop: want [ALL]")
	} else {
		add := sc.Capabilities.Add
		if !slices.Contains(add, "NET_ADMIN") {
			t.Error("capabilities.add: NET_ADMIN missing (tailscaled's TUN device and routes)")
		}
		for _, cp := range add {
			if !slices.Contains(allowedCapabilities, cp) {
				t.Errorf("capabilities.add: %s is not needed (allowed: %v)", cp, allowedCapabilities)
			}
		}
	}
	privileged := sc.Privileged != nil && *sc.Privileged
	if privileged != wantPrivileged {
		t.Errorf("privileged=%v, want %v: only components/privileged makes the container privileged", privileged, wantPrivileged)
	}
	ape := sc.AllowPrivilegeEscalation
	switch {
	case privileged && ape != nil && !*ape:
		t.Error("privileged with allowPrivilegeEscalation: false: the API server rejects it")
	case !privileged && (ape == nil || *ape):
		t.Error("allowPrivilegeEscalation: want false")
	}
}

// checkVolumes: the state on a DirectoryOrCreate hostPath at --state-dir,
// /dev/net/tun from the node, the auth key from the Secret as the file
// --authkey-file names, the socket's directory mounted; no other hostPath.
func checkVolumes(t *testing.T, pod *corev1.PodSpec, c *corev1.Container) {
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	mountOf := func(dir string) (corev1.Volume, corev1.VolumeMount, bool) {
		for _, m := range c.VolumeMounts {
			if m.MountPath == dir {
				return vols[m.Name], m, true
			}
		}
		return corev1.Volume{}, corev1.VolumeMount{}, false
	}
	hostPaths := map[string]corev1.HostPathType{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil && v.HostPath.Type != nil {
			hostPaths[v.HostPath.Path] = *v.HostPath.Type
		} else if v.HostPath != nil {
			hostPaths[v.HostPath.Path] = ""
		}
	}
	wantHostPaths := map[string]corev1.HostPathType{
		"/var/lib/ts-node-agent": corev1.HostPathDirectoryOrCreate,
		"/dev/net/tun":           corev1.HostPathCharDev,
	}
	if !mapsEqual(hostPaths, wantHostPaths) {
		t.Errorf("hostPath volumes %v, want exactly %v", hostPaths, wantHostPaths)
	}

	stateDir, ok := argValue(c.Args, "--state-dir")
	if !ok {
		t.Error("no --state-dir argument")
	}
	if v, _, ok := mountOf(stateDir); !ok || v.HostPath == nil || v.HostPath.Path != "/var/lib/ts-node-agent" {
		t.Errorf("--state-dir=%s is not the state hostPath", stateDir)
	}
	if v, _, ok := mountOf("/dev/net/tun"); !ok || v.HostPath == nil || v.HostPath.Path != "/dev/net/tun" {
		t.Error("/dev/net/tun is not mounted from the node")
	}
	socket, ok := argValue(c.Args, "--socket")
	if !ok {
		t.Error("no --socket argument")
	}
	if v, m, ok := mountOf(path.Dir(socket)); !ok || v.EmptyDir == nil || m.ReadOnly {
		t.Errorf("the socket's directory %s is not a writable emptyDir", path.Dir(socket))
	}
	if _, _, ok := mountOf("/tmp"); !ok {
		t.Error("/tmp is not mounted: the root filesystem is read-only")
	}

	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s comes from a Secret: a credential must be a file, re-read at every login", e.Name)
		}
	}
	if token, ok := envValue(c, "TS_ID_TOKEN"); ok {
		checkProjectedToken(t, c, token, mountOf)
		return
	}
	keyFile, ok := argValue(c.Args, "--authkey-file")
	if !ok {
		t.Fatal("no --authkey-file argument: the auth key must come from the Secret as a file")
	}
	v, m, ok := mountOf(path.Dir(keyFile))
	switch {
	case !ok || v.Secret == nil:
		t.Errorf("--authkey-file=%s is not in a Secret volume", keyFile)
	case v.Secret.SecretName != authSecretName:
		t.Errorf("auth key Secret %q, want %q", v.Secret.SecretName, authSecretName)
	case !m.ReadOnly:
		t.Error("the auth key volume is not mounted read-only")
	default:
		found := false
		for _, it := range v.Secret.Items {
			if it.Key == authSecretKey && it.Path == path.Base(keyFile) {
				found = true
			}
		}
		if !found {
			t.Errorf("Secret %s key %s is not mounted as %s", authSecretName, authSecretKey, keyFile)
		}
		if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077 != 0 {
			t.Error("the auth key file is readable by other users: want defaultMode 0400")
		}
	}
}

// checkProjectedToken: workload identity reads TS_ID_TOKEN from a
// projected ServiceAccount token for TS_AUDIENCE, mounted read-only and
// refreshed by kubelet; there is no auth key Secret and no --authkey-file.
func checkProjectedToken(t *testing.T, c *corev1.Container, token string, mountOf func(string) (corev1.Volume, corev1.VolumeMount, bool)) {
	t.Helper()
	file, ok := strings.CutPrefix(token, "file:")
	if !ok {
		t.Fatalf("TS_ID_TOKEN=%s: want file:PATH of a projected token", token)
	}
	if _, ok := argValue(c.Args, "--authkey-file"); ok {
		t.Error("--authkey-file with workload identity: the agent refuses both")
	}
	aud, _ := envValue(c, "TS_AUDIENCE")
	v, m, ok := mountOf(path.Dir(file))
	if !ok || v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("TS_ID_TOKEN=%s is not a projected ServiceAccount token", token)
	}
	sat := v.Projected.Sources[0].ServiceAccountToken
	if sat.Path != path.Base(file) || sat.Audience == "" || sat.Audience != aud {
		t.Errorf("projected token path %q audience %q; want %q and TS_AUDIENCE %q", sat.Path, sat.Audience, path.Base(file), aud)
	}
	if sat.ExpirationSeconds == nil || *sat.ExpirationSeconds > 3600 {
		t.Error("the projected token lives longer than an hour: want expirationSeconds of at most 3600")
	}
	if !m.ReadOnly || v.Projected.DefaultMode == nil || *v.Projected.DefaultMode&0o077 != 0 {
		t.Error("the token is not mounted read-only with defaultMode 0400")
	}
}

// envValue returns the value of the container's env var name.
func envValue(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// argValue returns the value of --name=value or --name value in args.
func argValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestNamespacePodSecurity: the namespace says which Pod Security level it
// needs (privileged: hostNetwork, hostPath and NET_ADMIN are not baseline).
func TestNamespacePodSecurity(t *testing.T) {
	o := render(t, "deploy/daemonset/base")
	for _, ns := range o.Namespaces {
		if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
			t.Errorf("namespace %s: pod-security.kubernetes.io/enforce=%q, want privileged", ns.Name, got)
		}
	}
}

func TestCheckPinned(t *testing.T) {
	for image, ok := range map[string]bool{
		"ghcr.io/ts-node-agent/ts-node-agent:v0.1.0":           true,
		"ghcr.io/ts-node-agent/ts-node-agent:latest":           false,
		"ghcr.io/ts-node-agent/ts-node-agent":                  false,
		"localhost:5000/ts-node-agent":                         false,
		"localhost:5000/ts-node-agent:v1":                      true,
		"ghcr.io/x/y@sha256:" + strings.Repeat("a", 64):        true,
		"ghcr.io/x/y:latest@sha256:" + strings.Repeat("a", 64): true,
		"ghcr.io/x/y@sha256:abc":                               false,
	} {
		if err := checkPinned(image); (err == nil) != ok {
			t.Errorf("checkPinned(%q) = %v, want ok=%v", image, err, ok)
		}
	}
}
