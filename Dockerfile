# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
# The workspace is edition 2024 (rust-version 1.86, for sqlx 0.9); build with the same toolchain as development.
FROM rust:1.95-bookworm AS builder
WORKDIR /app

# The whole workspace: every member's manifest (including the test-only `e2e` package) is needed
# for `--locked` resolution, and `sqlx::migrate!("../migrations")` embeds /app/migrations at
# compile time.
COPY . .

# target/ and the cargo registry live in cache mounts, which are not part of the image layer, so
# the binaries are copied out of the mount to /out in the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p ingest -p workers -p notifier \
 && mkdir -p /out \
 && cp target/release/ingest target/release/workers target/release/notifier /out/

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for outbound TLS (Telegram API); curl for the containers' healthchecks (ingest's
# /healthz, workers' and notifier's /metrics).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 loyalty \
 && useradd --system --uid 10001 --gid loyalty --no-create-home --shell /usr/sbin/nologin loyalty

# Migrations are embedded in the binaries (sqlx::migrate!), nothing else to copy.
COPY --from=builder /out/ /usr/local/bin/

USER 10001:10001
EXPOSE 8080
CMD ["ingest"]
