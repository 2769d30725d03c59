# syntax=docker/dockerfile:1
#
# ts-node-agent image: the agent as entrypoint plus tailscaled, both built
# from this module's pinned tailscale.com version. Build it with `make image`
# (which passes VERSION, TS_VERSION and REVISION).
#
# What goes into the image is defined once, and both ways of building it
# use that one definition:
# - the files: `make build-static` stages the whole root filesystem (the
#   binaries, the CA bundle, /etc/passwd, /etc/group, /etc/nsswitch.conf,
#   /tmp); the build stage runs it, so the Go build commands live in the
#   Makefile only and the image is built exactly the way the tested binaries
#   are;
# - the config: the final stage below. Without a container engine,
#   `make image` builds the same image with hack/image (go-containerregistry),
#   which reads this final stage and the same rootfs. It understands only
#   FROM scratch, ARG, LABEL, ENV, USER, ENTRYPOINT (exec form) and the one
#   COPY of the rootfs, and fails on anything else: keep the final stage to
#   those, or extend hack/image.

# Builder: the Go toolchain pinned to an exact patch release (the same Go as
# CI). Production builds should add the digest:
#   GO_IMAGE=golang:1.26.8-bookworm@sha256:<digest>
ARG GO_IMAGE=golang:1.26.8-bookworm

FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
# The tailscale.com version of go.mod; the build fails when they differ, so
# the label below never lies about the tailscaled inside.
ARG TS_VERSION=v1.102.5
ENV GOTOOLCHAIN=local \
    GOFLAGS=-buildvcs=false
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    set -eu; \
    mod="$(go list -m -f '{{.Version}}' tailscale.com)"; \
    if [ "$TS_VERSION" != "$mod" ]; then \
      echo "TS_VERSION=$TS_VERSION but go.mod pins tailscale.com $mod" >&2; exit 1; \
    fi; \
    GOOS="$TARGETOS" GOARCH="$TARGETARCH" make build-static VERSION="$VERSION" IMAGE_ROOTFS=/out

# Runtime: nothing but the rootfs. The binaries are static; build-static
# adds what distroless static used to provide and they need: CA
# certificates (for the control server and the egress checks), passwd and
# group with root and nobody, nsswitch.conf and a sticky /tmp. There is no
# shell: nothing at run time needs one.
FROM scratch
ARG VERSION=dev
ARG TS_VERSION=v1.102.5
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ts-node-agent" \
      org.opencontainers.image.description="Entrypoint of a Tailscale DaemonSet: exit node or exit-node consumer per Node label, with probes and metrics" \
      org.opencontainers.image.source="https://github.com/ts-node-agent/ts-node-agent" \
      org.opencontainers.image.url="https://github.com/ts-node-agent/ts-node-agent" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="NOASSERTION" \
      io.github.ts-node-agent.tailscale-version="${TS_VERSION}"
# tailscaled is in PATH, so the agent's default --tailscaled=tailscaled finds
# it. SSL_CERT_FILE names the bundle for Go's crypto/x509 (its default on
# Linux too) and for anything else that looks.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# /usr/local/bin/{ts-node-agent,tailscaled}, /etc/ssl/certs/ca-certificates.crt,
# /etc/{passwd,group,nsswitch.conf} and /tmp: what build-static staged.
COPY --from=build /out/ /
# Root (the agent needs it for netlink, the TUN device and nftables): see
# the DaemonSet's securityContext for the capabilities it keeps.
USER 0:0
ENTRYPOINT ["/usr/local/bin/ts-node-agent"]
