#!/usr/bin/env bash
# Regenerates link/idle-text.ld: the functions an idle hub runs, so that the release link places
# them side by side at the start of the text (build.rs passes the script to the linker).
#
# Why: the kernel maps a binary's text in blocks around each page touched (fault-around, 64 KiB
# by default, and readahead on a cold start), so an idle `hub edge` whose few hundred KiB of
# startup, TLS, link and heartbeat code are spread over the whole 2.8 MB of text ends up with
# nearly all of it resident. Placed together, the text an idle hub maps is about the size of
# the code it ran (docs/benchmarks.md, "Idle footprint").
#
# How: a release build with symbols; the profiles of `hub edge` over WebSocket, over QUIC and
# without a cloud, then of `hub cloud` with both edges, each up to idle (callgrind: the link
# open, then 3 s with a heartbeat every second); their functions, edge first, become
# input-section patterns for `.text.idle`, with the hash of legacy symbol names and the crate
# disambiguators of v0 names as wildcards, so that the file still matches after the symbols'
# hashes change (another profile, another target).
# Functions it no longer names (renamed, inlined, new) are merely placed as usual. Rerun it after
# larger changes to the startup, link or idle paths; it needs valgrind and python3.
#
#   scripts/idle-text.sh          # writes link/idle-text.ld
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "idle-text: valgrind is needed" >&2; exit 1; }
echo "building a release binary with symbols" >&2
HUB_IDLE_TEXT=off CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --locked --quiet --bin hub
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
W=$(mktemp -d "${TMPDIR:-/tmp}/hub-idle-text.XXXXXX")
HUB=$W/hub
cp "$TARGET/release/hub" "$HUB"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
wait_log() { # file pattern
  for _ in $(seq 600); do grep -m1 -E "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "idle-text: no '$2' in $1" >&2; cat "$1" >&2; exit 1
}
profiled() { # name command...: runs the command under callgrind; sets PID
  local name=$1; shift
  RUST_LOG=info valgrind --tool=callgrind --demangle=no --callgrind-out-file="$W/$name.out" \
    "$@" 2>"$W/$name.log" &
  PID=$!
  PIDS+=("$PID")
}
dump() { # name pid: the profile up to now (a few heartbeats), then stop the process
  sleep 3
  callgrind_control -d "$2" >/dev/null
  for _ in $(seq 100); do [ -s "$W/$1.out.1" ] && break; sleep 0.1; done
  kill "$2"
  wait "$2" 2>/dev/null || true
}

"$HUB" certs --dir "$W/pki" --node edge-node >/dev/null
cat >"$W/cloud.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
  address: 127.0.0.1
  ca: $W/pki/ca.crt
  cert: $W/pki/server.crt
  key: $W/pki/server.key
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
metrics:
  listen: 127.0.0.1:0
queues:
  dir: $W/cloud
YAML
edge_config() { # name protocol url
  local section=websocket
  [ "$2" = quic ] && section=quic
  cat >"$W/$1.yaml" <<YAML
$section:
  url: $3
  cafile: $W/pki/ca.crt
  certfile: $W/pki/node-edge-node.crt
  keyfile: $W/pki/node-edge-node.key
controller:
  protocol: $2
  heartbeat: 1
  project-id: idle
  node-id: edge-node
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
metrics:
  listen: 127.0.0.1:0
outbox:
  dir: $W/$1
YAML
}

# The edges, each against a plain cloud.
RUST_LOG=info "$HUB" cloud -c "$W/cloud.yaml" 2>"$W/plain-cloud.log" &
CLOUD=$!
PIDS+=("$CLOUD")
WS=$(wait_log "$W/plain-cloud.log" 'websocket listening on' | grep -oE '[0-9]+$')
QUIC=$(wait_log "$W/plain-cloud.log" 'quic listening on' | grep -oE '[0-9]+$')
edge_config edge-websocket websocket "wss://127.0.0.1:$WS/idle/edge-node/events"
edge_config edge-quic quic "127.0.0.1:$QUIC"
edge_config edge-alone websocket "wss://127.0.0.1:1/idle/edge-node/events"
for name in edge-websocket edge-quic edge-alone; do
  echo "profiling $name" >&2
  profiled "$name" "$HUB" edge -c "$W/$name.yaml"
  if [ "$name" = edge-alone ]; then
    wait_log "$W/$name.log" 'reconnecting' >/dev/null
  else
    wait_log "$W/$name.log" 'connected to the cloud' >/dev/null
  fi
  dump "$name" "$PID"
done
kill "$CLOUD"
wait "$CLOUD" 2>/dev/null || true

