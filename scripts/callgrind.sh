#!/usr/bin/env bash
# Instructions per message of both hubs, counted by callgrind (repeatable, unlike wall-clock rates).
#
#   scripts/callgrind.sh              # N=20000 messages of 256 B each way, WebSocket link
#   N=5000 TOP=40 scripts/callgrind.sh
#
# A release build with line tables and symbols (CARGO_PROFILE_RELEASE_DEBUG=line-tables-only,
# CARGO_PROFILE_RELEASE_STRIP=false, in CARGO_TARGET_DIR or target/); a cloud and an edge
# (WebSocket link, the same configuration as scripts/bench.sh's api part), each under
# `valgrind --tool=callgrind`; hub-bench throughput (not under callgrind) publishes N messages of
# SIZE bytes at the edge's application endpoint to a subscriber at the cloud's, then the same
# cloud->edge. Around each run the counters of both hubs are zeroed and dumped
# (callgrind_control), and once more around an idle period as long as the run:
#
#   instructions per message = (Ir of the run - Ir of the idle period) / N, per hub
#
# Prints that per hub and direction, and the top TOP functions (self cost, default 25) of each
# hub in each run. The dumps stay in OUT (default a fresh folder under /tmp) for
# callgrind_annotate or kcachegrind.
#
# Environment: N, SIZE (default 256), TOP, OUT. Needs valgrind (apt-get install valgrind).
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${N:-20000}
SIZE=${SIZE:-256}
TOP=${TOP:-25}
command -v valgrind >/dev/null || {
  echo "callgrind.sh: valgrind is missing (apt-get install valgrind)" >&2
  exit 1
}
echo "building release binaries with symbols" >&2
# HUB_IDLE_TEXT=off: valgrind names only the functions in .text, and build.rs would move what an
# idle hub runs into .text.idle (the totals are the same either way).
HUB_IDLE_TEXT=off CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=false \
  cargo build --release --locked --quiet --bin hub --bin hub-bench
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
HUB=$TARGET/release/hub
BENCH=$TARGET/release/hub-bench
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hub-callgrind.XXXXXX")}
mkdir -p "$OUT"
W=$(mktemp -d "${TMPDIR:-/tmp}/hub-callgrind-run.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

wait_log() { # file pattern [tenths of a second, default 600]
  for _ in $(seq "${3:-600}"); do grep -m1 -E "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "callgrind.sh: no '$2' in $1" >&2
  cat "$1" >&2
  exit 1
}

"$HUB" certs --dir "$W/pki" --node edge-node >/dev/null
cat >"$W/cloud.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: false
  address: 127.0.0.1
  ca: $W/pki/ca.crt
  cert: $W/pki/server.crt
  key: $W/pki/server.key
apps:
  listen: 127.0.0.1:0
queues:
  dir: $W/cloud
  max-messages: 100000000
  max-bytes: 100000000000
YAML
grind() { # name config...: a hub under callgrind, its dumps in OUT/NAME.*
  local name=$1
  shift
  RUST_LOG=warn,hub::apps=info,hub::cloud=info,hub::edge=info valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/$name.%p" --dump-instr=no --compress-strings=no \
    "$HUB" "$@" 2>"$W/$name.log" &
  PIDS+=("$!")
}
grind cloud cloud -c "$W/cloud.yaml"
CLOUD_PID=${PIDS[-1]}
WS_PORT=$(wait_log "$W/cloud.log" 'websocket listening on' | grep -oE '[0-9]+$')
CLOUD=$(wait_log "$W/cloud.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
cat >"$W/edge.yaml" <<YAML
websocket:
  url: wss://127.0.0.1:$WS_PORT/bench/edge-node/events
  cafile: $W/pki/ca.crt
  certfile: $W/pki/node-edge-node.crt
  keyfile: $W/pki/node-edge-node.key
controller:
  protocol: websocket
  project-id: bench
  node-id: edge-node
apps:
  listen: 127.0.0.1:0
outbox:
  dir: $W/edge
  max-messages: 100000000
  max-bytes: 100000000000
YAML
grind edge edge -c "$W/edge.yaml"
EDGE_PID=${PIDS[-1]}
EDGE=$(wait_log "$W/edge.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
wait_log "$W/edge.log" 'connected to the cloud' >/dev/null

# A warm-up run each way (connections, buffers, first segment files), not counted.
"$BENCH" throughput --publish "$EDGE" --resource up --subscribe "$CLOUD" --prefix node/edge-node/up \
  --count 500 --size "$SIZE" >/dev/null
"$BENCH" throughput --publish "$CLOUD" --resource node/edge-node/down --subscribe "$EDGE" \
  --prefix down --count 500 --size "$SIZE" >/dev/null

dump_no=0
zero() { callgrind_control -z "$CLOUD_PID" >/dev/null; callgrind_control -z "$EDGE_PID" >/dev/null; }
dump() { # label: dumps both hubs' counters since the last zero
  callgrind_control -d "$1" "$CLOUD_PID" >/dev/null
  callgrind_control -d "$1" "$EDGE_PID" >/dev/null
  dump_no=$((dump_no + 1))
}
# The file of a hub's dump number K (callgrind names them OUT/NAME.PID.K).
dump_file() { echo "$OUT/$1.$2.$3"; }
total_ir() { grep -m1 -E '^(summary|totals):' "$1" | awk '{print $2}'; }

declare -A SECS FILE
run() { # label command...
  local label=$1 t0 t1
  shift
  zero
  t0=$(date +%s.%N)
  "$@" >"$W/$label.out"
  t1=$(date +%s.%N)
  dump "$label"
  SECS[$label]=$(python3 -c "print($t1 - $t0)")
  FILE[cloud.$label]=$(dump_file cloud "$CLOUD_PID" "$dump_no")
  FILE[edge.$label]=$(dump_file edge "$EDGE_PID" "$dump_no")
  echo "$label: $(cat "$W/$label.out") (${SECS[$label]} s under callgrind)" >&2
}
run up "$BENCH" throughput --publish "$EDGE" --resource up --subscribe "$CLOUD" \
  --prefix node/edge-node/up --count "$N" --size "$SIZE"
run down "$BENCH" throughput --publish "$CLOUD" --resource node/edge-node/down --subscribe "$EDGE" \
  --prefix down --count "$N" --size "$SIZE"
longest=$(python3 -c "print(max(${SECS[up]}, ${SECS[down]}))")
run idle sleep "$longest"

echo
echo "instructions per message, $N messages of $SIZE B, WebSocket link (idle period: $longest s)"
for dir in up down; do
  name=$([ $dir = up ] && echo "edge->cloud" || echo "cloud->edge")
  for hub in edge cloud; do
    busy=$(total_ir "${FILE[$hub.$dir]}")
    idle=$(total_ir "${FILE[$hub.idle]}")
    # The idle period is as long as the longest run: scale it to this run's length.
    per=$(python3 -c "print(round(($busy - $idle * ${SECS[$dir]} / $longest) / $N))")
    printf '  %-12s %-6s %8s Ir/msg   (run %s Ir, idle %s Ir)\n' "$name" "$hub" "$per" "$busy" "$idle"
  done
done
# Self cost per function, summed over the files its inlined code comes from (what
# `callgrind_annotate --inclusive=no` shows, without its thresholds).
top_functions() { # dump-file count
  python3 - "$1" "$2" <<'PY'
import collections, re, sys
names, cost, fn, call = {}, collections.Counter(), None, False
def name(v):
    m = re.match(r"\((\d+)\)(?: (.*))?", v)
    if not m:
        return v
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), v)
for line in open(sys.argv[1]):
    if line.startswith("fn="):
        fn, call = name(line[3:].strip()), False
    elif line.startswith("cfn="):
        name(line[4:].strip())
    elif line.startswith("calls="):
        call = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) > 1:
            if not call:
                cost[fn] += int(parts[1])
            call = False
total = sum(cost.values())
for f, c in cost.most_common(int(sys.argv[2])):
    print(f"{c:>14,} {100 * c / total:5.1f}%  {f[:140]}")
PY
}
for dir in up down; do
  for hub in edge cloud; do
    echo
    echo "=== $hub, $([ $dir = up ] && echo "edge->cloud" || echo "cloud->edge"): top $TOP functions (self) ==="
    top_functions "${FILE[$hub.$dir]}" "$TOP"
  done
done
echo
echo "dumps: $OUT"
