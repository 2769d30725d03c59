// Package cluster runs a real Kubernetes cluster on the netns lab
// (test/lab) for the tests and `make demo-cluster`: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler on a control-plane node, and
// on every lab node a kubelet with its own containerd and runc, so that
// the DaemonSet controller creates the agent's pods, the scheduler binds
// them and kubelets run them with the manifests' probes, securityContext,
// hostPath volumes and Secret, from the image `make image` built.
//
// The binaries are built from the pinned k8s.io/kubernetes by
// test/tools/kubernetes/build.sh (`make kubernetes`) into
// bin/kubernetes-<version>/; etcd, containerd, runc, ctr and the CNI
// plugins are Debian's (etcd-server, containerd,
// containernetworking-plugins).
//
// # What each node is
//
// "hostNetwork" is the lab node's network namespace. Each node runs, in
// that namespace and a private mount namespace (tmpfs on /run and
// /var/lib, /var/log bound into the node's directory, since containerd 1.6
// and kubelet hard-code paths there), containerd (CRI, overlayfs, runc
// without systemd cgroups, restrict_oom_score_adj because the machine
// lacks CAP_SYS_RESOURCE) and a kubelet (cgroupfs on cgroup v1, its own
// cgroupRoot so that two kubelets never take each other's pods for
// orphans). Images are imported with ctr: there is no registry, and pods
// use imagePullPolicy Never. containerd's sandbox image is the lab pod
// image, tsna.test/labpod (labpod/), packaged by hack/image like the
// agent's image.
//
// The pod network is the CNI bridge plugin on cni0 with the lab node's
// pod CIDR (198.18.(128+i).0/24, routed back by the lab's router, no
// masquerade), so a pod reaches the internet with its own address unless
// the agent sends it through the exit node. Each node also gets what the
// cluster's setup would give it: IP forwarding on, and kube-proxy's DNAT
// of the kubernetes Service (APIServiceIP:443) to the API server, in the
// nftables table tsna-kube-proxy.
//
// # Control plane
//
// The API server (test/apiserver) listens on the control-plane node's LAN
// address with Node and RBAC authorization; each kubelet has a static
// token of system:node:NAME. The controller-manager and the scheduler run
// as the admin. Node objects are created before the kubelets register,
// with their pod CIDRs and Options.NodeLabels. The test process reaches
// the API server through the control-plane node's namespace
// (Cluster.Config dials there).
//
// # Teardown
//
// Close stops each kubelet, kills what containerd started (every process
// in the node's cgroups, then the shims in its network namespace), stops
// containerd and the mount namespace, removes the cgroups, then stops the
// control plane. It does not delete pods through the API: tests that
// want a graceful end delete them first.
package cluster