# The cloud, with one edge over each protocol.
echo "profiling cloud" >&2
profiled cloud "$HUB" cloud -c "$W/cloud.yaml"
CLOUD=$PID
WS=$(wait_log "$W/cloud.log" 'websocket listening on' | grep -oE '[0-9]+$')
QUIC=$(wait_log "$W/cloud.log" 'quic listening on' | grep -oE '[0-9]+$')
edge_config plain-websocket websocket "wss://127.0.0.1:$WS/idle/edge-node/events"
RUST_LOG=info "$HUB" edge -c "$W/plain-websocket.yaml" 2>"$W/plain-websocket.log" &
PIDS+=("$!")
wait_log "$W/plain-websocket.log" 'connected to the cloud' >/dev/null
kill "$!"
edge_config plain-quic quic "127.0.0.1:$QUIC"
RUST_LOG=info "$HUB" edge -c "$W/plain-quic.yaml" 2>"$W/plain-quic.log" &
PIDS+=("$!")
wait_log "$W/plain-quic.log" 'connected to the cloud' >/dev/null
dump cloud "$CLOUD"

python3 - "$W" "$HUB" link/idle-text.ld <<'PY'
import re, subprocess, sys
work, binary, out = sys.argv[1:]
# Function symbols and their sizes.
sizes = {}
for line in subprocess.run(["nm", "--defined-only", "-S", binary], capture_output=True, text=True,
                           check=True).stdout.splitlines():
    fields = line.split()
    if len(fields) == 4 and fields[2] in "tTwW":
        sizes[fields[3]] = sizes.get(fields[3], 0) + int(fields[1], 16)
defined = set(sizes)

def functions(profile):
    """The hub binary's functions in a callgrind profile, in the order first seen."""
    objects, names, order, seen, current = {}, {}, [], set(), None
    for line in open(profile, errors="replace"):
        m = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        kind, ident, name = m.groups()
        table = objects if kind.endswith("ob") else names
        if name:
            table[ident] = name
        if kind == "ob":
            current = objects.get(ident)
        elif kind == "fn" and current and current.endswith("/hub"):
            fn = re.sub(r"'\d+$", "", names.get(ident, ""))
            if fn in defined and fn not in seen:
                seen.add(fn)
                order.append(fn)
    return order

def pattern(symbol):
    """The symbol's input section, with its hashes as wildcards."""
    if not re.fullmatch(r"[A-Za-z0-9_.$]+", symbol):
        return None
    if symbol.startswith("_ZN"):
        symbol = re.sub(r"17h[0-9a-f]{16}E$", "17h*E", symbol)
    elif symbol.startswith("_R"):
        symbol = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", symbol)
    return ".text." + symbol

ran = {}
for name in ["edge-websocket", "edge-quic", "edge-alone", "cloud"]:
    for fn in functions(f"{work}/{name}.out.1"):
        p = pattern(fn)
        if p:
            ran.setdefault(p, set()).add(fn)
# A pattern also takes the other instantiations of a generic function (their names differ only
# in the hash): one that would bring more than 16 KiB of code that did not run is left out (its
# functions are then placed as usual; the big generic ones, such as the executor's task bodies,
# cost less that way, measured).
by_pattern = {}
for fn, size in sizes.items():
    p = pattern(fn)
    if p in ran and fn not in ran[p]:
        by_pattern[p] = by_pattern.get(p, 0) + size
patterns = [p for p in ran if by_pattern.get(p, 0) <= 16 * 1024]
left = len(ran) - len(patterns)
for p in ran:
    if p not in patterns:
        print(f"idle-text: left out {p} ({by_pattern[p] // 1024} KiB of other instantiations)",
              file=sys.stderr)
with open(out, "w") as f:
    f.write("/* Generated by scripts/idle-text.sh: the functions an idle hub edge, then an idle hub\n"
            "   cloud, runs, placed together at the start of the text so that the pages an idle\n"
            "   hub maps are few (docs/benchmarks.md, \"Idle footprint\"). build.rs passes this\n"
            "   script to the linker of release builds on Linux; it only orders sections. */\n")
    f.write("SECTIONS\n{\n  .text.idle : {\n")
    # ring's assembly and C (no per-function sections): the AES, GHASH, SHA and P-256 a
    # TLS handshake and the heartbeats run.
    f.write("    *libring_core_*.a:*(.text .text.*)\n")
    for p in patterns:
        f.write(f"    *({p})\n")
    f.write("  }\n}\nINSERT BEFORE .text;\n")
print(f"idle-text: {len(patterns)} patterns written to {out} ({left} left out)", file=sys.stderr)
PY
