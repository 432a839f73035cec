#!/usr/bin/env bash
# Goodput and request round trips under emulated loss and latency, QUIC vs WebSocket.
#
# Two network namespaces (hubc, hube) joined by scripts/netem.py, a userspace link emulator over
# a TUN device in each (10.77.0.1 and 10.77.0.2, MTU 1500): it delays every packet by half the
# round trip and drops each with the given probability, without reordering. For each loss rate a
# `hub cloud` runs in hubc and a `hub edge` per protocol in hube; the applications
# (target/release/hub-bench, `hub sub --echo`) reach both hubs over unix sockets from here.
# Measured per case: ping across the emulator, goodput edge->cloud (256 B and 16 KiB messages,
# fixed duration), sequential request round trips cloud app -> edge app -> cloud app. Before
# that, the emulator's own capacity at 0 % loss (UDP blast, peak packets/s).
#
# Prints table rows (as scripts/bench.sh does) on stdout, progress on stderr. Needs root, `ip
# netns` and /dev/net/tun; without them it prints one "skipped" row and exits 0. The namespaces
# and every process it starts are removed on exit.
#
#   scripts/bench-loss.sh          # LOSSES="0 0.01 0.05" RTT_MS=50 DURATION=10 LOSS_REQUESTS=200
#   LOSSES="0.02" DURATION=15 scripts/bench-loss.sh
#
# Environment: LOSSES (drop probabilities), RTT_MS (round trip, default 50), DURATION (whole
# seconds of goodput per case, default 10), LOSS_REQUESTS (round trips per case, default 200),
# HUB and BENCH (binaries, default target/release/{hub,hub-bench}, built if missing), NS_C and
# NS_E (the namespaces' names, default hubc and hube) and SUBNET (the link's /24, default
# 10.77.0), so that two runs on one machine keep apart.
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOSSES=${LOSSES:-0 0.01 0.05}
RTT_MS=${RTT_MS:-50}
DURATION=${DURATION:-10}
LOSS_REQUESTS=${LOSS_REQUESTS:-200}
NS_C=${NS_C:-hubc}
NS_E=${NS_E:-hube}
SUBNET=${SUBNET:-10.77.0}
ADDR_C=$SUBNET.1
ADDR_E=$SUBNET.2

row() { printf '%-44s %s\n' "$1" "$2"; echo "$1: $2" >&2; }
skip() { row "loss emulation" "skipped: $1"; exit 0; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, TUN devices)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
command -v ip >/dev/null || skip "no ip command (iproute2)"
command -v python3 >/dev/null || skip "no python3"
for ns in "$NS_C" "$NS_E"; do ip netns del "$ns" 2>/dev/null || true; done
ip netns add "$NS_C" 2>/dev/null || skip "cannot create network namespaces (ip netns add)"
if ! ip netns add "$NS_E" 2>/dev/null; then
  ip netns del "$NS_C"
  skip "cannot create network namespaces (ip netns add)"
fi

HUB=${HUB:-$PWD/target/release/hub}
BENCH=${BENCH:-$PWD/target/release/hub-bench}
NETEM=$PWD/scripts/netem.py
W=$(mktemp -d "${TMPDIR:-/tmp}/hub-loss.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS_C" 2>/dev/null || true
  ip netns del "$NS_E" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ ! -x "$HUB" ] || [ ! -x "$BENCH" ]; then
  echo "building release binaries" >&2
  cargo build --release --locked --quiet
fi
if ! command -v ping >/dev/null; then
  echo "installing ping (iputils-ping) to check the emulated link" >&2
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iputils-ping >/dev/null 2>&1 || true
fi

wait_log() { # file pattern [tenths of a second, default 200]
  for _ in $(seq "${3:-200}"); do grep -m1 -E "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-loss: no '$2' in $1" >&2; cat "$1" >&2; exit 1
}
pct() { python3 -c "print(f'{$1 * 100:g} %')"; }
netem_start() { # loss; sets NETEM_PID and NETEM_OUT
  NETEM_OUT=$W/netem-$1-$RANDOM.out
  "$NETEM" run --loss "$1" --delay-ms "$(python3 -c "print($RTT_MS / 2)")" --seed 7 \
    --ns-a "$NS_C" --addr-a "$ADDR_C/24" --ns-b "$NS_E" --addr-b "$ADDR_E/24" >"$NETEM_OUT" 2>&1 &
  NETEM_PID=$!
  PIDS+=("$NETEM_PID")
  wait_log "$NETEM_OUT" '^netem up' >/dev/null
}
netem_stop() {
  kill "$NETEM_PID"
  wait "$NETEM_PID" 2>/dev/null || true
}
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rate() { grep -oE 'delivered [0-9]+ msg/s \([0-9.]+ MB/s\)' <<<"$1" | sed 's/^delivered //'; }
p99() { grep -oE 'p99 [0-9.]+' <<<"$1" | grep -oE '[0-9.]+$'; }

