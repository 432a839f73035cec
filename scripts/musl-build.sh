#!/usr/bin/env bash
# musl-build: static musl binaries of hub for aarch64 and armv7 without Docker,
# with Debian's Rust 1.85 (the route `make release` takes when no container
# engine runs, and what `make arm-check` proves under qemu).
#
#   scripts/musl-build.sh [TARGET...]   (default: both targets below)
#
#  1. Fetch Debian bookworm's rustc-web 1.85 (+ its host std and libLLVM),
#     rust-web-src 1.85 (only library/ is kept) and musl-dev for arm64 and
#     armhf with `apt-get download`, and unpack them with `dpkg -x` into a
#     private sysroot under target/arm-check (nothing Rust- or musl-related is
#     installed system-wide).
#  2. Put musl's crt1.o crti.o crtn.o rcrt1.o Scrt1.o libc.a, the cross gcc's
#     crtbegin*.o/crtend*.o and an unwinder (libunwind.a: the cross gcc's
#     libgcc_eh.a, plus cross/dl_find_object.c where it needs that glibc
#     function) into the sysroot's lib/rustlib/<target>/lib/self-contained,
#     where rustc looks for them when it links a static musl binary.
#  3. Build the standard library from source and hub with it:
#     cargo build --release --locked --no-default-features --target <t> -Zbuild-std=std,panic_abort
#     (RUSTC_BOOTSTRAP=1 for -Zbuild-std; every crate other than std's own is
#     compiled with -Zallow-features= so none of them may use an unstable
#     feature: the build is also the proof that hub builds with stable 1.85).
#
# Binaries: target/arm-check/<target>/release/hub. The target dir keeps the
# built std and dependencies, so a second run only rebuilds what changed.
# Needs root (or passwordless sudo) for apt on the first run. apt/cargo output
# goes to $MUSL_BUILD_LOG (default target/arm-check/musl-build.log).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK="$ROOT/target/arm-check"          # also the cargo target dir
SYSROOT="$WORK/sysroot"                # unpacked .debs; rustc's sysroot is $SYSROOT/usr
DEBS="$WORK/debs"                      # downloaded .debs, removed once unpacked
LOG="${MUSL_BUILD_LOG:-$WORK/musl-build.log}"
RUSTC_WRAPPER_SCRIPT="$WORK/bin/rustc"

# Debian's rustc-web 1.85 is in bookworm main (the 1.96 security update is
# amd64-only and has no rust-web-src of that version for all), so pin it.
RUST_DEB_VERSION="${RUST_DEB_VERSION:-1.85.0+dfsg3-1~deb12u3}"
RUST_MINOR=$(cut -d. -f1,2 <<<"$RUST_DEB_VERSION")   # 1.85
RUST_SRC="usr/src/rustc-${RUST_DEB_VERSION%%+*}"     # usr/src/rustc-1.85.0

# triple  debian-arch  gcc-prefix  musl multiarch dir
ALL_TARGETS=(
  "aarch64-unknown-linux-musl     arm64 aarch64-linux-gnu   aarch64-linux-musl"
  "armv7-unknown-linux-musleabihf armhf arm-linux-gnueabihf arm-linux-musleabihf"
)
# (--no-install-recommends; the cross gcc packages bring libgcc_eh.a and crtbegin*.o)
TOOL_PKGS=(gcc libc6-dev binutils file qemu-user-static gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf)

export DEBIAN_FRONTEND=noninteractive LC_ALL=C
STEP="starting"

fail() { echo "musl-build: FAILED: $*" >&2; exit 1; }
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

TARGETS=()
if [ "$#" -eq 0 ]; then
  TARGETS=("${ALL_TARGETS[@]}")
else
  for want in "$@"; do
    found=
    for t in "${ALL_TARGETS[@]}"; do
      read -r triple _ <<<"$t"
      [ "$triple" = "$want" ] && { TARGETS+=("$t"); found=1; }
    done
    [ -n "$found" ] || fail "unknown target '$want' (known: aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf)"
  done
fi

mkdir -p "$WORK"
[ -n "${MUSL_BUILD_LOG:-}" ] || : >"$LOG"

[ "$(uname -m)" = x86_64 ] || fail "the musl build expects an x86_64 Debian host (found $(uname -m))"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || fail "the musl build needs a Debian host (dpkg/apt-get not found)"

CARGO=$(command -v "${CARGO:-cargo}" || command -v "$HOME/.cargo/bin/cargo" || true)
[ -n "$CARGO" ] || fail "cargo not found (install Rust with rustup)"

