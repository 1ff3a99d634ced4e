# syntax=docker/dockerfile:1
# The kube-template image (examples/deploy/ runs it as a sidecar):
#
#   docker build -t kube-template .
#   docker build --target k8s-sidecar -t kube-template:k8s-sidecar .   # drop-in for kiwigrid/k8s-sidecar
#
# The runtime stage is debian-slim, not distroless: actions are commands, and
# the reload action of examples/deploy/ needs /bin/sh and pgrep (procps). For
# a config whose actions are HTTP only, gcr.io/distroless/cc-debian12:nonroot
# runs the same binary.

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

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates procps \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kube-template \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin kube-template
COPY --from=build /usr/local/bin/kube-template /usr/local/bin/kube-template
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The admin server: /healthz, /readyz, /metrics.
EXPOSE 9090
ENTRYPOINT ["kube-template"]

# A drop-in for kiwigrid/k8s-sidecar: configured by its environment variables,
# its health endpoint on 8080, so that charts need only the image changed.
FROM runtime AS k8s-sidecar
EXPOSE 8080
ENTRYPOINT ["kube-template", "k8s-sidecar"]

# The default image (the last stage).
FROM runtime