# TCP's congestion control: this machine's default, and if that is not a loss-based one (BBR),
# also Cubic, or Reno where a namespace may not choose Cubic (tcp_allowed_congestion_control).
# Set in both namespaces; new connections use it. QUIC runs twice: with quinn's default, Cubic,
# and with quinn's BBR (quic.congestion / cloudhub.quic-congestion: bbr).
CC=$(ip netns exec "$NS_E" sysctl -n net.ipv4.tcp_congestion_control)
CASES="websocket-$CC quic-cubic quic-bbr"
if [ "$CC" != cubic ] && [ "$CC" != reno ]; then
  if grep -qw cubic /proc/sys/net/ipv4/tcp_allowed_congestion_control; then
    CASES="websocket-$CC websocket-cubic quic-cubic quic-bbr"
  else
    CASES="websocket-$CC websocket-reno quic-cubic quic-bbr"
  fi
fi
set_cc() { # case
  [ "${1%%-*}" = quic ] && return 0
  for ns in "$NS_C" "$NS_E"; do ip netns exec "$ns" sysctl -qw "net.ipv4.tcp_congestion_control=${1#*-}"; done
}

# A fresh edge (and outbox) per measurement, so that no backlog of the previous one competes.
edge_up() { # protocol tag [quic congestion]; sets EDGE_PID and EDGE_LOG
  local proto=$1 link
  if [ "$proto" = websocket ]; then
    link="websocket:
  url: wss://$ADDR_C:$WS_PORT/bench/edge-node/events"
  else
    link="quic:
  url: $ADDR_C:$QUIC_PORT
  congestion: ${3:-cubic}"
  fi
  cat >"$W/edge-$proto.yaml" <<YAML
$link
  cafile: $W/pki/ca.crt
  certfile: $W/pki/node-edge-node.crt
  keyfile: $W/pki/node-edge-node.key
controller:
  protocol: $proto
  project-id: bench
  node-id: edge-node
apps:
  listen: "off"
  unix: $W/edge.sock
outbox:
  dir: $W/edge-$proto-$2
  max-messages: 100000000
  max-bytes: 100000000000
YAML
  EDGE_LOG=$W/edge-$proto-$2.log
  RUST_LOG=warn,hub::apps=info,hub::edge=info ip netns exec "$NS_E" "$HUB" edge -c "$W/edge-$proto.yaml" 2>"$EDGE_LOG" &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  wait_log "$EDGE_LOG" 'apps listening on unix' >/dev/null
  wait_log "$EDGE_LOG" 'connected to the cloud' 600 >/dev/null
}
edge_down() { # reports reconnects during the measurement
  local again
  again=$(($(grep -c 'connected to the cloud' "$EDGE_LOG") - 1))
  [ "$again" = 0 ] || row "$L: ${proto} link re-established" "$again times ($(basename "$EDGE_LOG" .log))"
  kill "$EDGE_PID"
  wait "$EDGE_PID" 2>/dev/null || true
}

"$HUB" certs --dir "$W/pki" --node edge-node --host "$ADDR_C" --host localhost >/dev/null

# The emulator's own ceiling: UDP datagrams of 1400 B blasted across it at 0 % loss.
netem_start 0
ip netns exec "$NS_E" "$NETEM" blast --to "$ADDR_C" --seconds 2 >"$W/blast.out"
netem_stop
row "netem capacity (UDP 1400 B, 0 % loss)" \
  "$(grep -oE 'peak [0-9]+ packets/s' "$NETEM_OUT") forwarded; offered $(grep -oE '[0-9]+/s' "$W/blast.out")"

