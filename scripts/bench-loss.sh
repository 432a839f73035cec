#!/usr/bin/env bash
# hub over an emulated WAN (delay, random loss, a cut), side by side with a Mosquitto bridge over
# the same link, in one run.
#
# Two network namespaces (NS_C, NS_E) joined by scripts/netem.py, a userspace link emulator over
# a TUN device in each (SUBNET.1 and SUBNET.2, MTU 1500): it delays every packet by half the
# round trip and drops each with the given probability, without reordering; on SIGUSR1 it drops
# everything (the link is cut), on SIGUSR2 it forwards again. A `hub cloud` runs in NS_C and a
# `hub edge` in NS_E, both with their defaults (only the queue limits raised); the applications
# (target/release/hub-bench, `hub sub --echo`) reach both hubs over unix sockets from here. The
# Mosquitto bridge is the one of scripts/bench.sh (scripts/mosquitto-bridge.sh, the same tuned
# settings): a "cloud" broker in NS_C, an "edge" broker in NS_E bridging to it across the
# emulator over mutual TLS; its applications' listeners are unix sockets too.
#
# Sections (SECTIONS, default all three):
# - goodput: for each RTT in RTTS and loss in LOSSES: ping across the emulator; goodput
#   edge->cloud for DURATION s, 256 B and 16 KiB, over hub WebSocket and hub QUIC (defaults; a
#   fresh edge per measurement), the Mosquitto bridge at QoS 1 and QoS 0 (fresh brokers per
#   measurement); sequential request round trips over each hub protocol; then ratio rows (hub
#   WebSocket / Mosquitto QoS 1, hub QUIC / Mosquitto QoS 1, QUIC / WebSocket) and, at 50 ms
#   and 0 %, hub's goodput / loopback goodput. Before all that, the emulator's own capacity
#   (UDP blast, peak packets/s) and, unless given, hub's loopback goodput.
# - hol (head-of-line): at HOL_RTT, for each loss in HOL_LOSSES, request round trips (cloud app
#   -> edge app echo -> cloud app) with the link idle and while a 16 KiB bulk stream edge->cloud
#   saturates it, over WebSocket and QUIC; and the same with HUB_BASELINE's cloud and edge.
# - cut: at CUT_RTT, 0 % loss, a stream edge->cloud of 256 B messages at CUT_RATE/s; 2 s in,
#   the link is cut for CUT_SECONDS; printed: time from the restore to the first message
#   delivered after it and to the whole stream delivered, lost, duplicates and out of order.
#   Over WebSocket, QUIC and the Mosquitto bridge (QoS 1).
#
# Prints table rows (as scripts/bench.sh does) on stdout, progress on stderr. Needs root, `ip
# netns` and /dev/net/tun; without them it prints one "skipped" row and exits 0. Without
# mosquitto its rows are skipped. The namespaces and every process it starts are removed on
# exit. A full default run takes about 25-35 minutes (longer with HUB_BASELINE).
#
#   scripts/bench-loss.sh
#   DURATION=3 RTTS=50 LOSSES=0.01 CUT_SECONDS=5 scripts/bench-loss.sh      # a short check
#   HUB_BASELINE=/path/to/old/hub SECTIONS=hol scripts/bench-loss.sh
#
# Environment:
#   RTTS            round trips in ms (default "50 200")
#   LOSSES          drop probabilities per packet and direction (default "0 0.01 0.05")
#   DURATION        whole seconds per goodput measurement (default 10)
#   LOSS_REQUESTS   request round trips per goodput case (default 200)
#   INFLIGHT_SMALL, INFLIGHT_BIG
#                   messages the benchmark's publisher lets be published and not yet delivered,
#                   for 256 B and for 16 KiB, on hub and Mosquitto alike (default 65536 and 2048:
#                   16 MiB and 32 MiB, more than a 200 ms path carries in a round trip, so the
#                   publisher is not what limits the goodput)
#   QUIC_VARIANTS   extra QUIC rows with quic.congestion / cloudhub.quic-congestion set to each
#                   value (e.g. "bbr cubic newreno"); values the hub refuses get a "skipped" row
#                   (default none: the defaults only)
#   TCP_VARIANTS    extra WebSocket rows with this TCP congestion control in both namespaces
#                   (e.g. "reno"; must be in net.ipv4.tcp_allowed_congestion_control; default
#                   none: the machine's default)
#   SECTIONS        any of "goodput hol cut" (default all)
#   HOL_RTT         round trip of the head-of-line section in ms (default 50)
#   HOL_LOSSES      its losses (default "0 0.01")
#   HOL_REQUESTS    request round trips per head-of-line measurement (default 200)
#   HUB_BASELINE    an older hub binary: its cloud and edge run the head-of-line section too
#   CUT_RTT         round trip of the cut section in ms (default 50)
#   CUT_SECONDS     how long the link is cut (default 30)
#   CUT_RATE        messages per second of the stream (default 1000); it lasts
#                   CUT_SECONDS + 5 s
#   LOOPBACK_WS_256, LOOPBACK_QUIC_256
#                   hub's 256 B loopback goodput edge->cloud in msg/s (scripts/bench.sh passes
#                   its own); when unset, measured here on the loopback of NS_C
#   HUB, BENCH      binaries (default target/release/{hub,hub-bench}, built if missing)
#   NS_C, NS_E      the namespaces' names (default hubc, hube)
#   SUBNET          the link's /24 (default 10.77.0), so that two runs on one machine keep apart
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RTTS=${RTTS:-50 200}
LOSSES=${LOSSES:-0 0.01 0.05}
DURATION=${DURATION:-10}
LOSS_REQUESTS=${LOSS_REQUESTS:-200}
INFLIGHT_SMALL=${INFLIGHT_SMALL:-65536}
INFLIGHT_BIG=${INFLIGHT_BIG:-2048}
QUIC_VARIANTS=${QUIC_VARIANTS:-}
TCP_VARIANTS=${TCP_VARIANTS:-}
SECTIONS=${SECTIONS:-goodput hol cut}
HOL_RTT=${HOL_RTT:-50}
HOL_LOSSES=${HOL_LOSSES:-0 0.01}
HOL_REQUESTS=${HOL_REQUESTS:-200}
HUB_BASELINE=${HUB_BASELINE:-}
CUT_RTT=${CUT_RTT:-50}
CUT_SECONDS=${CUT_SECONDS:-30}
CUT_RATE=${CUT_RATE:-1000}
NS_C=${NS_C:-hubc}
NS_E=${NS_E:-hube}
SUBNET=${SUBNET:-10.77.0}
ADDR_C=$SUBNET.1
ADDR_E=$SUBNET.2

