# syntax=docker/dockerfile:1
#
# ts-node-agent image: the agent as entrypoint plus tailscaled, both built
# from this module's pinned tailscale.com version. Build it with `make image`
# (which passes VERSION, TS_VERSION and REVISION).
#
# The Go build commands live in the Makefile only: the build stage runs
# `make build-static`, the same target (and the same `build` commands) that CI
# runs, so the image is built exactly the way the tested binaries are.

# Builder: the Go toolchain pinned to an exact patch release (the same Go as
# CI). Production builds should add the digest:
#   GO_IMAGE=golang:1.26.8-bookworm@sha256:<digest>
ARG GO_IMAGE=golang:1.26.8-bookworm
# Runtime: distroless static, the root variant (the agent needs root for
# netlink, the TUN device and nftables, see deploy/daemonset). Distroless
# publishes no version tags, so it is pinned by digest.
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:latest@sha256:d75cdd72874d4790092fcb1b058493ecf6bb5bf2b2b897045b00ff01d91843f2

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

FROM ${BASE_IMAGE}
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
# /usr/local/bin/ts-node-agent and /usr/local/bin/tailscaled (in PATH, so the
# agent's default --tailscaled=tailscaled finds it). CA certificates come with
# distroless static (/etc/ssl/certs), for the control server and the egress
# checks. There is no shell: nothing at run time needs one.
COPY --from=build /out/ /
# Root: see the DaemonSet's securityContext for the capabilities it keeps.
USER 0:0
ENTRYPOINT ["/usr/local/bin/ts-node-agent"]