# ---------------------------------------------------------------- toolchain
# The stamp names what the sysroot holds; anything else is fetched again.
WANT_STAMP="$RUST_DEB_VERSION musl-dev:arm64 musl-dev:armhf"
STAMP="$SYSROOT/.complete"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT_STAMP" ] || [ ! -x "$SYSROOT/usr/bin/rustc" ]; then
  step "fetching Debian rustc-web $RUST_DEB_VERSION, rust-web-src and musl-dev for arm64/armhf"
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
    "rustc-web=$V" "libstd-rust-web-$RUST_MINOR=$V" "libstd-rust-web-dev=$V" "rust-web-src=$V" \
    libllvm19 musl-dev:arm64 musl-dev:armhf
  cd "$ROOT"
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT"
  for deb in "$DEBS"/*.deb; do
    case "$deb" in
      */rust-web-src_*)
        # 330 MB of compiler sources; -Zbuild-std needs library/ only (44 MB).
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$SYSROOT" ./usr/lib/rustlib/src/rust "./$RUST_SRC/library" ;;
      *) dpkg -x "$deb" "$SYSROOT" ;;
    esac
  done
  [ -f "$SYSROOT/usr/lib/rustlib/src/rust/library/Cargo.lock" ] \
    || fail "rust-web-src did not unpack to $SYSROOT/usr/lib/rustlib/src/rust/library"
  # Runtime libraries that librustc_driver and libLLVM link against.
  for deb in "$DEBS"/libllvm19_*.deb "$DEBS"/libstd-rust-web-"$RUST_MINOR"_*.deb; do
    dpkg-deb -f "$deb" Depends
  done | tr ',' '\n' | sed 's/([^)]*)//g; s/|.*//; s/[[:space:]]//g' \
       | grep -v -e '^$' -e '^libllvm' -e '^libstd-rust' | sort -u >"$SYSROOT/.runtime-deps"
  rm -rf "$DEBS"
  echo "$WANT_STAMP" >"$STAMP"
fi

# rustc has no RPATH: point the loader at librustc_driver and libLLVM.
# rustc derives its sysroot from its own path, so it finds the self-contained
# objects under $SYSROOT/usr/lib/rustlib/<triple>/lib/self-contained and the
# std sources under $SYSROOT/usr/lib/rustlib/src/rust without --sysroot.
# Cargo compiles the standard library and its dependencies (and only them)
# with -Z force-unstable-if-unmarked; every other crate gets
# -Zallow-features= (no unstable feature allowed).
# (Rewritten only when it changes: cargo caches `rustc -vV` by its mtime; a
# change also clears the musl builds, since cargo cannot see what it adds.)
wrapper="#!/bin/sh
# rustc $RUST_DEB_VERSION from Debian, for scripts/musl-build.sh
export LD_LIBRARY_PATH=\"$SYSROOT/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"
case \" \$* \" in
  *force-unstable-if-unmarked*) ;;  # the standard library and its dependencies
  *' --crate-name '*) set -- \"\$@\" -Zallow-features= ;;
esac
exec \"$SYSROOT/usr/bin/rustc\" \"\$@\""
if [ "$(cat "$RUSTC_WRAPPER_SCRIPT" 2>/dev/null)" != "$wrapper" ]; then
  mkdir -p "$(dirname "$RUSTC_WRAPPER_SCRIPT")"
  printf '%s\n' "$wrapper" >"$RUSTC_WRAPPER_SCRIPT"
  chmod +x "$RUSTC_WRAPPER_SCRIPT"
  for t in "${ALL_TARGETS[@]}"; do
    read -r triple _ <<<"$t"
    rm -rf "${WORK:?}/$triple"
  done
  rm -rf "$WORK/release"   # build scripts and proc macros
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
  "rustc $RUST_MINOR."*) note "$RUSTC_VERSION ($SYSROOT/usr/bin/rustc), $("$CARGO" --version)" ;;
  *) fail "expected rustc $RUST_MINOR, got: $RUSTC_VERSION" ;;
esac

