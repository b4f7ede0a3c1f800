#!/usr/bin/env bash
#! Builds Shoal's container images offline, from this repo's binaries
#! (release builds unless SHOAL_IMAGE_PROFILE=debug).
#!
#! No base image is pulled: each image is a `FROM scratch`-style root
#! filesystem holding the binaries, the shared libraries `ldd` names for them
#! (at the same paths) and the dynamic loader, imported with `docker import`
#! so that neither a registry nor BuildKit/buildx is needed.
#!
#! Images (all tagged :dev unless SHOAL_IMAGE_TAG says otherwise) run as
#! uid 10001, with /tmp writable:
#!   shoal/app-server  entrypoint app-server
#!   shoal/shoal       every binary that exists (registry, app-server, gateway,
#!                     autoscaler) on PATH, no entrypoint; the gateway is the
#!                     profile-guided build scripts/pgo-gateway makes (about
#!                     12 minutes more; SHOAL_PGO=0 ships the plain release
#!                     build instead)
#!   shoal/etcd        Debian's /usr/bin/etcd (apt-get install etcd-server),
#!                     entrypoint etcd, data in /tmp/etcd; its CMD listens on
#!                     0.0.0.0:2379 and advertises http://etcd:2379; with
#!                     etcdctl next to it when there is one (etcd-client), for
#!                     healthchecks (`etcdctl endpoint health`)
#!   shoal/node-hello  a stock Node.js image (no Shoal inside): the node
#!                     binary that is on PATH, and examples/node-hello/server.js,
#!                     entrypoint `node /app/server.js`; for a service spec
#!                     with managed registration (skipped without node)
#!
#! Usage: docker/build-images.sh [--no-build] [app-server|shoal|etcd|node-hello ...]
#!   (no image names: all four; etcd and node-hello are skipped with a note
#!   when /usr/bin/etcd or node is absent)
#!   --no-build  use the binaries already built: target/release (target/debug with
#!               SHOAL_IMAGE_PROFILE=debug), and the
#!               profile-guided gateway in target/pgo/use/release when
#!               there is one
#! Env: CARGO_TARGET_DIR, SHOAL_IMAGE_TAG (default dev), SHOAL_IMAGE_PROFILE
#! (release, the default; or debug: the images get the debug binaries of
#! `cargo build --workspace --bins`, debug info stripped, and the plain
#! gateway; scripts/test uses them, since tests check behaviour and the
#! release build with fat LTO costs CI ten minutes or more), SHOAL_ETCD_BIN
#! (default /usr/bin/etcd), SHOAL_PGO (1: the profile-guided gateway;
#! 0: the plain release build's), SHOAL_GATEWAY_BIN (a gateway binary to
#! put in shoal/shoal instead of either).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
tag=${SHOAL_IMAGE_TAG:-dev}
build=1
pgo=${SHOAL_PGO:-1}
profile=${SHOAL_IMAGE_PROFILE:-release}
images=()
for arg in "$@"; do
  case $arg in
    --no-build) build=0 ;;
    app-server | shoal | etcd | node-hello) images+=("$arg") ;;
    -h | --help) awk 'NR > 1 && /^#!/ { sub(/^#! ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
explicit_etcd=0
if [ ${#images[@]} -eq 0 ]; then
  images=(app-server shoal etcd node-hello)
else
  for i in "${images[@]}"; do [ "$i" = etcd ] && explicit_etcd=1; done
fi

die() { echo "build-images.sh: $*" >&2; exit 1; }
case $pgo in
  0 | 1) ;;
  *) die "SHOAL_PGO=$pgo is not allowed: use 1 (the profile-guided gateway, the default) or 0 (the plain release build)" ;;
esac
case $profile in
  release) ;;
  debug) pgo=0 ;;
  *) die "SHOAL_IMAGE_PROFILE=$profile is not allowed: use release (the default) or debug" ;;