row() { printf '%-44s %s\n' "$1" "$2"; echo "$1: $2" >&2; }
skip() { row "loss emulation" "skipped: $1"; exit 0; }
section() { [[ " $SECTIONS " == *" $1 "* ]]; }

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
if [ -n "$HUB_BASELINE" ] && [ ! -x "$HUB_BASELINE" ]; then
  echo "bench-loss: HUB_BASELINE=$HUB_BASELINE is not an executable" >&2
  exit 1
fi
if ! command -v ping >/dev/null; then
  echo "installing ping (iputils-ping) to check the emulated link" >&2
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iputils-ping >/dev/null 2>&1 || true
fi
MOSQUITTO=$(command -v mosquitto || true)
# shellcheck source=scripts/mosquitto-bridge.sh
. scripts/mosquitto-bridge.sh

wait_log() { # file pattern [tenths of a second, default 200] [pid: give up (status 1) if it ends]
  for _ in $(seq "${3:-200}"); do
    grep -m1 -E "$2" "$1" 2>/dev/null && return 0
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  echo "bench-loss: no '$2' in $1" >&2; cat "$1" >&2; exit 1
}
pct() { python3 -c "print(f'{$1 * 100:g} %')"; }
ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}x ($1 / $2)')"; }
netem_start() { # loss rtt-ms; sets NETEM_PID and NETEM_OUT
  NETEM_OUT=$W/netem-$1-$2-$RANDOM.out
  "$NETEM" run --loss "$1" --delay-ms "$(python3 -c "print($2 / 2)")" --seed 7 \
    --ns-a "$NS_C" --addr-a "$ADDR_C/24" --ns-b "$NS_E" --addr-b "$ADDR_E/24" >"$NETEM_OUT" 2>&1 &
  NETEM_PID=$!
  PIDS+=("$NETEM_PID")
  wait_log "$NETEM_OUT" '^netem up' >/dev/null
}
netem_stop() { # prints the emulator's counters as a row
  kill "$NETEM_PID"
  wait "$NETEM_PID" 2>/dev/null || true
  row "$L: emulator" "$(grep -E "^netem ($NS_C|$NS_E)" "$NETEM_OUT" | sed 's/^netem //' | tr '\n' ';' | sed 's/;$//; s/;/; /'), $(grep -oE 'peak [0-9]+ packets/s' "$NETEM_OUT")"
}
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rate() { grep -oE 'delivered [0-9]+ msg/s \([0-9.]+ MB/s\)' <<<"$1" | sed 's/^delivered //'; }
count() { grep -oE 'delivered [0-9]+' <<<"$1" | grep -oE '[0-9]+'; }
CC=$(ip netns exec "$NS_E" sysctl -n net.ipv4.tcp_congestion_control)
set_cc() { # TCP congestion control, in both namespaces; new connections use it
  for ns in "$NS_C" "$NS_E"; do ip netns exec "$ns" sysctl -qw "net.ipv4.tcp_congestion_control=$1"; done
}

