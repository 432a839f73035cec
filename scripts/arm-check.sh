#!/usr/bin/env bash
# arm-check: prove that the static musl release binaries for aarch64 and armv7
# build here without Docker, with Rust 1.85, and work on ARM.
#
#  1. Build them and package them as `make release` does without a container
#     engine (scripts/release.sh, Debian route: scripts/musl-build.sh, which
#     fetches Debian's rustc-web 1.85, rust-web-src and musl-dev into a private
#     sysroot under target/arm-check), into target/arm-check/dist.
#  2. For each target, from its tarball (checked against SHA256SUMS): `file`
#     says statically linked, `readelf -l` shows no program interpreter
#     (PT_INTERP), `readelf -d` no NEEDED library, `readelf -h` the right
#     machine; under qemu-user: --version, `certs`, and `cloudhub --check` /
#     `edgehub --check` through the tarball's links.
#  3. End to end: a native cloud (the host build, target/debug/hub) serving
#     WebSocket and QUIC; two ARM edges under qemu, one per protocol, dialling
#     the cloud by the host name `localhost` (musl's resolver, not glibc's);
#     through the apps endpoints a request and a message each way on each
#     link (the ARM binary's `hub sub`/`hub pub`/`hub req` on the edge side);
#     then SIGTERM to every hub, each of which must exit 0.
#  4. A summary with each binary's size against the 4 MiB aim.
#
# Needs root (or passwordless sudo) for apt on the first run; a second run
# reuses the sysroot and the built std and dependencies in target/arm-check.
# All apt/cargo output goes to target/arm-check/arm-check.log, the hubs' logs
# of a failed run are shown on failure.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK="$ROOT/target/arm-check"
LOG="$WORK/arm-check.log"
DIST="$WORK/dist"
SIZE_AIM=4194304   # 4 MiB: the footprint aim for the stripped static binary

# triple  debian-arch  qemu  ELF machine (readelf -h)
TARGETS=(
  "aarch64-unknown-linux-musl     arm64 qemu-aarch64-static AArch64"
  "armv7-unknown-linux-musleabihf armhf qemu-arm-static     ARM"
)

export LC_ALL=C
STEP="starting"
START=$SECONDS

fail() { echo "arm-check: FAILED: $*" >&2; exit 1; }
# Unexpected errors: report once, from the main shell (not from $(...) subshells).
trap 'rc=$?; [ "$BASHPID" = "$$" ] || exit "$rc"; fail "$STEP (\"$BASH_COMMAND\" exited with $rc; log: $LOG)"' ERR
step() { STEP="$*"; echo "==> $*"; }
note() { echo "    $*"; }

mkdir -p "$WORK"
: >"$LOG"

# ------------------------------------------------------------------ builds
# The native cloud: the host's debug build (`cargo test` has built it already
# in `make test`), with the caller's cargo settings.
step "building the native hub (cargo build --locked --bin hub)"
CARGO=$(command -v "${CARGO:-cargo}" || command -v "$HOME/.cargo/bin/cargo" || true)
[ -n "$CARGO" ] || fail "cargo not found (install Rust with rustup)"
echo "+ $CARGO build --locked --bin hub" >>"$LOG"
(cd "$ROOT" && "$CARGO" build --locked --bin hub) >>"$LOG" 2>&1 || fail "$STEP (log: $LOG)"
HOST_TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$HOST_TARGET_DIR" in /*) ;; *) HOST_TARGET_DIR="$ROOT/$HOST_TARGET_DIR" ;; esac
NATIVE="$HOST_TARGET_DIR/debug/hub"
[ -x "$NATIVE" ] || fail "native binary not found: $NATIVE"

step "building and packaging the musl release (scripts/release.sh, Debian route)"
BUILD_START=$SECONDS
if ! DIST="$DIST" RELEASE_ROUTE=debian MUSL_BUILD_LOG="$LOG" "$ROOT/scripts/release.sh" | sed 's/^/    /'; then
  fail "$STEP (log: $LOG)"
fi
BUILD_SECONDS=$((SECONDS - BUILD_START))

