#!/usr/bin/env bash
# release: static musl binaries for aarch64 and armv7, packaged as
#   $DIST/hub-<version>-<target>.tar.gz   (hub, cloudhub/edgehub symlinks, configs/, README.md)
#   $DIST/SHA256SUMS                      ($DIST defaults to dist/)
#
# Two routes to the same binaries:
#   cross   `cross build` (the toolchains in Docker or Podman), when `cross` is
#           installed and a container engine answers;
#   debian  otherwise: scripts/musl-build.sh, with Debian's Rust 1.85, the
#           standard library built from source and musl from Debian's musl-dev
#           (needs a Debian x86_64 host and apt; what `make arm-check` runs).
# RELEASE_ROUTE=cross or RELEASE_ROUTE=debian picks one instead.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
DIST="${DIST:-$ROOT/dist}"
export CROSS_CONFIG="$ROOT/cross/Cross.toml"

die() { echo "release: $*" >&2; exit 1; }

# --- the route
engine="${CROSS_CONTAINER_ENGINE:-$(command -v docker || command -v podman || true)}"
cross_ready() {
  command -v cross >/dev/null && [ -n "$engine" ] && "$engine" info >/dev/null 2>&1
}
route="${RELEASE_ROUTE:-auto}"
case "$route" in
  auto)
    if cross_ready; then route=cross; else
      route=debian
      if ! command -v cross >/dev/null; then why="cross is not installed"
      elif [ -z "$engine" ]; then why="neither docker nor podman is installed"
      else why="'$engine info' failed (no running container engine)"; fi
      echo "==> $why: building with Debian's Rust 1.85 instead (scripts/musl-build.sh)"
    fi ;;
  cross)
    command -v cross >/dev/null \
      || die "cross is not installed (install it with 'cargo install cross'; it also needs Docker or Podman)."
    [ -n "$engine" ] || die "cross needs a container engine, but neither docker nor podman is installed."
    "$engine" info >/dev/null 2>&1 \
      || die "cross needs a running container engine, but '$engine info' failed (is the Docker daemon running?)."
    ;;
  debian) ;;
  *) die "RELEASE_ROUTE must be cross or debian, not '$route'." ;;
esac

VERSION=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version[[:space:]]*=/ { print $2; exit }' Cargo.toml)
[ -n "$VERSION" ] || die "could not read the package version from Cargo.toml."

for f in README.md configs/cloudhub.yaml configs/edgehub.yaml configs/edgehub-quic.yaml; do
  [ -f "$f" ] || die "$f is missing."
done
units=(configs/*.service)
[ -e "${units[0]}" ] || die "no systemd units (configs/*.service) found."

# Reproducible archives: file times from SOURCE_DATE_EPOCH or the last commit.
EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# Strip with the target's binutils when present (the release profile already
# strips, so this is a no-op safety net).
strip_binary() {
  local target=$1 bin=$2 prefix s
  case "$target" in
    aarch64-*) prefix=aarch64-linux ;;
    armv7-*)   prefix=arm-linux ;;
  esac
  for s in "$prefix-musl-strip" "$prefix-musleabihf-strip" "$prefix-gnu-strip" "$prefix-gnueabihf-strip" llvm-strip; do
    if command -v "$s" >/dev/null; then "$s" "$bin"; return; fi
  done
  echo "    (no $prefix strip tool found; relying on strip = true in the release profile)"
}

mkdir -p "$DIST"
STAGE=$(mktemp -d "$DIST/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

if [ "$route" = debian ]; then
  "$ROOT/scripts/musl-build.sh" "${TARGETS[@]}" || die "the Debian musl build failed (see above)."
fi

tarballs=()
for target in "${TARGETS[@]}"; do
  if [ "$route" = cross ]; then
    # Without the default feature `cluster`: a gateway never links the NATS client or tokio.
    echo "==> cross build --release --locked --no-default-features --target $target"
    cross build --release --locked --no-default-features --target "$target" --bin hub
    bin="$TARGET_DIR/$target/release/hub"
  else
    bin="$ROOT/target/arm-check/$target/release/hub"   # scripts/musl-build.sh's target dir
  fi
  [ -x "$bin" ] || die "the $route build did not produce $bin."
  strip_binary "$target" "$bin"
  # (readelf's whole output is read first: under pipefail, `grep -q` stopping at a match
  # would fail readelf with SIGPIPE and hide the very match.)
  if command -v readelf >/dev/null && grep -q '(NEEDED)' <<<"$(readelf -d "$bin" 2>/dev/null || true)"; then
    die "$bin is dynamically linked; expected a static musl binary."
  fi

  name="hub-$VERSION-$target"
  dir="$STAGE/$name"
  mkdir -p "$dir/configs"
  install -m 0755 "$bin" "$dir/hub"
  ln -s hub "$dir/cloudhub"
  ln -s hub "$dir/edgehub"
  install -m 0644 configs/*.yaml configs/*.service "$dir/configs/"
  install -m 0644 README.md "$dir/"

  tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -cf - "$name" \
    | gzip -9n >"$DIST/$name.tar.gz"
  tarballs+=("$name.tar.gz")
  echo "    ${DIST#"$ROOT"/}/$name.tar.gz ($(stat -c %s "$bin") byte binary)"
done

(cd "$DIST" && sha256sum "${tarballs[@]}" >SHA256SUMS)
echo "==> ${DIST#"$ROOT"/}/SHA256SUMS"
sed 's/^/    /' "$DIST/SHA256SUMS"