"$HUB" certs --dir "$W/pki" --node edge-node --node bridge --host "$ADDR_C" --host localhost \
  --host 127.0.0.1 >/dev/null

# hub: a cloud in NS_C and an edge in NS_E, reached at LINK_ADDR (the emulated link, or the
# loopback when both run in NS_C). HUBBIN is the binary of both.
HUBBIN=$HUB
LINK_ADDR=$ADDR_C
EDGE_NS=$NS_E
cloud_up() { # tag [quic congestion]; sets CLOUD_PID, CLOUD_LOG, WS_PORT, QUIC_PORT; 1 if refused
  local congestion=""
  [ -z "${2:-}" ] || congestion="  quic-congestion: $2"
  cat >"$W/cloud-$1.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
$congestion
  address: $LINK_ADDR
  ca: $W/pki/ca.crt
  cert: $W/pki/server.crt
  key: $W/pki/server.key
apps:
  listen: "off"
  unix: $W/cloud.sock
queues:
  dir: $W/cloud-$1
  max-messages: 100000000
  max-bytes: 100000000000
YAML
  CLOUD_LOG=$W/cloud-$1.log
  rm -f "$W/cloud.sock"
  RUST_LOG=warn,hub::apps=info,hub::cloud=info ip netns exec "$NS_C" "$HUBBIN" cloud -c "$W/cloud-$1.yaml" 2>"$CLOUD_LOG" &
  CLOUD_PID=$!
  PIDS+=("$CLOUD_PID")
  local refused="bench-loss: the cloud ($HUBBIN) did not start: $CLOUD_LOG"
  WS_PORT=$(wait_log "$CLOUD_LOG" 'websocket listening on' 200 "$CLOUD_PID" | grep -oE '[0-9]+$') ||
    { echo "$refused" >&2; tail -3 "$CLOUD_LOG" >&2; return 1; }
  QUIC_PORT=$(wait_log "$CLOUD_LOG" 'quic listening on' 200 "$CLOUD_PID" | grep -oE '[0-9]+$')
  wait_log "$CLOUD_LOG" 'apps listening on unix' 200 "$CLOUD_PID" >/dev/null
}
cloud_down() {
  kill "$CLOUD_PID" 2>/dev/null || true
  wait "$CLOUD_PID" 2>/dev/null || true
}
# A fresh edge (and outbox) per measurement, so that no backlog of the previous one competes.
edge_up() { # protocol tag [quic congestion]; sets EDGE_PID and EDGE_LOG
  local proto=$1 link
  if [ "$proto" = websocket ]; then
    link="websocket:
  url: wss://$LINK_ADDR:$WS_PORT/bench/edge-node/events"
  else
    link="quic:
  url: $LINK_ADDR:$QUIC_PORT"
    [ -z "${3:-}" ] || link="$link
  congestion: $3"
  fi
  cat >"$W/edge-$2.yaml" <<YAML
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
  dir: $W/edge-$2
  max-messages: 100000000
  max-bytes: 100000000000
YAML
  EDGE_LOG=$W/edge-$2.log
  rm -f "$W/edge.sock"
  RUST_LOG=warn,hub::apps=info,hub::edge=info ip netns exec "$EDGE_NS" "$HUBBIN" edge -c "$W/edge-$2.yaml" 2>"$EDGE_LOG" &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  wait_log "$EDGE_LOG" 'apps listening on unix' >/dev/null
  wait_log "$EDGE_LOG" 'connected to the cloud' 600 >/dev/null
}
edge_down() { # reports reconnects during the measurement
  local again
  again=$(($(grep -c 'connected to the cloud' "$EDGE_LOG") - 1))
  [ "$again" = 0 ] || row "$L: link re-established" "$again times ($(basename "$EDGE_LOG" .log))"
  kill "$EDGE_PID"
  wait "$EDGE_PID" 2>/dev/null || true
}
hub_goodput() { # label size; the edge is up; prints a row, sets OUT
  local inflight=$INFLIGHT_SMALL cpu0 busy
  [ "$2" = 256 ] || inflight=$INFLIGHT_BIG
  cpu0=$(cpu_ticks "$NETEM_PID")
  OUT=$("$BENCH" throughput --publish "unix:$W/edge.sock" --resource "g-$2" \
    --subscribe "unix:$W/cloud.sock" --prefix "node/edge-node/g-$2" \
    --duration "$DURATION" --size "$2" --inflight "$inflight")
  busy=$(( ($(cpu_ticks "$NETEM_PID") - cpu0) * 100 / TCK / DURATION ))
  row "$L: $1 goodput edge->cloud $2 B" "$(rate "$OUT"), emulator busy $busy %"
}
echo_up() { # an echoing application at the edge
  "$HUBBIN" sub -u "unix:$W/edge.sock" -r echo --echo >/dev/null &
  ECHO=$!
  PIDS+=("$ECHO")
  sleep 0.3 # let the subscription register
}
round_trips() { # count; a request unanswered within 10 s ends the run, and the row says so
  "$BENCH" latency --url "unix:$W/cloud.sock" --resource node/edge-node/echo --count "$1" 2>&1 || true
}

