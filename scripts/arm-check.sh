#!/usr/bin/env bash
# arm-check: prove that hub builds and runs on ARM without Docker.
#
#  1. Fetch Debian bookworm's rustc-web 1.85 plus its std for arm64 and armhf
#     (apt-get download + dpkg -x into a private sysroot under target/arm-check;
#     nothing Rust-related is installed system-wide).
#  2. Install the cross linkers, qemu-user-static and binutils if missing.
#  3. cargo build --release --locked for aarch64-unknown-linux-gnu and
#     armv7-unknown-linux-gnueabihf with +crt-static, using that rustc.
#  4. Check that both binaries are static, then run them under qemu:
#     --version, `certs`, `cloud --check`, `edge --check`.
#
# Needs root (or passwordless sudo) for apt on the first run; a second run
# only builds and checks. All apt/cargo output goes to target/arm-check/arm-check.log.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK="$ROOT/target/arm-check"          # also the cargo target dir
SYSROOT="$WORK/sysroot"                # unpacked .debs; rustc's sysroot is $SYSROOT/usr
DEBS="$WORK/debs"                      # downloaded .debs, removed once unpacked
LOG="$WORK/arm-check.log"
RUSTC_WRAPPER_SCRIPT="$WORK/bin/rustc"

# Debian's rustc-web 1.85 is in bookworm main for amd64, arm64 and armhf
# (the 1.96 security update is amd64-only), so pin it.
RUST_DEB_VERSION="${RUST_DEB_VERSION:-1.85.0+dfsg3-1~deb12u3}"
RUST_MINOR=$(cut -d. -f1,2 <<<"$RUST_DEB_VERSION")   # 1.85

# triple  debian-arch  gcc-prefix  qemu  ELF machine (readelf -h)
TARGETS=(
  "aarch64-unknown-linux-gnu     arm64 aarch64-linux-gnu   qemu-aarch64-static AArch64"
  "armv7-unknown-linux-gnueabihf armhf arm-linux-gnueabihf qemu-arm-static     ARM"
)
# (--no-install-recommends: the cross libcs, only recommended by the gcc packages, are listed)
TOOL_PKGS=(gcc libc6-dev binutils qemu-user-static
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)

export DEBIAN_FRONTEND=noninteractive LC_ALL=C
STEP="starting"
START=$SECONDS

fail() { echo "arm-check: FAILED: $*" >&2; exit 1; }
# Unexpected errors: report once, from the main shell (not from $(...) subshells).
trap 'rc=$?; [ "$BASHPID" = "$$" ] || exit "$rc"; fail "$STEP (\"$BASH_COMMAND\" exited with $rc; log: $LOG)"' ERR
step() { STEP="$*"; echo "==> $*"; }
note() { echo "    $*"; }

# Run a command with its output in the log; on failure show the log's tail.
logged() {
  echo "+ $*" >>"$LOG"
  if ! "$@" </dev/null >>"$LOG" 2>&1; then
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
    echo "----" >&2
    fail "$STEP: '$*' failed (full log: $LOG)"
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
  else fail "$STEP needs root (apt-get/dpkg): run as root or with passwordless sudo"; fi
}

installed() { dpkg-query -W -f='${db:Status-Abbrev}\n' "$1" 2>/dev/null | grep -q '^ii'; }

APT_UPDATED=0
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  APT_UPDATED=1
  echo "+ apt-get update" >>"$LOG"
  # An index may fail to download during a mirror sync; the packages can
  # still be fetchable, so carry on and let the download itself decide.
  if ! as_root apt-get -o DPkg::Lock::Timeout=300 update </dev/null >>"$LOG" 2>&1; then
    note "apt-get update reported errors (see log); continuing"
  fi
}

mkdir -p "$WORK"
: >"$LOG"

[ "$(uname -m)" = x86_64 ] || fail "arm-check expects an x86_64 Debian host (found $(uname -m))"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || fail "arm-check needs a Debian host (dpkg/apt-get not found)"

CARGO=$(command -v "${CARGO:-cargo}" || command -v "$HOME/.cargo/bin/cargo" || true)
[ -n "$CARGO" ] || fail "cargo not found (install Rust with rustup)"

