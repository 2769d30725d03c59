# ts-node-agent. `make help` lists the targets.

SHELL := /bin/bash
GO ?= go
TS_VERSION := $(shell $(GO) list -m -f '{{.Version}}' tailscale.com)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TSBIN := bin/tailscale-$(TS_VERSION)
AGENT := bin/ts-node-agent
LDFLAGS := -s -w -X main.version=$(VERSION)
# Tailscale's feature tags for what the agent never runs in its own process:
# the event bus's debug web pages (tsweb, html/template, net/http/pprof)
# and in-process system policy (MDM). tailscaled is built without them.
# cmd/ts-node-agent's TestBinaryLinks reads this line.
AGENT_TAGS := ts_omit_debugeventbus,ts_omit_syspolicy
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath
# Tests find the real tailscaled (and the agent) through these.
export TS_NODE_AGENT_TAILSCALED := $(CURDIR)/$(TSBIN)/tailscaled
export TSNA_TEST_TAILSCALE_CLI := $(CURDIR)/$(TSBIN)/tailscale
export TSNA_TEST_CONTAINERBOOT := $(CURDIR)/$(TSBIN)/containerboot
export TSNA_TEST_AGENT_BIN := $(CURDIR)/$(AGENT)
# test/cluster runs the image `make image-oci` built (recursive: IMAGE and
# OCI_ARCHIVE are defined below).
export TSNA_TEST_IMAGE = $(IMAGE)
export TSNA_TEST_IMAGE_ARCHIVE = $(CURDIR)/$(OCI_ARCHIVE)
TEST_TIMEOUT ?= 40m
DEMO_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: tailscaled ## build bin/ts-node-agent (and tailscaled at the pinned version)
	$(GOBUILD) -tags '$(AGENT_TAGS)' -ldflags '$(LDFLAGS)' -o $(AGENT) ./cmd/ts-node-agent

# The version tailscaled, tailscale and containerboot report (`tailscaled
# --version`), stamped with the variables tailscale's build_dist.sh sets: a
# build from the module cache has no VCS information and would report
# 1.102.5-ERR-BuildInfo. The module zip names no commit, so the long form is
# the bare version too, as for a release build without a commit stamp.
TS_VERSION_SHORT = $(patsubst v%,%,$(TS_VERSION))
TS_LDFLAGS = -X tailscale.com/version.longStamp=$(TS_VERSION_SHORT) -X tailscale.com/version.shortStamp=$(TS_VERSION_SHORT)

.PHONY: tailscaled
tailscaled: $(TSBIN)/.done ## build tailscaled, tailscale and containerboot at the pinned version into bin/ (cached)

# The cache key of $(TSBIN): go.mod, go.sum and .ldflags, which holds
# TS_LDFLAGS and is rewritten only when they change. A $(TSBIN) built
# before the version stamps has no .ldflags, so it is rebuilt once.
$(TSBIN)/.ldflags: FORCE
	@mkdir -p $(@D); if [ "$$(cat $@ 2>/dev/null)" != '$(TS_LDFLAGS)' ]; then echo '$(TS_LDFLAGS)' > $@; fi

$(TSBIN)/.done: go.mod go.sum $(TSBIN)/.ldflags
	@echo "building tailscaled $(TS_VERSION) into $(TSBIN) (cached; ~3 minutes the first time)"
	@mkdir -p $(TSBIN)
	$(GOBUILD) -ldflags '$(TS_LDFLAGS)' -o $(TSBIN)/ tailscale.com/cmd/tailscaled tailscale.com/cmd/tailscale tailscale.com/cmd/containerboot
	@touch $@

.PHONY: FORCE
FORCE:

.PHONY: kubernetes
kubernetes: ## build kube-apiserver, kube-controller-manager, kube-scheduler and kubelet for the tests into bin/kubernetes-<version>/ (cached; ~20 minutes cold)
	test/tools/kubernetes/build.sh

.PHONY: kube-apiserver
kube-apiserver: ## build only kube-apiserver (enough for test/apiserver and test/deploy) into bin/kubernetes-<version>/ (cached; ~12 minutes cold)
	test/tools/kubernetes/build.sh kube-apiserver