# Mosquitto: the cloud broker in NS_C (TLS on ADDR_C:8883 for the bridge), the edge broker in NS_E.
if [ -n "$MOSQUITTO" ]; then
  mosquitto_bridge_confs "$W/mq-" "$W/pki" "8883 $ADDR_C" "0 $W/mq-cloud.sock" \
    "0 $W/mq-edge.sock" "$ADDR_C:8883"
  echo "log_type notice" >>"$W/mq-cloud.conf" # connections only: to see the bridge arrive
fi
mq_up() { # fresh brokers (nothing queued from before); waits until the bridge is connected
  rm -f "$W/mq-cloud.sock" "$W/mq-edge.sock"
  ip netns exec "$NS_C" "$MOSQUITTO" -c "$W/mq-cloud.conf" 2>"$W/mq-cloud.log" &
  MQ_CLOUD_PID=$!
  ip netns exec "$NS_E" "$MOSQUITTO" -c "$W/mq-edge.conf" 2>"$W/mq-edge.log" &
  MQ_EDGE_PID=$!
  PIDS+=("$MQ_CLOUD_PID" "$MQ_EDGE_PID")
  wait_log "$W/mq-cloud.log" "New (client|bridge) connected from $ADDR_E" 600 >/dev/null
  for _ in $(seq 100); do [ -S "$W/mq-edge.sock" ] && [ -S "$W/mq-cloud.sock" ] && break; sleep 0.1; done
}
mq_down() {
  kill "$MQ_CLOUD_PID" "$MQ_EDGE_PID"
  wait "$MQ_CLOUD_PID" "$MQ_EDGE_PID" 2>/dev/null || true
}
mq_goodput() { # qos size; prints a row, sets OUT
  local inflight=$INFLIGHT_SMALL cpu0 busy
  [ "$2" = 256 ] || inflight=$INFLIGHT_BIG
  mq_up
  cpu0=$(cpu_ticks "$NETEM_PID")
  OUT=$("$BENCH" mqtt --publish "unix:$W/mq-edge.sock" --subscribe "unix:$W/mq-cloud.sock" \
    --topic "up$1/g" --qos "$1" --duration "$DURATION" --size "$2" --inflight "$inflight")
  busy=$(( ($(cpu_ticks "$NETEM_PID") - cpu0) * 100 / TCK / DURATION ))
  mq_down
  row "$L: mosquitto QoS $1 goodput edge->cloud $2 B" "$(rate "$OUT"), $(grep -oE '[0-9]+ after a gap' <<<"$OUT"), emulator busy $busy %"
}

declare -A G # goodput in msg/s: G[rtt/loss/size/case]