# ---------------------------------------------------------------- toolchain
STAMP="$SYSROOT/.complete"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$RUST_DEB_VERSION" ] || [ ! -x "$SYSROOT/usr/bin/rustc" ]; then
  step "fetching Debian rustc-web $RUST_DEB_VERSION and libstd for amd64/arm64/armhf"
  for arch in arm64 armhf; do
    if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
      as_root dpkg --add-architecture "$arch"
    fi
  done
  apt_update_once
  V="$RUST_DEB_VERSION"
  rm -rf "$DEBS"
  mkdir -p "$DEBS"
  cd "$DEBS"   # apt-get download writes to the current directory
  logged apt-get download -o APT::Sandbox::User=root \
    "rustc-web=$V" "libstd-rust-web-$RUST_MINOR=$V" "libstd-rust-web-dev=$V" \
    "libstd-rust-web-dev:arm64=$V" "libstd-rust-web-dev:armhf=$V" libllvm19
  cd "$ROOT"
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT"
  for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  # Runtime libraries that librustc_driver and libLLVM link against.
  for deb in "$DEBS"/libllvm19_*.deb "$DEBS"/libstd-rust-web-"$RUST_MINOR"_*.deb; do
    dpkg-deb -f "$deb" Depends
  done | tr ',' '\n' | sed 's/([^)]*)//g; s/|.*//; s/[[:space:]]//g' \
       | grep -v -e '^$' -e '^libllvm' -e '^libstd-rust' | sort -u >"$SYSROOT/.runtime-deps"
  rm -rf "$DEBS"
  echo "$RUST_DEB_VERSION" >"$STAMP"
fi

# rustc has no RPATH: point the loader at librustc_driver and libLLVM.
# rustc derives its sysroot from its own path, so the rlibs are found in
# $SYSROOT/usr/lib/rustlib/<triple>/lib without --sysroot.
# (Rewritten only when it changes: cargo caches `rustc -vV` by its mtime.)
wrapper="#!/bin/sh
LD_LIBRARY_PATH=\"$SYSROOT/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" exec \"$SYSROOT/usr/bin/rustc\" \"\$@\""
if [ "$(cat "$RUSTC_WRAPPER_SCRIPT" 2>/dev/null)" != "$wrapper" ]; then
  mkdir -p "$(dirname "$RUSTC_WRAPPER_SCRIPT")"
  printf '%s\n' "$wrapper" >"$RUSTC_WRAPPER_SCRIPT"
  chmod +x "$RUSTC_WRAPPER_SCRIPT"
fi

# ------------------------------------------------------------------ tools
step "checking linkers, qemu, binutils and rustc"
missing=()
for p in "${TOOL_PKGS[@]}" $(cat "$SYSROOT/.runtime-deps"); do
  installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  note "installing: ${missing[*]}"
  apt_update_once
  logged as_root apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
fi

RUSTC_VERSION=$("$RUSTC_WRAPPER_SCRIPT" --version 2>&1) \
  || fail "Debian rustc does not run ($RUSTC_VERSION); remove $SYSROOT to fetch it again"
case "$RUSTC_VERSION" in
  "rustc $RUST_MINOR."*) note "$RUSTC_VERSION ($SYSROOT/usr/bin/rustc)" ;;
  *) fail "expected rustc $RUST_MINOR, got: $RUSTC_VERSION" ;;
esac
for t in "${TARGETS[@]}"; do
  read -r triple _ <<<"$t"
  ls "$SYSROOT/usr/lib/rustlib/$triple/lib"/libstd-*.rlib >/dev/null 2>&1 \
    || fail "no std for $triple under $SYSROOT/usr/lib/rustlib/$triple/lib"
done

# ------------------------------------------------------------------ build
# Keep the caller's flags/target settings out of this build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR
export RUSTC="$RUSTC_WRAPPER_SCRIPT" CARGO_TARGET_DIR="$WORK" CARGO_TERM_COLOR=never