.PHONY: test
test: build kubernetes image-oci ## run every test: unit, real tailscaled, real Kubernetes, the image on kubelets, netns (needs root; CI runs as root), then the fuzzers briefly
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(GO) test -count=1 -race -timeout $(TEST_TIMEOUT) ./pkg/snapshot/ ./pkg/probe/ ./pkg/metrics/ ./pkg/supervisor/ ./pkg/config/
	$(MAKE) --no-print-directory fuzz

# The fuzz targets: package:Target. `make fuzz FUZZTIME=2000000x` fuzzes
# longer. An execution count, not a duration: with a duration, Go 1.26's
# fuzz coordinator can fail a target with "context deadline exceeded" when
# the time runs out under load (go.dev/issue/75804, fixed in Go 1.27).
FUZZ_TARGETS := ./pkg/config/:FuzzParse ./pkg/probe/:FuzzHandlers ./pkg/netcheck/:FuzzParseEgressResponse
FUZZTIME ?= 100000x

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (100000 executions, about 10 s) beyond its seed corpus
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

.PHONY: lint
lint: ## gofmt, go vet, and go mod tidy must leave no diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@cp go.mod /tmp/go.mod.lint && cp go.sum /tmp/go.sum.lint && $(GO) mod tidy && \
	  if ! git diff --quiet -- go.mod go.sum; then echo "go mod tidy changed go.mod/go.sum:"; git --no-pager diff -- go.mod go.sum; \
	    cp /tmp/go.mod.lint go.mod; cp /tmp/go.sum.lint go.sum; exit 1; fi

.PHONY: demo
demo: build ## start the netns lab (control server, exit node, worker) and show the egress switch; DEMO_ARGS=--once to exit after
	$(GO) run ./test/lab/cmd/demo $(DEMO_ARGS)

.PHONY: demo-cluster
demo-cluster: build kubernetes image-oci ## the DaemonSet on a real cluster in the lab (kubelets, containerd, the image make image-oci built); DEMO_ARGS=--once to exit after
	$(GO) run ./test/cluster/cmd/demo-cluster --image '$(IMAGE)' --archive '$(OCI_ARCHIVE)' $(DEMO_ARGS)

.PHONY: clean
clean: ## remove build outputs (keeps nothing of bin/)
	rm -rf bin out

.PHONY: docs
docs: ## regenerate the configuration section of README.md from --help
	hack/gen-readme-config.sh

# --- container image ---------------------------------------------------------
# What goes into the image is defined once: the files by build-static, which
# stages the whole root filesystem in IMAGE_ROOTFS (the Dockerfile's build
# stage runs it and copies the result), and the config (labels, env, user,
# entrypoint) by the Dockerfile's final stage. `make image` builds the
# Dockerfile with a container engine when one works, else it builds the
# same image with hack/image (go-containerregistry), which reads the same
# final stage and the same rootfs (make image-oci).
IMAGE_REPO ?= ghcr.io/ts-node-agent/ts-node-agent
IMAGE ?= $(IMAGE_REPO):$(VERSION)
IMAGE_ROOTFS ?= out/image
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The build args of the Dockerfile, for the engine and hack/image alike.
IMAGE_BUILD_ARGS = --build-arg VERSION='$(VERSION)' --build-arg TS_VERSION='$(TS_VERSION)' --build-arg REVISION='$(REVISION)'
# The image's /etc/ssl/certs/ca-certificates.crt: the PEM files of Debian's
# ca-certificates package, joined (cached; delete it or `make clean` to
# refresh).
CA_BUNDLE ?= out/ca-certificates.crt
# Where hack/image writes the OCI layout and its archive (for ctr import).
OCI_LAYOUT ?= out/ts-node-agent-oci
OCI_ARCHIVE ?= out/ts-node-agent-oci.tar
# docker, podman or buildah; empty: the first one whose `info` succeeds.
CONTAINER_ENGINE ?=