# ---- goodput ------------------------------------------------------------------------------------
if section goodput; then
  # Loopback: the same goodput measurement with cloud and edge both on NS_C's loopback.
  if [ -z "${LOOPBACK_WS_256:-}" ] || [ -z "${LOOPBACK_QUIC_256:-}" ]; then
    L="loopback"
    LINK_ADDR=127.0.0.1 EDGE_NS=$NS_C
    netem_start 0 0 # only so that the emulator's CPU can be read; the loopback does not cross it
    cloud_up loopback
    for proto in websocket quic; do
      edge_up "$proto" "loopback-$proto"
      hub_goodput "hub $proto" 256
      edge_down
      if [ "$proto" = websocket ]; then LOOPBACK_WS_256=$(count "$OUT"); else LOOPBACK_QUIC_256=$(count "$OUT"); fi
    done
    cloud_down
    kill "$NETEM_PID"; wait "$NETEM_PID" 2>/dev/null || true
    LINK_ADDR=$ADDR_C EDGE_NS=$NS_E
  fi

  # The emulator's own ceiling: UDP datagrams of 1400 B blasted across it at 0 % loss.
  netem_start 0 50
  ip netns exec "$NS_E" "$NETEM" blast --to "$ADDR_C" --seconds 2 >"$W/blast.out"
  kill "$NETEM_PID"; wait "$NETEM_PID" 2>/dev/null || true
  row "netem capacity (UDP 1400 B, 0 % loss)" \
    "$(grep -oE 'peak [0-9]+ packets/s' "$NETEM_OUT") forwarded; offered $(grep -oE '[0-9]+/s' "$W/blast.out")"

  for rtt in $RTTS; do
    for loss in $LOSSES; do
      L="RTT $rtt ms, loss $(pct "$loss")"
      k=$rtt/$loss
      netem_start "$loss" "$rtt"
      if command -v ping >/dev/null; then
        p=$(ip netns exec "$NS_E" ping -q -c 200 -i 0.01 "$ADDR_C" | tail -2 | tr '\n' ' ')
        row "$L: ping x200" "$(grep -oE '[0-9.]+% packet loss' <<<"$p"), rtt $(grep -oE '= [0-9./]+' <<<"$p" | cut -c3-) ms (min/avg/max/mdev)"
      fi
      cloud_up "$rtt-$loss"
      for size in 256 16384; do
        for proto in websocket quic; do
          edge_up "$proto" "$rtt-$loss-$proto-$size"
          hub_goodput "hub $proto" "$size"
          G[$k/$size/$proto]=$(count "$OUT")
          edge_down
        done
        for cc in $TCP_VARIANTS; do
          set_cc "$cc"
          edge_up websocket "$rtt-$loss-websocket-$cc-$size"
          hub_goodput "hub websocket (TCP $cc)" "$size"
          G[$k/$size/websocket-$cc]=$(count "$OUT")
          edge_down
          set_cc "$CC"
        done
      done
      for proto in websocket quic; do
        edge_up "$proto" "$rtt-$loss-$proto-rt"
        echo_up
        row "$L: hub $proto request round trip" "$(round_trips "$LOSS_REQUESTS")"
        kill "$ECHO"
        edge_down
      done
      cloud_down
      for v in $QUIC_VARIANTS; do
        if ! cloud_up "$rtt-$loss-$v" "$v"; then
          row "$L: hub quic ($v)" "skipped: the cloud refuses it: $(tail -1 "$CLOUD_LOG")"
          continue
        fi
        for size in 256 16384; do
          edge_up quic "$rtt-$loss-quic-$v-$size" "$v"
          hub_goodput "hub quic ($v)" "$size"
          G[$k/$size/quic-$v]=$(count "$OUT")
          edge_down
        done
        cloud_down
      done
      if [ -n "$MOSQUITTO" ]; then
        for size in 256 16384; do
          for qos in 1 0; do
            mq_goodput "$qos" "$size"
            G[$k/$size/mq$qos]=$(count "$OUT")
          done
        done
      else
        row "$L: mosquitto" "skipped: no mosquitto (apt-get install mosquitto)"
      fi
      for size in 256 16384; do
        s="$size B"; [ "$size" = 256 ] || s="16 KiB"
        if [ -n "$MOSQUITTO" ]; then
          row "$L, $s: hub WebSocket / Mosquitto QoS 1" "$(ratio "${G[$k/$size/websocket]}" "${G[$k/$size/mq1]}")"
          row "$L, $s: hub QUIC / Mosquitto QoS 1" "$(ratio "${G[$k/$size/quic]}" "${G[$k/$size/mq1]}")"
        fi
        row "$L, $s: hub QUIC / WebSocket" "$(ratio "${G[$k/$size/quic]}" "${G[$k/$size/websocket]}")"
        for v in $QUIC_VARIANTS; do
          [ -n "${G[$k/$size/quic-$v]:-}" ] || continue
          row "$L, $s: hub QUIC ($v) / WebSocket" "$(ratio "${G[$k/$size/quic-$v]}" "${G[$k/$size/websocket]}")"
        done
        for cc in $TCP_VARIANTS; do
          row "$L, $s: hub QUIC / WebSocket (TCP $cc)" "$(ratio "${G[$k/$size/quic]}" "${G[$k/$size/websocket-$cc]}")"
        done
      done
      if [ "$rtt" = 50 ] && [ "$loss" = 0 ]; then
        row "$L, 256 B: hub WebSocket / loopback" "$(ratio "${G[$k/256/websocket]}" "$LOOPBACK_WS_256")"
        row "$L, 256 B: hub QUIC / loopback" "$(ratio "${G[$k/256/quic]}" "$LOOPBACK_QUIC_256")"
      fi
      netem_stop
    done
  done
