package kube

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client is the part of the Kubernetes API the agent uses: six resources,
// and of each only the verbs it calls. Of its Pod and its DaemonSet the
// agent reads the metadata alone (PartialObjectMetadata, through
// k8s.io/client-go/metadata), so the apps group is not linked at all.
//
// It is not client-go's typed clients on purpose. Those, even one group's,
// import k8s.io/client-go/kubernetes/scheme, which registers every API
// group Kubernetes has (56 packages of generated types, codecs and their
// init-time registration) in every binary that links them: most of the
// agent's binary and of its resident memory. The production Client is
// a REST client per group over a scheme with those groups alone; tests
// wrap client-go's fake Clientset, whose typed clients have the same
// methods.
type Client interface {
	Nodes() ListWatcher[*corev1.NodeList]
	EndpointSlices(namespace string) ListWatcher[*discoveryv1.EndpointSliceList]
	ServiceCIDRs() ListWatcher[*networkingv1.ServiceCIDRList]
	Events(namespace string) Creator[*corev1.Event]
	Pods(namespace string) Getter[*metav1.PartialObjectMetadata]
	DaemonSets(namespace string) Getter[*metav1.PartialObjectMetadata]
}

// ListWatcher lists and watches one resource, for an informer.
type ListWatcher[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Getter reads one object by name.
type Getter[T runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
}

// Creator creates objects.
type Creator[T runtime.Object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
}

// scheme holds the three API groups the agent decodes, and the meta types
// (Status, watch events, list options) every API response may carry: what
// k8s.io/client-go/kubernetes/scheme registers, minus the other groups.
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	utilruntime.Must(corev1.AddToScheme(scheme))
	utilruntime.Must(discoveryv1.AddToScheme(scheme))
	utilruntime.Must(networkingv1.AddToScheme(scheme))
}

// clientset is the production Client: one REST client per API group it
// decodes and a metadata client, all sharing one HTTP client, as
// kubernetes.NewForConfigAndClient would.
type clientset struct {
	core, discovery, networking rest.Interface
	metadata                    metadata.Interface
}

func (c *clientset) Nodes() ListWatcher[*corev1.NodeList] {
	return &resource[*corev1.Node, *corev1.NodeList]{c.core, "nodes", "", newNode, newNodeList}
}

func (c *clientset) EndpointSlices(namespace string) ListWatcher[*discoveryv1.EndpointSliceList] {
	return &resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList]{c.discovery, "endpointslices", namespace, newEndpointSlice, newEndpointSliceList}
}

func (c *clientset) ServiceCIDRs() ListWatcher[*networkingv1.ServiceCIDRList] {
	return &resource[*networkingv1.ServiceCIDR, *networkingv1.ServiceCIDRList]{c.networking, "servicecidrs", "", newServiceCIDR, newServiceCIDRList}
}

func (c *clientset) Events(namespace string) Creator[*corev1.Event] {
	return &resource[*corev1.Event, *corev1.EventList]{c.core, "events", namespace, newEvent, nil}
}

func (c *clientset) Pods(namespace string) Getter[*metav1.PartialObjectMetadata] {
	return metadataGetter{c.metadata.Resource(corev1.SchemeGroupVersion.WithResource("pods")).Namespace(namespace)}
}

func (c *clientset) DaemonSets(namespace string) Getter[*metav1.PartialObjectMetadata] {
	gvr := schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	return metadataGetter{c.metadata.Resource(gvr).Namespace(namespace)}
}

// metadataGetter is a metadata client's Get without subresources.
type metadataGetter struct{ r metadata.ResourceInterface }

func (g metadataGetter) Get(ctx context.Context, name string, opts metav1.GetOptions) (*metav1.PartialObjectMetadata, error) {
	return g.r.Get(ctx, name, opts)
}

func newNode() *corev1.Node                                { return &corev1.Node{} }
func newNodeList() *corev1.NodeList                        { return &corev1.NodeList{} }
func newEndpointSlice() *discoveryv1.EndpointSlice         { return &discoveryv1.EndpointSlice{} }
func newEndpointSliceList() *discoveryv1.EndpointSliceList { return &discoveryv1.EndpointSliceList{} }
func newServiceCIDR() *networkingv1.ServiceCIDR            { return &networkingv1.ServiceCIDR{} }
func newServiceCIDRList() *networkingv1.ServiceCIDRList    { return &networkingv1.ServiceCIDRList{} }
func newEvent() *corev1.Event                              { return &corev1.Event{} }

// resource is the typed client of one resource (T, its list L), in one
// namespace or cluster-scoped (""): the requests of client-go's generic
// typed client (k8s.io/client-go/gentype), protobuf first. Not gentype
// itself: its package holds client-go's fakes too, and links
// k8s.io/client-go/testing and through it managed fields, strategic merge
// patches and OpenAPI models, none of which the agent runs.
type resource[T, L runtime.Object] struct {
	client    rest.Interface
	name      string // "nodes"
	namespace string
	newObject func() T
	newList   func() L
}

func (r *resource[T, L]) request(verb *rest.Request) *rest.Request {
	return verb.UseProtobufAsDefault().
		NamespaceIfScoped(r.namespace, r.namespace != "").
		Resource(r.name)
}

func (r *resource[T, L]) List(ctx context.Context, opts metav1.ListOptions) (L, error) {
	out := r.newList()
	err := r.request(r.client.Get()).VersionedParams(&opts, parameterCodec).Timeout(timeout(opts)).Do(ctx).Into(out)
	return out, err
}

func (r *resource[T, L]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.request(r.client.Get()).VersionedParams(&opts, parameterCodec).Timeout(timeout(opts)).Watch(ctx)
}

func (r *resource[T, L]) Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error) {
	out := r.newObject()
	err := r.request(r.client.Post()).VersionedParams(&opts, parameterCodec).Body(obj).Do(ctx).Into(out)
	return out, err
}

// timeout is a list or watch call's own timeout, as the server applies it.
func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}

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
	return NewClientForConfig(cfg)
}

// NewClientForConfig returns a Client for cfg, speaking protobuf.
func NewClientForConfig(cfg *rest.Config) (Client, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	var c clientset
	for _, g := range []struct {
		client  *rest.Interface
		gv      schema.GroupVersion
		apiPath string
	}{
		{&c.core, corev1.SchemeGroupVersion, "/api"},
		{&c.discovery, discoveryv1.SchemeGroupVersion, "/apis"},
		{&c.networking, networkingv1.SchemeGroupVersion, "/apis"},
	} {
		// What a generated typed client's NewForConfigAndClient builds
		// for its group: cfg with the group's version and path, and the
		// agent's scheme as the serializer.
		gc := *cfg
		gc.GroupVersion = &g.gv
		gc.APIPath = g.apiPath
		gc.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
		if *g.client, err = rest.RESTClientForConfigAndClient(&gc, hc); err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", g.gv, err)
		}
	}
	if c.metadata, err = metadata.NewForConfigAndClient(cfg, hc); err != nil {
		return nil, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	return &c, nil
}