for t in "${TARGETS[@]}"; do
  read -r triple _ prefix _ <<<"$t"
  step "building $triple (release, static)"
  up=$(tr 'a-z-' 'A-Z_' <<<"$triple")     # CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_*
  low=${triple//-/_}                      # CC_aarch64_unknown_linux_gnu (cc crate, for ring)
  logged env \
    "CARGO_TARGET_${up}_LINKER=$prefix-gcc" \
    "CARGO_TARGET_${up}_RUSTFLAGS=-C target-feature=+crt-static" \
    "CC_${low}=$prefix-gcc" "AR_${low}=$prefix-ar" \
    "$CARGO" build --manifest-path "$ROOT/Cargo.toml" --release --locked --target "$triple" --bin hub
done

# ------------------------------------------------------------------ check + run
RUN="$(mktemp -d "$WORK/run.XXXXXX")"
trap 'rm -rf "$RUN"' EXIT

# qemu_run <qemu> <bin> <args...>: run the ARM binary; its output is left in
# $OUT (and the log); on failure show it and stop.
qemu_run() {
  local qemu=$1 bin=$2; shift 2
  echo "+ $qemu $bin $*" >>"$LOG"
  if ! OUT=$("$qemu" "$bin" "$@" </dev/null 2>&1); then
    printf '%s\n' "$OUT" | tail -n 20 >&2
    fail "$STEP: 'hub $*' failed under $qemu"
  fi
  printf '%s\n' "$OUT" >>"$LOG"
}

ROWS=()
for t in "${TARGETS[@]}"; do
  read -r triple arch _ qemu machine <<<"$t"
  bin="$WORK/$triple/release/hub"
  step "checking $triple binary"
  [ -x "$bin" ] || fail "binary not found: $bin"
  hdr=$(readelf -h "$bin")
  dyn=$(readelf -d "$bin" 2>&1)
  phdr=$(readelf -l "$bin")
  grep -Eq "Machine:[[:space:]]+$machine\$" <<<"$hdr" \
    || fail "$bin is not an $machine ELF: $(grep Machine: <<<"$hdr")"
  needed=$(grep '(NEEDED)' <<<"$dyn" || true)
  [ -z "$needed" ] || fail "$bin is not static, it needs: $(tr -s ' \n' ' ' <<<"$needed")"
  if grep -q 'Requesting program interpreter' <<<"$phdr"; then
    fail "$bin is not static (it has a program interpreter)"
  fi

  step "running $triple binary under $qemu"
  dir="$RUN/$arch"
  mkdir -p "$dir"
  qemu_run "$qemu" "$bin" --version
  note "hub --version: $(head -n 1 <<<"$OUT")"
  qemu_run "$qemu" "$bin" certs --dir "$dir/pki"
  for f in ca.crt ca.key server.crt server.key node-edge-node.crt node-edge-node.key; do
    [ -s "$dir/pki/$f" ] || fail "hub certs did not write $dir/pki/$f"
  done
  cat >"$dir/cloudhub.yaml" <<EOF
cloudhub:
  protocol_websocket: true
  port: 10000
  protocol_quic: true
  quic_port: 10001
  address: 127.0.0.1
  ca: $dir/pki/ca.crt
  cert: $dir/pki/server.crt
  key: $dir/pki/server.key
EOF
  cat >"$dir/edgehub.yaml" <<EOF
quic:
  url: 127.0.0.1:10001
  cafile: $dir/pki/ca.crt
  certfile: $dir/pki/node-edge-node.crt
  keyfile: $dir/pki/node-edge-node.key
controller:
  protocol: quic
  project-id: e632aba927ea4ac2b575ec1603d56f10
  node-id: edge-node
EOF
  qemu_run "$qemu" "$bin" cloud --check -c "$dir/cloudhub.yaml"
  note "hub cloud --check: $(tail -n 1 <<<"$OUT")"
  qemu_run "$qemu" "$bin" edge --check -c "$dir/edgehub.yaml"
  note "hub edge --check: $(tail -n 1 <<<"$OUT")"

  size=$(stat -c %s "$bin")
  ROWS+=("$triple|${bin#"$ROOT"/}|$size|$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')")
done

# ------------------------------------------------------------------ summary
echo
printf '%-30s  %-60s  %10s  %8s  %-7s  %s\n' target binary bytes MiB linkage qemu
for r in "${ROWS[@]}"; do
  IFS='|' read -r triple path size mib <<<"$r"
  printf '%-30s  %-60s  %10s  %8s  %-7s  %s\n' "$triple" "$path" "$size" "$mib" static "ran under qemu: ok"
done
echo
echo "arm-check: OK ($RUSTC_VERSION, $((SECONDS - START))s)"
