# syntax=docker/dockerfile:1
#
# roster's container image: a multi-stage build of the `roster` binary.
#
#   docker build -t roster:0.1.0 .
#   docker run --rm -p 8500:8500 -p 8600:8600/udp -p 8600:8600/tcp roster:0.1.0
#
# No Docker engine runs on the machines this project is developed and tested on,
# so this file is not built by the test suite (tests/helm only checks that the
# chart's command and ports agree with the ENTRYPOINT and EXPOSE lines below).
# Build it on a machine with Docker (BuildKit, Docker 23 or newer) or Podman.

# ---- build ----------------------------------------------------------------
# Debian 12 (bookworm) with the stable Rust toolchain; the workspace needs Rust
# 1.89 or newer (rust-version in Cargo.toml).
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: Cargo resolves every member's manifest even when only one
# package is built. .dockerignore keeps target/ and .git out of the context.
COPY . .
# Cache mounts keep the crates.io downloads and the target directory between
# builds; the binary is copied out of the cache so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p roster-cli --bin roster \
 && install -D -m 0755 target/release/roster /out/usr/local/bin/roster \
 && install -d -m 0750 -o 65532 -g 65532 /out/var/lib/roster

# ---- runtime --------------------------------------------------------------
# distroless "cc": glibc and libgcc (the binary links them dynamically), no
# shell, no package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/roster /usr/local/bin/roster
# The data directory, owned by the non-root user. The Helm chart mounts a
# PersistentVolumeClaim here; with plain `docker run`, mount a volume to keep
# the catalog across container restarts.
COPY --from=build --chown=65532:65532 /out/var/lib/roster /var/lib/roster
USER 65532:65532
# Listen on every interface inside the container (roster's own defaults are
# 127.0.0.1, which nothing outside the container can reach) and keep the
# catalog on disk. Flags given after the image name override these.
ENV ROSTER_HTTP_ADDR=0.0.0.0:8500 \
    ROSTER_DNS_ADDR=0.0.0.0:8600 \
    ROSTER_GRPC_ADDR=0.0.0.0:8502 \
    ROSTER_DATA_DIR=/var/lib/roster
VOLUME ["/var/lib/roster"]
# HTTP API, gRPC (xDS), and DNS on UDP and TCP (the same port).
EXPOSE 8500/tcp 8502/tcp 8600/udp 8600/tcp
ENTRYPOINT ["/usr/local/bin/roster", "serve"]