esac
command -v docker >/dev/null || die "docker is not installed"
docker version >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running, may this user use /var/run/docker.sock?)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# copy_with_libs ROOTFS BINARY NAME: BINARY as /usr/local/bin/NAME, plus every
# library ldd resolves for it and the loader, each at its own path.
copy_with_libs() {
  local rootfs=$1 bin=$2 name=$3 lib
  install -D -m 0755 "$bin" "$rootfs/usr/local/bin/$name"
  # A debug binary's debug info is most of its size; symbols stay.
  [ "$profile" = debug ] && [ "$name" != etcd ] && [ "$name" != etcdctl ] && [ "$name" != node ] &&
    strip --strip-debug "$rootfs/usr/local/bin/$name"
  # `libX.so => /path (addr)` lines, and the loader's `/lib64/ld-... (addr)`.
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    [ -e "$rootfs$lib" ] || cp -L --parents "$lib" "$rootfs"
  done
}

# new_rootfs DIR: the few files a glibc binary expects besides its libraries.
new_rootfs() {
  local rootfs=$1
  mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/usr/local/bin"
  chmod 1777 "$rootfs/tmp"
  echo 'root:x:0:0:root:/:/nonexistent' >"$rootfs/etc/passwd"
  echo 'shoal:x:10001:10001:shoal:/tmp:/nonexistent' >>"$rootfs/etc/passwd"
  printf 'root:x:0:\nshoal:x:10001:\n' >"$rootfs/etc/group"
  echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
  # Where the docker driver mounts an instance's data volume (`data_dir:
  # true`); owned by the image's user (in `import`), which Docker copies to
  # a new volume mounted here.
  mkdir -p "$rootfs/var/lib/shoal/data"
}

# import ROOTFS IMAGE [--change ...]: replace IMAGE with the tree, and drop
# the image it replaces unless something still uses it.
import() {
  local rootfs=$1 image=$2 old new
  shift 2
  old=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  # Everything root's, but the data directory the user's (appended apart).
  local tarball=$stage/rootfs.tar
  tar -C "$rootfs" --numeric-owner --owner=0 --group=0 --exclude=./var/lib/shoal -cf "$tarball" .
  if [ -d "$rootfs/var/lib/shoal" ]; then
    tar -C "$rootfs" --numeric-owner --owner=10001 --group=10001 --no-recursion \
      -rf "$tarball" ./var/lib/shoal ./var/lib/shoal/data
  fi
  new=$(docker import --change 'ENV PATH=/usr/local/bin' --change 'USER 10001:10001' \
    --change "LABEL org.opencontainers.image.source=shoal" "$@" - "$image" <"$tarball")
  rm -f "$tarball"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
  echo "built $image ($(du -sh "$rootfs" | cut -f1) uncompressed)"
}

want() { local i; for i in "${images[@]}"; do [ "$i" = "$1" ] && return 0; done; return 1; }

cargo_profile=()
[ "$profile" = release ] && cargo_profile=(--release)
if [ $build = 1 ] && { want app-server || want shoal; }; then
  if want shoal; then
    (cd "$root" && cargo build "${cargo_profile[@]}" --workspace --bins)
  else
    (cd "$root" && cargo build "${cargo_profile[@]}" -p app-server --bin app-server)
  fi
fi
bins=$target_dir/$profile

# The gateway shoal/shoal ships: SHOAL_GATEWAY_BIN, else the profile-guided
# build (made here unless --no-build), else the release build's.
gateway_bin=${SHOAL_GATEWAY_BIN:-}
if want shoal && [ -z "$gateway_bin" ] && [ "$pgo" = 1 ]; then
  if [ $build = 1 ]; then
    # The app servers it trains against were built just above.
    gateway_bin=$(cd "$root" && NO_BUILD=1 scripts/pgo-gateway | tail -n 1) ||
      die "scripts/pgo-gateway failed (its error is above); SHOAL_PGO=0 builds the images with the plain release gateway"
  elif [ -x "$target_dir/pgo/use/release/gateway" ]; then
    gateway_bin=$target_dir/pgo/use/release/gateway
  else
    echo "note: no profile-guided gateway in $target_dir/pgo/use/release (scripts/pgo-gateway builds it): shoal/shoal gets the release build's"
  fi
fi

