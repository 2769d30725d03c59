// Package deploy holds the tests of what an operator applies and builds:
// the kustomize base and overlays in deploy/daemonset, the monitoring objects
// in deploy/monitoring, the Dockerfile and the Makefile's image targets (the
// image built without an engine by hack/image must agree with the
// Dockerfile), and the version stamp of the tailscaled that make builds.
//
// The tests render every kustomization with the kustomize library, decode
// every object strictly into its Kubernetes API type (unknown or duplicate
// fields fail), and check the contract of DESIGN section 7: probes, pinned
// images, the downward API, least-privilege RBAC, a comment next to every
// added capability and next to privileged, and alerts that promtool checks
// and unit-tests (promtool comes from Debian's prometheus package).
//
// This package has no non-test code and must not grow any: it is not
// imported by the agent.
package deploy