# ------------------------------------------------------------------ check + run
RUN="$(mktemp -d "$WORK/run.XXXXXX")"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# Prints the hubs' logs of the current run (on failure).
show_logs() {
  local f
  for f in "$RUN"/*/*.log; do
    [ -f "$f" ] || continue
    echo "---- ${f#"$RUN"/} ----" >&2
    tail -n 30 "$f" >&2
  done
}
die() { show_logs; fail "$STEP: $*"; }

# qemu_run <qemu> <bin> <args...>: run the ARM binary; its output is left in
# $OUT (and the log); on failure show it and stop.
qemu_run() {
  local qemu=$1 bin=$2; shift 2
  echo "+ $qemu $bin $*" >>"$LOG"
  if ! OUT=$("$qemu" "$bin" "$@" </dev/null 2>&1); then
    printf '%s\n' "$OUT" | tail -n 20 >&2
    die "'$(basename "$bin") $*' failed under $qemu"
  fi
  printf '%s\n' "$OUT" >>"$LOG"
}

# wait_for <file> <pattern> [seconds]: waits until FILE has a line matching
# PATTERN (extended regex) and prints the first such line.
wait_for() {
  local file=$1 pattern=$2 limit=${3:-60} i
  for ((i = 0; i < limit * 10; i++)); do
    if grep -m1 -E -- "$pattern" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "no line matching '$pattern' in ${file#"$RUN"/} after ${limit}s"
}

# until_ok <what> <command...>: runs COMMAND until it succeeds (at most 60 s).
# Used for a request, which fails at once with "no application subscribed"
# until the subscriber's hub has its subscription in place.
until_ok() {
  local what=$1 i out=; shift
  for ((i = 0; i < 120; i++)); do
    if out=$("$@" 2>&1); then printf '%s\n' "$out"; return 0; fi
    sleep 0.5
  done
  printf '%s\n' "$out" >&2
  die "$what never succeeded"
}

# stop <name> <pid>: SIGTERM, then the process must exit 0.
stop() {
  local name=$1 pid=$2 rc=0
  kill -TERM "$pid" 2>/dev/null || die "$name (pid $pid) was no longer running"
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || die "$name exited with $rc after SIGTERM, not 0"
}

[ -f "$DIST/SHA256SUMS" ] || fail "release.sh wrote no $DIST/SHA256SUMS"
step "verifying the tarballs against SHA256SUMS"
(cd "$DIST" && sha256sum --quiet -c SHA256SUMS) >>"$LOG" 2>&1 || fail "$STEP: checksum mismatch (log: $LOG)"
VERSION=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version[[:space:]]*=/ { print $2; exit }' "$ROOT/Cargo.toml")

ROWS=()
for t in "${TARGETS[@]}"; do
  read -r triple arch qemu machine <<<"$t"
  dir="$RUN/$arch"
  mkdir -p "$dir"
  tarball="$DIST/hub-$VERSION-$triple.tar.gz"
  [ -f "$tarball" ] || fail "no release tarball $tarball"
  tar -xzf "$tarball" -C "$dir"
  pkg="$dir/hub-$VERSION-$triple"
  bin="$pkg/hub"

  step "checking the $triple binary ($(basename "$tarball"))"
  [ -x "$bin" ] || die "the tarball has no executable hub"
  for link in cloudhub edgehub; do
    [ "$(readlink "$pkg/$link")" = hub ] || die "the tarball's $link is not a link to hub"
  done
  kind=$(file -b "$bin")
  grep -Eq 'statically linked|static-pie linked' <<<"$kind" || die "file does not call it static: $kind"
  hdr=$(readelf -h "$bin")
  dyn=$(readelf -d "$bin" 2>&1)
  phdr=$(readelf -l "$bin")
  grep -Eq "Machine:[[:space:]]+$machine\$" <<<"$hdr" \
    || die "not an $machine ELF: $(grep Machine: <<<"$hdr")"
  if grep -q 'INTERP' <<<"$phdr"; then die "it has a program interpreter (PT_INTERP): not static"; fi
  needed=$(grep '(NEEDED)' <<<"$dyn" || true)
  [ -z "$needed" ] || die "it needs shared libraries: $(tr -s ' \n' ' ' <<<"$needed")"
  note "file: $kind"

  step "running the $triple binary under $qemu"
  qemu_run "$qemu" "$bin" --version
  note "hub --version: $(head -n 1 <<<"$OUT")"
  # The PKI comes from the ARM binary (ring and rcgen on ARM); the server
  # certificate names localhost and 127.0.0.1.
  qemu_run "$qemu" "$bin" certs --dir "$dir/pki" --node edge-ws --node edge-quic
  for f in ca.crt ca.key server.crt server.key node-edge-ws.crt node-edge-ws.key node-edge-quic.crt node-edge-quic.key; do
    [ -s "$dir/pki/$f" ] || die "hub certs did not write $f"
  done
  cat >"$dir/cloudhub.yaml" <<EOF
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
  address: 127.0.0.1
  ca: $dir/pki/ca.crt
  cert: $dir/pki/server.crt
  key: $dir/pki/server.key
apps:
  listen: 127.0.0.1:0
mqtt:
  listen: "off"
queues:
  dir: $dir/cloud
EOF
  qemu_run "$qemu" "$pkg/cloudhub" --check -c "$dir/cloudhub.yaml"
  note "cloudhub --check: $(tail -n 1 <<<"$OUT")"

  step "end to end on $arch: a native cloud, ARM edges over WebSocket and QUIC dialling localhost"
  RUST_LOG=info "$NATIVE" cloud -c "$dir/cloudhub.yaml" 2>"$dir/cloud.log" &
  cloud_pid=$!
  PIDS+=("$cloud_pid")
  ws_port=$(wait_for "$dir/cloud.log" 'websocket listening on' | grep -oE '[0-9]+$')
  quic_port=$(wait_for "$dir/cloud.log" 'quic listening on' | grep -oE '[0-9]+$')
  cloud_apps=$(wait_for "$dir/cloud.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')

  edge_pids=()
  for node in edge-ws edge-quic; do
    if [ "$node" = edge-ws ]; then
      link="websocket:
  url: wss://localhost:$ws_port/arm-check/$node/events"
      protocol=websocket
    else
      link="quic:
  url: localhost:$quic_port"
      protocol=quic
    fi
    cat >"$dir/$node.yaml" <<EOF
$link
  cafile: $dir/pki/ca.crt
  certfile: $dir/pki/node-$node.crt
  keyfile: $dir/pki/node-$node.key
controller:
  protocol: $protocol
  project-id: arm-check
  node-id: $node
apps:
  listen: 127.0.0.1:0
mqtt:
  listen: "off"
outbox:
  dir: $dir/$node
EOF
    qemu_run "$qemu" "$pkg/edgehub" --check -c "$dir/$node.yaml"
    RUST_LOG=info "$qemu" "$bin" edge -c "$dir/$node.yaml" 2>"$dir/$node.log" &
    edge_pids+=($!)
    PIDS+=($!)
  done

  i=0
  for node in edge-ws edge-quic; do
    pid=${edge_pids[$i]}
    i=$((i + 1))
    protocol=${node#edge-}; [ "$protocol" = ws ] && protocol=websocket
    edge_apps=$(wait_for "$dir/$node.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
    line=$(wait_for "$dir/$node.log" 'connected to the cloud over')
    grep -q "over $protocol at 127.0.0.1:" <<<"$line" || die "$node: unexpected link: $line"
    wait_for "$dir/cloud.log" "node $node connected over $protocol" >/dev/null
    note "$node: ${line#*] }"

    # Subscribers that answer requests: the ARM CLI on the edge, the native
    # one in the cloud. A request succeeds once the other side's
    # subscription is in place; then plain messages go both ways.
    RUST_LOG=warn "$qemu" "$bin" sub -u "$edge_apps" -r down/ --echo >"$dir/$node-sub.out" 2>"$dir/$node-sub.log" &
    edge_sub=$!
    PIDS+=("$edge_sub")
    "$NATIVE" sub -u "$cloud_apps" -r "node/$node/up/" --echo >"$dir/cloud-$node-sub.out" 2>"$dir/cloud-$node-sub.log" &
    cloud_sub=$!
    PIDS+=("$cloud_sub")
    answer=$(until_ok "a request from the cloud to $node" \
      "$NATIVE" req -u "$cloud_apps" -r "node/$node/down/ping" -t 20 "\"ping $arch $node\"")
    grep -q "ping $arch $node" <<<"$answer" || die "unexpected answer from $node: $answer"
    answer=$(until_ok "a request from $node to the cloud" \
      "$qemu" "$bin" req -u "$edge_apps" -r up/ping -t 20 "\"pong $arch $node\"")
    grep -q "pong $arch $node" <<<"$answer" || die "unexpected answer from the cloud to $node: $answer"
    "$NATIVE" pub -u "$cloud_apps" -r "node/$node/down/reading" "{\"to\": \"$arch $node\"}" >/dev/null \
      || die "hub pub in the cloud to $node failed"
    qemu_run "$qemu" "$bin" pub -u "$edge_apps" -r up/reading "{\"from\": \"$arch $node\"}"
    wait_for "$dir/$node-sub.out" "\"to\": ?\"$arch $node\"" >/dev/null
    wait_for "$dir/cloud-$node-sub.out" "\"resource\": ?\"node/$node/up/reading\".*\"from\": ?\"$arch $node\"|\"from\": ?\"$arch $node\".*\"resource\": ?\"node/$node/up/reading\"" >/dev/null
    note "$node: request and message cloud -> edge and edge -> cloud delivered"
    kill -TERM "$edge_sub" "$cloud_sub" 2>/dev/null || true
    wait "$edge_sub" "$cloud_sub" 2>/dev/null || true
  done

  i=0
  for node in edge-ws edge-quic; do
    stop "the $arch edge $node" "${edge_pids[$i]}"
    i=$((i + 1))
    grep -q 'stopped' "$dir/$node.log" || die "$node did not log that it stopped"
  done
  stop "the native cloud" "$cloud_pid"
  note "SIGTERM: both edges and the cloud exited 0"
  PIDS=()

  size=$(stat -c %s "$bin")
  ROWS+=("$triple|$size|$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')")
done

# ------------------------------------------------------------------ summary
echo
printf '%-30s  %10s  %8s  %-22s  %s\n' target bytes MiB "4 MiB aim" "static, ran under qemu"
for r in "${ROWS[@]}"; do
  IFS='|' read -r triple size mib <<<"$r"
  if [ "$size" -lt "$SIZE_AIM" ]; then aim="under"; else aim="OVER by $((size - SIZE_AIM)) B"; fi
  printf '%-30s  %10s  %8s  %-22s  %s\n' "$triple" "$size" "$mib" "$aim" "ok (edge over ws + quic)"
done
echo
echo "arm-check: OK (build and packaging ${BUILD_SECONDS}s, total $((SECONDS - START))s)"
