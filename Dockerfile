# syntax=docker/dockerfile:1
# The kube-template image (examples/deploy/ runs it as a sidecar):
#
#   docker build -t kube-template .
#   docker build --target k8s-sidecar -t kube-template:k8s-sidecar .   # drop-in for kiwigrid/k8s-sidecar
#
# The runtime stage is distroless: no shell, no package manager, no `kill`
# or `pgrep`. It can be now because nothing kube-template does needs one:
# reloads are `signal` actions (processes found through /proc, with
# shareProcessNamespace in the pod) or HTTP calls, `validate:` parses
# JSON/YAML/TOML outputs in-process, and `owner:` takes numeric ids. A config
# whose `command` actions or `check`s call a shell or another program needs a
# runtime image that has them (debian:bookworm-slim, say).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Dependency caching: the registry and the target directory are cache mounts,
# so a rebuild after a source change compiles the crate, not its dependencies.
# (Not a stub-crate layer built from Cargo.toml alone: Cargo refuses a
# manifest whose declared targets, such as [[bench]], have no files.)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && cp target/release/kube-template /usr/local/bin/kube-template

# glibc and libgcc for the binary, CA certificates; nothing else. Its own
# `nonroot` user is 65532; this image runs as 10001, the UID of
# examples/deploy/.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /usr/local/bin/kube-template /usr/local/bin/kube-template
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The admin server: /healthz, /readyz, /metrics.
EXPOSE 9090
ENTRYPOINT ["kube-template"]

# A drop-in for kiwigrid/k8s-sidecar: configured by its environment variables,
# its health endpoint on 8080, so that charts need only the image changed.
# Debian-slim, not distroless: k8s-sidecar runs SCRIPT with sh.
FROM debian:bookworm-slim AS k8s-sidecar
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/kube-template /usr/local/bin/kube-template
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["kube-template", "k8s-sidecar"]

# The default image (the last stage).
FROM runtime
