package apiserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// pki is what the harness generates for one server: a CA, a serving
// certificate for 127.0.0.1 and localhost signed by it, and the
// service-account signing key pair. ECDSA P-256 throughout: fast to
// generate, and kube-apiserver signs service-account tokens with ES256.
type pki struct {
	caPEM          []byte
	servingCertPEM []byte
	servingKeyPEM  []byte
	saKeyPEM       []byte
	saPubPEM       []byte
}

func newPKI(extraIPs ...net.IP) (*pki, error) {
	srv, err := tstest.NewServingCert("ts-node-agent test apiserver CA", "kube-apiserver",
		append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, extraIPs...),
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return nil, err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saKeyDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	return &pki{
		caPEM:          srv.CAPEM,
		servingCertPEM: srv.CertPEM,
		servingKeyPEM:  srv.KeyPEM,
		saKeyPEM:       tstest.PEM("PRIVATE KEY", saKeyDER),
		saPubPEM:       tstest.PEM("PUBLIC KEY", saPubDER),
	}, nil
}
