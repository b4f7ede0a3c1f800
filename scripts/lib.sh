# Shared by scripts/*: find or install what Shoal needs on a fresh machine.
# Source it; it defines need_tools.

# Debian package that provides each tool.
declare -A SHOAL_PACKAGE=(
  [protoc]=protobuf-compiler
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [python3]=python3
  [curl]=curl
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [ip]=iproute2
  [iptables]=iptables
)

# need_tools TOOL...: install missing tools with apt-get when running as root,
# otherwise stop with the exact command to run.
need_tools() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install Rust from https://rustup.rs, then run this again." >&2
    exit 1
  fi
  local missing=() packages=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { missing+=("$tool"); packages+=("${SHOAL_PACKAGE[$tool]:-$tool}"); }
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${packages[*]} (for ${missing[*]})" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >&2
  else
    echo "error: missing ${missing[*]}. Install with:" >&2
    echo "  sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
}

# exec_release_bin NAME: replace this shell with the release build of NAME
# (a binary of the `shoal-bench` crate, bench/src/bin/), told where Shoal's
# other binaries are; honours CARGO_TARGET_DIR. For the bench/ wrappers.
exec_release_bin() {
  local target_dir=${CARGO_TARGET_DIR:-$PWD/target}
  SHOAL_BIN_DIR=$target_dir/release exec "$target_dir/release/$1"
}