# ------------------------------------------------------- self-contained objects
# rustc links a static musl binary "self-contained": it passes these objects
# and -L for this directory to the linker itself (with -nostartfiles and
# -nodefaultlibs), so the plain cross gcc links musl, not glibc.
# Refreshed on every run (cheap), so a gcc update is picked up.
for t in "${TARGETS[@]}"; do
  read -r triple _ prefix musl <<<"$t"
  sc="$SYSROOT/usr/lib/rustlib/$triple/lib/self-contained"
  gcclib=$(dirname "$("$prefix-gcc" -print-libgcc-file-name)")
  mkdir -p "$sc"
  for f in crt1.o crti.o crtn.o rcrt1.o Scrt1.o libc.a; do
    [ -f "$SYSROOT/usr/lib/$musl/$f" ] || fail "musl-dev has no $f for $triple (looked in $SYSROOT/usr/lib/$musl)"
    cp -p "$SYSROOT/usr/lib/$musl/$f" "$sc/"
  done
  for f in crtbegin.o crtbeginS.o crtend.o crtendS.o libgcc_eh.a; do
    [ -f "$gcclib/$f" ] || fail "$prefix-gcc has no $f (looked in $gcclib)"
    cp -p "$gcclib/$f" "$sc/"
  done
  # std's `unwind` crate links a static libunwind.a. Debian has none for musl;
  # gcc's libgcc_eh.a is one, but on aarch64 it asks glibc's _dl_find_object
  # for the unwind tables: add that function, built on musl's dl_iterate_phdr.
  unwind="$sc/libunwind.a.new"
  cp "$sc/libgcc_eh.a" "$unwind"
  # (nm's whole output is read first: `grep -q` would stop at the first match, and under
  # pipefail nm's SIGPIPE would then fail the test.)
  symbols=$("$prefix-nm" "$unwind" 2>/dev/null || true)
  if grep -q ' U _dl_find_object$' <<<"$symbols"; then
    logged "$prefix-gcc" -O2 -fPIC -Wall -Wextra -Werror -nostdinc \
      -isystem "$SYSROOT/usr/include/$musl" -isystem "$("$prefix-gcc" -print-file-name=include)" \
      -c "$ROOT/cross/dl_find_object.c" -o "$sc/dl_find_object.o"
    logged "$prefix-ar" rs "$unwind" "$sc/dl_find_object.o"
  fi
  if ! cmp -s "$unwind" "$sc/libunwind.a"; then mv "$unwind" "$sc/libunwind.a"; else rm -f "$unwind"; fi
done

# ------------------------------------------------------------------ build
# Keep the caller's flags/target settings out of this build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR RUSTC_WRAPPER
export RUSTC="$RUSTC_WRAPPER_SCRIPT" CARGO_TARGET_DIR="$WORK" CARGO_TERM_COLOR=never RUSTC_BOOTSTRAP=1

for t in "${TARGETS[@]}"; do
  read -r triple _ prefix musl <<<"$t"
  step "building $triple (release, static musl, std from source)"
  up=$(tr 'a-z-' 'A-Z_' <<<"$triple")     # CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_*
  low=${triple//-/_}                      # CC_aarch64_unknown_linux_musl (cc crate, for ring)
  started=$SECONDS
  logged env \
    "CARGO_TARGET_${up}_LINKER=$prefix-gcc" \
    "CC_${low}=$prefix-gcc" "AR_${low}=$prefix-ar" \
    "CFLAGS_${low}=-nostdinc -isystem $SYSROOT/usr/include/$musl -isystem $("$prefix-gcc" -print-file-name=include)" \
    "$CARGO" build --manifest-path "$ROOT/Cargo.toml" --release --locked --no-default-features --target "$triple" --bin hub \
    -Zbuild-std=std,panic_abort
  bin="$WORK/$triple/release/hub"
  [ -x "$bin" ] || fail "cargo did not produce $bin"
  note "${bin#"$ROOT"/}: $(stat -c %s "$bin") bytes ($((SECONDS - started))s)"
done

# The gateway binaries above leave cluster mode out (no tokio, no NATS client); the cloud's
# host build has it. Check that one on the same Rust 1.85 too, so cluster mode's dependencies
# (async-nats pinned to the newest release that builds on it) stay within the MSRV.
step "checking the host build with cluster mode (default features) on Rust 1.85"
started=$SECONDS
# Stable 1.85 as a user has it: the compiler itself (not the wrapper, which allows no unstable
# feature and so needs RUSTC_BOOTSTRAP; under it thiserror's build script takes the compiler for
# a nightly and turns on one), and every target, the tests included.
logged env -u RUSTC_BOOTSTRAP RUSTC="$SYSROOT/usr/bin/rustc" \
  LD_LIBRARY_PATH="$SYSROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  CARGO_TARGET_DIR="$WORK/host-1.85" \
  "$CARGO" check --manifest-path "$ROOT/Cargo.toml" --locked --all-targets
note "done ($((SECONDS - started))s)"