if want app-server; then
  [ -x "$bins/app-server" ] || die "$bins/app-server is missing: run cargo build ${cargo_profile[*]} --workspace --bins (or drop --no-build)"
  rootfs=$stage/app-server
  new_rootfs "$rootfs"
  copy_with_libs "$rootfs" "$bins/app-server" app-server
  import "$rootfs" "shoal/app-server:$tag" \
    --change 'ENTRYPOINT ["/usr/local/bin/app-server"]' --change 'EXPOSE 8080'
fi

if want shoal; then
  if [ -n "${SHOAL_GATEWAY_BIN:-}" ] && [ ! -x "$SHOAL_GATEWAY_BIN" ]; then
    die "SHOAL_GATEWAY_BIN=$SHOAL_GATEWAY_BIN is not an executable file: build it (scripts/pgo-gateway prints its path) or unset it"
  fi
  [ -z "$gateway_bin" ] || [ -x "$gateway_bin" ] || die "no gateway binary at $gateway_bin (what scripts/pgo-gateway printed); SHOAL_PGO=0 builds the images with the plain release gateway"
  rootfs=$stage/shoal
  new_rootfs "$rootfs"
  found=()
  for bin in registry app-server gateway autoscaler; do
    src=$bins/$bin
    [ "$bin" = gateway ] && [ -n "$gateway_bin" ] && src=$gateway_bin
    if [ -x "$src" ]; then
      copy_with_libs "$rootfs" "$src" "$bin"
      found+=("$bin")
    fi
  done
  [ ${#found[@]} -gt 0 ] || die "no binary in $bins: run cargo build ${cargo_profile[*]} --workspace --bins (or drop --no-build)"
  import "$rootfs" "shoal/shoal:$tag"
  echo "  shoal/shoal:$tag holds: ${found[*]} (gateway: ${gateway_bin:-$bins/gateway})"
fi

if want etcd; then
  etcd_bin=${SHOAL_ETCD_BIN:-/usr/bin/etcd}
  if [ -x "$etcd_bin" ]; then
    rootfs=$stage/etcd
    new_rootfs "$rootfs"
    copy_with_libs "$rootfs" "$etcd_bin" etcd
    etcdctl_bin=$(dirname "$etcd_bin")/etcdctl
    if [ -x "$etcdctl_bin" ]; then
      copy_with_libs "$rootfs" "$etcdctl_bin" etcdctl
    else
      echo "note: no $etcdctl_bin (apt-get install etcd-client): shoal/etcd:$tag will lack etcdctl, which compose.yaml's healthcheck runs"
    fi
    # A single member listening on every interface, advertised as `etcd`
    # (its name on a compose network). etcd refuses a flag that shadows an
    # ETCD_* variable, so the listen/advertise defaults are CMD (give both
    # when overriding) and only what is rarely changed is ENV.
    import "$rootfs" "shoal/etcd:$tag" \
      --change 'ENTRYPOINT ["/usr/local/bin/etcd"]' \
      --change 'CMD ["--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://etcd:2379"]' \
      --change 'ENV ETCD_NAME=etcd ETCD_DATA_DIR=/tmp/etcd ETCD_AUTO_COMPACTION_RETENTION=1' \
      --change 'EXPOSE 2379'
  elif [ $explicit_etcd = 1 ]; then
    die "$etcd_bin not found: apt-get install etcd-server"
  else
    echo "skipped shoal/etcd:$tag: $etcd_bin not found (apt-get install etcd-server)"
  fi
fi

if want node-hello; then
  if node_bin=$(command -v node); then
    rootfs=$stage/node-hello
    new_rootfs "$rootfs"
    copy_with_libs "$rootfs" "$(readlink -f "$node_bin")" node
    install -D -m 0644 "$root/examples/node-hello/server.js" "$rootfs/app/server.js"
    # Listening on every interface: the registrar beside it probes
    # localhost, gateways reach it by container name.
    import "$rootfs" "shoal/node-hello:$tag" \
      --change 'ENTRYPOINT ["/usr/local/bin/node", "/app/server.js"]' \
      --change 'ENV HOST=0.0.0.0 PORT=8080' --change 'EXPOSE 8080'
  else
    echo "skipped shoal/node-hello:$tag: node not found (a Node.js runtime, e.g. apt-get install nodejs)"
  fi
fi