for loss in $LOSSES; do
  L="loss $(pct "$loss"), RTT $RTT_MS ms"
  netem_start "$loss"
  if command -v ping >/dev/null; then
    p=$(ip netns exec "$NS_E" ping -q -c 200 -i 0.01 "$ADDR_C" | tail -2 | tr '\n' ' ')
    row "$L: ping x200" "$(grep -oE '[0-9.]+% packet loss' <<<"$p"), rtt $(grep -oE '= [0-9./]+' <<<"$p" | cut -c3-) ms (min/avg/max/mdev)"
  fi
  for case in $CASES; do
    proto=${case%%-*}
    label="$proto (${case#*-})"
    [ "$proto" = websocket ] && label="websocket (TCP ${case#*-})"
    congestion=cubic; [ "$case" = quic-bbr ] && congestion=bbr
    # A cloud per case: its QUIC congestion controller is the case's too (it sends the ACKs,
    # and the requests of the round trips).
    cat >"$W/cloud.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
  quic-congestion: $congestion
  address: $ADDR_C
  ca: $W/pki/ca.crt
  cert: $W/pki/server.crt
  key: $W/pki/server.key
apps:
  listen: "off"
  unix: $W/cloud.sock
queues:
  dir: $W/cloud-$loss-$case
  max-messages: 100000000
  max-bytes: 100000000000
YAML
    CLOUD_LOG=$W/cloud-$loss-$case.log
    RUST_LOG=warn,hub::apps=info,hub::cloud=info ip netns exec "$NS_C" "$HUB" cloud -c "$W/cloud.yaml" 2>"$CLOUD_LOG" &
    CLOUD_PID=$!
    PIDS+=("$CLOUD_PID")
    WS_PORT=$(wait_log "$CLOUD_LOG" 'websocket listening on' | grep -oE '[0-9]+$')
    QUIC_PORT=$(wait_log "$CLOUD_LOG" 'quic listening on' | grep -oE '[0-9]+$')
    wait_log "$CLOUD_LOG" 'apps listening on unix' >/dev/null
    set_cc "$case"
    for size in 256 16384; do
      edge_up "$proto" "$loss-$case-$size" "$congestion"
      inflight=4096; [ "$size" = 256 ] || inflight=256
      cpu0=$(cpu_ticks "$NETEM_PID")
      out=$("$BENCH" throughput --publish "unix:$W/edge.sock" --resource "g-$case-$size" \
        --subscribe "unix:$W/cloud.sock" --prefix "node/edge-node/g-$case-$size" \
        --duration "$DURATION" --size "$size" --inflight "$inflight")
      busy=$(( ($(cpu_ticks "$NETEM_PID") - cpu0) * 100 / TCK / DURATION ))
      row "$L: $label goodput edge->cloud $size B" "$(rate "$out"), emulator busy $busy %"
      eval "G_${case//-/_}_${size}=$(grep -oE 'delivered [0-9]+' <<<"$out" | grep -oE '[0-9]+')"
      edge_down
    done
    if [ "$proto" = quic ] || [ "$case" = "websocket-$CC" ]; then
      edge_up "$proto" "$loss-$case-rt" "$congestion"
      "$HUB" sub -u "unix:$W/edge.sock" -r echo --echo >/dev/null &
      ECHO=$!
      PIDS+=("$ECHO")
      sleep 0.3
      out=$("$BENCH" latency --url "unix:$W/cloud.sock" --resource node/edge-node/echo --count "$LOSS_REQUESTS")
      row "$L: $label request round trip" "$out"
      eval "P99_${case//-/_}=$(p99 "$out")"
      kill "$ECHO"
      edge_down
    fi
    set_cc "websocket-$CC"
    kill "$CLOUD_PID"
    wait "$CLOUD_PID" 2>/dev/null || true
  done
  for q in cubic bbr; do
    for case in $CASES; do
      [ "${case%%-*}" = quic ] && continue
      small=G_${case//-/_}_256 big=G_${case//-/_}_16384 qs=G_quic_${q}_256 qb=G_quic_${q}_16384
      row "$L: QUIC ($q)/WebSocket (TCP ${case#*-}) goodput" \
        "$(python3 -c "print(f'256 B {${!qs} / max(${!small}, 1):.2f}x, 16 KiB {${!qb} / max(${!big}, 1):.2f}x')")"
    done
    qp=P99_quic_$q wp=P99_websocket_$CC
    row "$L: QUIC ($q)/WebSocket (TCP $CC) request p99" "$(python3 -c "print(f'{${!qp} / ${!wp}:.2f}x')")"
  done
  netem_stop
  row "$L: emulator" "$(grep -E '^netem (hubc|hube)' "$NETEM_OUT" | sed 's/^netem //' | tr '\n' ';' | sed 's/;$//; s/;/; /'), $(grep -oE 'peak [0-9]+ packets/s' "$NETEM_OUT")"
done
