# Shoal's container image, for users with internet access: one image with
# every binary (registry, app-server, gateway, autoscaler) on PATH and no
# entrypoint, so each compose service names the binary it runs
# (`command: [gateway]`) and the autoscaler starts app servers from the same
# image with `--instance-entrypoint app-server`.
#
#   docker build -t shoal/shoal:latest .      # or: docker compose build
#
# This file is NOT built on Shoal's development machine, which can pull no
# base image; it is checked by reading. There, docker/build-images.sh builds
# the equivalent image offline (shoal/shoal:dev: the same binaries, their
# libraries and uid 10001, imported with `docker import`), and
# tests/compose/offline.yaml points compose.yaml at it.
#
# No BuildKit-only syntax (cache mounts, heredocs), so that the classic
# builder of Debian's docker-compose 1.29 builds it too.

# --- build: the release binaries -------------------------------------------
FROM rust:1-bookworm AS build
# etcd-client's build script compiles etcd's protobuf definitions.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
    && mkdir /out \
    && cp target/release/registry target/release/app-server \
          target/release/gateway target/release/autoscaler /out/

# --- runtime: slim Debian (same glibc as the builder), non-root ------------
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp \
       --shell /usr/sbin/nologin shoal
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# app-server and the gateway's proxy listen on 8080, the gateway's admin API on 9090.
EXPOSE 8080 9090
# No ENTRYPOINT, CMD or HEALTHCHECK: the binary, and its healthcheck
# (`app-server --healthcheck`, `gateway --healthcheck`), depend on the
# service; compose.yaml sets both (`docker run shoal/shoal:latest gateway`).