.PHONY: build-static
build-static: build $(CA_BUNDLE) ## build, then stage the image's whole root filesystem in out/image (the Dockerfile runs this)
	@case '$(IMAGE_ROOTFS)' in ''|/|.|./) echo "IMAGE_ROOTFS='$(IMAGE_ROOTFS)': refusing to replace it" >&2; exit 1;; esac
	rm -rf '$(IMAGE_ROOTFS)'
	install -d -m 0755 $(IMAGE_ROOTFS) $(IMAGE_ROOTFS)/etc $(IMAGE_ROOTFS)/etc/ssl $(IMAGE_ROOTFS)/etc/ssl/certs \
	  $(IMAGE_ROOTFS)/usr $(IMAGE_ROOTFS)/usr/local $(IMAGE_ROOTFS)/usr/local/bin
	install -d -m 1777 $(IMAGE_ROOTFS)/tmp
	install -m 0755 $(AGENT) $(IMAGE_ROOTFS)/usr/local/bin/ts-node-agent
	install -m 0755 $(TSBIN)/tailscaled $(IMAGE_ROOTFS)/usr/local/bin/tailscaled
	install -m 0644 $(CA_BUNDLE) $(IMAGE_ROOTFS)/etc/ssl/certs/ca-certificates.crt
	install -m 0644 hack/image/etc/passwd hack/image/etc/group hack/image/etc/nsswitch.conf $(IMAGE_ROOTFS)/etc/

$(CA_BUNDLE):
	hack/image/ca-certificates.sh $@

.PHONY: image
image: ## build the image (IMAGE=repo:tag) with docker, podman or buildah when one works, else without an engine (image-oci); says which
	@engine='$(CONTAINER_ENGINE)'; \
	if [ -z "$$engine" ]; then \
	  for e in docker podman buildah; do \
	    if command -v "$$e" >/dev/null 2>&1 && "$$e" info >/dev/null 2>&1; then engine=$$e; break; fi; \
	  done; \
	fi; \
	if [ -n "$$engine" ]; then \
	  echo "make image: building the Dockerfile with $$engine"; \
	  $(MAKE) --no-print-directory image-engine CONTAINER_ENGINE="$$engine"; \
	else \
	  echo "make image: no container engine (docker, podman and buildah are missing or 'info' fails):" \
	    "building the OCI image with the Go builder, hack/image (make image-oci)"; \
	  $(MAKE) --no-print-directory image-oci; \
	fi

.PHONY: image-engine
image-engine: ## build the Dockerfile with CONTAINER_ENGINE (docker, podman or buildah)
	@if [ -z '$(CONTAINER_ENGINE)' ]; then echo "make image-engine: set CONTAINER_ENGINE=docker, podman or buildah" >&2; exit 1; fi
	$(CONTAINER_ENGINE) $(if $(filter buildah,$(notdir $(CONTAINER_ENGINE))),bud,build) -f Dockerfile -t '$(IMAGE)' $(IMAGE_BUILD_ARGS) .

# hack/image runs for the host (GOOS and GOARCH unset), the platform is the
# one build-static built for.
.PHONY: image-oci
image-oci: build-static ## build the image without an engine: OCI layout out/ts-node-agent-oci/ and archive out/ts-node-agent-oci.tar (for ctr import)
	platform="linux/$$($(GO) env GOARCH)" && env -u GOOS -u GOARCH $(GO) run ./hack/image --dockerfile Dockerfile \
	  --rootfs '$(IMAGE_ROOTFS)' $(IMAGE_BUILD_ARGS) --platform "$$platform" \
	  --name '$(IMAGE)' --layout '$(OCI_LAYOUT)' --archive '$(OCI_ARCHIVE)'

# --- benchmarks (issue 9) ----------------------------------------------------
BENCH_N ?= 5
BENCH_ARGS ?=

.PHONY: bench
bench: build kube-apiserver ## benchmark against the stock containerboot on the netns lab (needs root; ~6 min); writes bench/results.{md,json}; BENCH_ARGS="-n 1" for a quick run
	$(GO) run ./bench/cmd/bench -n $(BENCH_N) $(BENCH_ARGS)
