# skywave container image.
#
#   docker build --build-arg SKYWAVE_BUILD_COMMIT=$(git rev-parse --short=9 HEAD) -t skywave .
#   docker run -e SKYWAVE_WORKER_SECRET=... -e SKYWAVE_INTERNAL_BIND=0.0.0.0 -p 9000:9000 skywave
#
# Configuration, as with the Go wavelog_worker image: a config file mounted at
# /app/config.yaml is read with no flags (the working directory is /app and
# skywave reads ./config.yaml, the Go -config default), e.g.
#   -v ./worker/config.yaml:/app/config.yaml:ro
# or SKYWAVE_* environment variables (no file needed), or --config FILE. The
# internal API listens on 127.0.0.1 unless SKYWAVE_INTERNAL_BIND (or
# internal_bind) says otherwise; the image sets no default for it, so a
# mounted config file is never overridden. Without any secret the container
# refuses to start and says which key and paths it looked at.

ARG RUST_VERSION=1

# ---------------------------------------------------------------- build stage
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build
# A small binary for the image: no debug info (Cargo.toml's release profile
# keeps some; this overrides it here only).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_TERM_COLOR=never

# 1. Dependencies only, against stub sources: this layer is rebuilt only when
#    the manifests or the lock file change. Every target the manifests name
#    must exist for cargo to read them (the loadgen workspace member, the bench).
COPY Cargo.toml Cargo.lock build.rs ./
# jemalloc's compiled-in options (the [env] of .cargo/config.toml).
COPY .cargo/config.toml .cargo/config.toml
COPY loadgen/Cargo.toml loadgen/Cargo.toml
RUN mkdir -p src loadgen/src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > loadgen/src/main.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && cargo build --release --locked --package skywave \
    && rm -rf src loadgen/src benches

# 2. The real sources. touch: the stubs above are newer than the copied files,
#    and cargo must see the sources as changed.
COPY src src
COPY benches benches
COPY loadgen/src loadgen/src
# Declared late so a new commit only invalidates the final compile. Build args
# are in the environment of RUN, where build.rs reads SKYWAVE_BUILD_COMMIT (it
# would ask git otherwise, but .git is not in the build context).
ARG SKYWAVE_BUILD_COMMIT=""
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --package skywave \
    && install -D -m 0755 target/release/skywave /out/skywave \
    && /out/skywave --version

# -------------------------------------------------------------- runtime stage
# glibc and libgcc only (the binary needs no OpenSSL: Redis TLS is rustls),
# no shell, no package manager; runs as the image's unprivileged "nonroot" user.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG SKYWAVE_BUILD_COMMIT=""
LABEL org.opencontainers.image.title="skywave" \
      org.opencontainers.image.description="WebSocket event fan-out worker, drop-in replacement for wavelog_worker" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${SKYWAVE_BUILD_COMMIT}"
COPY --from=builder /out/skywave /usr/local/bin/skywave
# The Go image's layout: operators mount their file at /app/config.yaml.
WORKDIR /app
# 65532 = the image's "nonroot" user; numeric, so runAsNonRoot checks can verify it.
USER 65532:65532
# 9000: public WebSocket listener (put it behind the proxy).
# 9001: internal HTTP API (carries the secret; never publish it to the internet).
EXPOSE 9000 9001
# Every socket gets close code 1001 and the process exits within 10 s; give
# the container at least that: docker stop --time 15 / stop_grace_period: 15s.
STOPSIGNAL SIGTERM
# No curl in the image: the binary checks its own /healthz, on the ws_port of
# /app/config.yaml (or SKYWAVE_WS_PORT, default 9000).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/skywave", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/skywave"]
