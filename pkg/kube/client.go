package kube

import (
	"fmt"
	"path/filepath"

	appsv1client "k8s.io/client-go/kubernetes/typed/apps/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	discoveryv1client "k8s.io/client-go/kubernetes/typed/discovery/v1"
	networkingv1client "k8s.io/client-go/kubernetes/typed/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client is the part of the Kubernetes API the agent uses: its four API
// groups, not client-go's whole Clientset, whose typed clients for every
// other group would only weigh on the binary and its resident memory.
// client-go's fake Clientset satisfies it.
type Client interface {
	CoreV1() corev1client.CoreV1Interface
	DiscoveryV1() discoveryv1client.DiscoveryV1Interface
	NetworkingV1() networkingv1client.NetworkingV1Interface
	AppsV1() appsv1client.AppsV1Interface
}

// clientset is the production Client: one HTTP client shared by the
// groups, as kubernetes.NewForConfig would.
type clientset struct {
	core       *corev1client.CoreV1Client
	discovery  *discoveryv1client.DiscoveryV1Client
	networking *networkingv1client.NetworkingV1Client
	apps       *appsv1client.AppsV1Client
}

func (c *clientset) CoreV1() corev1client.CoreV1Interface { return c.core }
func (c *clientset) DiscoveryV1() discoveryv1client.DiscoveryV1Interface {
	return c.discovery
}
func (c *clientset) NetworkingV1() networkingv1client.NetworkingV1Interface {
	return c.networking
}
func (c *clientset) AppsV1() appsv1client.AppsV1Interface { return c.apps }

// NewClient returns a Kubernetes client from kubeconfig (--kubeconfig,
// KUBECONFIG; a list of paths like KUBECONFIG's is merged), or from the
// in-cluster service account when kubeconfig is "". userAgent identifies
// the agent in API server logs and audit (for example
// "ts-node-agent/v1.2.3"). The client speaks protobuf, which is cheaper
// than JSON for Node lists and watches.
func NewClient(kubeconfig, userAgent string) (Client, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes in-cluster config (set --kubeconfig outside a pod): %w", err)
		}
	} else {
		rules := &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(kubeconfig)}
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	}
	if userAgent != "" {
		cfg.UserAgent = userAgent
	}
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	var c clientset
	if c.core, err = corev1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if c.discovery, err = discoveryv1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if c.networking, err = networkingv1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if c.apps, err = appsv1client.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &c, nil
}