fi

# ---- head-of-line: requests behind a bulk stream ---------------------------------------------
if section hol; then
  IMPLS="current"
  [ -z "$HUB_BASELINE" ] || IMPLS="current baseline"
  for loss in $HOL_LOSSES; do
    L="RTT $HOL_RTT ms, loss $(pct "$loss")"
    netem_start "$loss" "$HOL_RTT"
    for impl in $IMPLS; do
      HUBBIN=$HUB name=hub
      [ "$impl" = current ] || { HUBBIN=$HUB_BASELINE; name="baseline hub"; }
      cloud_up "hol-$loss-$impl"
      for proto in websocket quic; do
        edge_up "$proto" "hol-$loss-$impl-$proto"
        echo_up
        row "$L: $name $proto request round trip, idle link" "$(round_trips "$HOL_REQUESTS")"
        "$BENCH" throughput --publish "unix:$W/edge.sock" --resource bulk \
          --subscribe "unix:$W/cloud.sock" --prefix node/edge-node/bulk --duration 86400 \
          --size 16384 --inflight 256 >/dev/null 2>&1 &
        BULK=$!
        PIDS+=("$BULK")
        sleep 2 # the bulk stream fills the path
        row "$L: $name $proto request round trip, 16 KiB bulk stream" "$(round_trips "$HOL_REQUESTS")"
        kill "$BULK" "$ECHO"
        wait "$BULK" 2>/dev/null || true
        edge_down
      done
      cloud_down
    done
    HUBBIN=$HUB
    netem_stop
  done
fi

# ---- the link cut for CUT_SECONDS during a stream ---------------------------------------------
if section cut; then
  L="RTT $CUT_RTT ms, loss 0 %, link cut for $CUT_SECONDS s"
  n=$(python3 -c "print(int($CUT_RATE * ($CUT_SECONDS + 5)))")
  netem_start 0 "$CUT_RTT"
  cloud_up cut
  for proto in websocket quic; do
    edge_up "$proto" "cut-$proto"
    row "$L: hub $proto stream" "$("$BENCH" outage --publish "unix:$W/edge.sock" --resource "cut-$proto" \
      --subscribe "unix:$W/cloud.sock" --prefix "node/edge-node/cut-$proto" --link-pid "$NETEM_PID" \
      --count "$n" --rate "$CUT_RATE" --cut-after 2 --cut-seconds "$CUT_SECONDS")"
    edge_down
  done
  cloud_down
  if [ -n "$MOSQUITTO" ]; then
    mq_up
    row "$L: mosquitto QoS 1 stream" "$("$BENCH" outage --mqtt --publish "unix:$W/mq-edge.sock" \
      --resource up1/cut --subscribe "unix:$W/mq-cloud.sock" --prefix up1/cut --link-pid "$NETEM_PID" \
      --count "$n" --rate "$CUT_RATE" --cut-after 2 --cut-seconds "$CUT_SECONDS")"
    mq_down
  fi
  netem_stop
fi
