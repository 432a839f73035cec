#!/usr/bin/env bash
# Benchmarks on this machine, side by side with a Mosquitto 2.0 bridge doing the same job.
# Prints one table of figures; nothing here passes or fails on a number.
#
#   scripts/bench.sh            # defaults: 100000 messages of 256 B, 10000 of 16 KiB
#   COUNT=200000 scripts/bench.sh
#
# hub: applications -> edge hub -> cloud hub -> applications (and back), at-least-once, through
# the real processes and their application endpoints (the WebSocket API; and the MQTT listeners,
# QoS 1 and QoS 0, with the same MQTT client and bounds as Mosquitto's rows), with
# target/release/hub-bench as the applications; CPU per message of both hubs, and the edge's
# memory per idle MQTT connection. Mosquitto: an edge broker bridging to a cloud broker over
# mutual TLS (the same dev PKI), QoS 1 and QoS 0, publisher with a bounded in-flight window
# (hub-bench mqtt), CPU per message of both brokers, memory per idle connection, and request round
# trips through the bridge. Then the WAN section, scripts/bench-loss.sh: hub and the
# same Mosquitto bridge over an emulated link between two network namespaces (latency, loss, the
# head-of-line run, a link cut during a stream), with the ratios to this run's loopback goodput;
# skipped where namespaces or TUN devices are unavailable.
#
# Environment: COUNT, BIG_COUNT (messages per throughput run), REQUESTS (round trips),
# MQ_STOCK_REQUESTS, BACKLOG, SCALE, SCALE_ONLY (websocket, quic or mixed; default both one after the other), SCRAPES (per metrics run, default 50), NODES_REQUESTS (default
# 10), IDLE (idle MQTT connections, default 2000), MQTT_LINKS (the
# link protocols hub's MQTT rows run over, default "websocket quic"), PARTS (default all; or any
# of: api (hub's WebSocket API rows and their ratios), mqtt (hub's MQTT rows, the idle
# connections, their ratios), reconnect, backlog, scale, metrics (what a /metrics scrape and a
# /nodes request cost a cloud with SCALE nodes), requests (round trips), cluster (one cloud
# against two instances on one nats-server: throughput, round trips, memory per node; with
# CLUSTER_COUNT messages per run, default 50000, CLUSTER_NODES, the node counts of the
# cloud->edge rows, default "1 8", CLUSTER_REQUESTS, default REQUESTS, CLUSTER_SCALE nodes for
# the memory, default 2000), wan; Mosquitto's
# throughput rows run with api or mqtt), and those of scripts/bench-loss.sh (RTTS, LOSSES, DURATION,
# LOSS_REQUESTS, INFLIGHT_SMALL, INFLIGHT_BIG, QUIC_VARIANTS, TCP_VARIANTS, SECTIONS, HOL_*, HUB_BASELINE, CUT_*, NS_C, NS_E,
# SUBNET; see its --help). Run as root: it installs mosquitto with apt if missing, and the WAN
# section creates network namespaces.
set -euo pipefail
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PARTS=${PARTS:-all}
part() { [[ " $PARTS " == *" all "* || " $PARTS " == *" $1 "* ]]; }
COUNT=${COUNT:-100000}
BIG_COUNT=${BIG_COUNT:-10000}
REQUESTS=${REQUESTS:-2000}
MQ_STOCK_REQUESTS=${MQ_STOCK_REQUESTS:-200} # about 44 ms each
IDLE=${IDLE:-2000}
MQTT_LINKS=${MQTT_LINKS:-websocket quic}

if ! command -v mosquitto >/dev/null; then
  echo "installing mosquitto (Debian's package) for the comparison" >&2
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
echo "building release binaries" >&2
cargo build --release --locked --quiet
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
HUB=$TARGET/release/hub
BENCH=$TARGET/release/hub-bench
W=$(mktemp -d "${TMPDIR:-/tmp}/hub-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_log() { # file pattern [tenths of a second, default 200]
  for _ in $(seq "${3:-200}"); do grep -m1 -E "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench: no '$2' in $1" >&2; cat "$1" >&2; exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time (utime + stime, all threads) of processes, in clock ticks; then per message.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
TCK=$(getconf CLK_TCK)
us_per() { python3 -c "print(f'{$1 * 1e6 / $TCK / $2:.2f}')"; } # ticks messages
# measured PIDS COMMAND...: runs COMMAND, its output in OUT, and the CPU ticks each of the
# processes PIDS (space-separated) used meanwhile in DT, in that order.
measured() {
  local pids=$1 p i=0 t0=()
  shift
  for p in $pids; do t0+=("$(ticks "$p")"); done
  OUT=$("$@")
  DT=()
  for p in $pids; do DT+=("$(($(ticks "$p") - t0[i]))"); i=$((i + 1)); done
}
cpu_row() { # label messages name-of-DT[0] name-of-DT[1]
  row "CPU $1, us/msg" "$(us_per $((DT[0] + DT[1])) "$2") ($3 $(us_per "${DT[0]}" "$2"), $4 $(us_per "${DT[1]}" "$2"))"
}
delivered_of() { # messages published, hub-bench mqtt's output: how many arrived
  echo $(($1 - $(grep -oE '[0-9]+ lost' <<<"$2" | grep -oE '[0-9]+')))
}
idle_mqtt() { # name pid HOST:PORT
  local before after connected
  before=$(rss_kib "$2")
  "$BENCH" mqtt-idle --connect "$3" --connections "$IDLE" --hold 10 >"$W/idle-$2.out" &
  local tool=$!
  PIDS+=("$tool")
  connected=$(wait_log "$W/idle-$2.out" '^connected' 1800)
  sleep 2 # settle after the last SUBACK
  after=$(rss_kib "$2")
  wait "$tool"
  row "idle MQTT connections, $1" "$connected; $(grep -oE 'after .*' "$W/idle-$2.out")"
  row "idle MQTT connections, $1 RSS, KiB" "$before -> $after ($(python3 -c "print(f'{($after - $before) / $IDLE:.2f}')") KiB per connection)"
}
ROWS=()
row() { ROWS+=("$(printf '%-44s %s' "$1" "$2")"); echo "$1: $2" >&2; }
rate() { grep -oE "$1 [0-9]+ msg/s" <<<"$2" | grep -oE '[0-9]+' | head -1; }
ms_of() { grep -oE "$1 [0-9.]+" <<<"$2" | grep -oE '[0-9.]+$'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

"$HUB" certs --dir "$W/pki" --node edge-node --node bridge >/dev/null

# --- hub -----------------------------------------------------------------------------------
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
queues:
  dir: $W/cloud
  max-messages: 100000000
  max-bytes: 100000000000
YAML
if part api || part mqtt || part reconnect; then
RUST_LOG=warn,hub::apps=info,hub::cloud=info,hub::mqtt=info "$HUB" cloud -c "$W/cloud.yaml" 2>"$W/cloud.log" &
CLOUD_PID=$!
PIDS+=("$CLOUD_PID")
WS_PORT=$(wait_log "$W/cloud.log" 'websocket listening on' | grep -oE '[0-9]+$')
QUIC_PORT=$(wait_log "$W/cloud.log" 'quic listening on' | grep -oE '[0-9]+$')
CLOUD=$(wait_log "$W/cloud.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
CLOUD_MQ=$(wait_log "$W/cloud.log" 'mqtt listening on' | grep -oE '[0-9.]+:[0-9]+$')
row "idle RSS, hub cloud, KiB" "$(rss_kib "$CLOUD_PID")"
fi

for proto in websocket quic; do
  mqtt_here=false
  part mqtt && [[ " $MQTT_LINKS " == *" $proto "* ]] && mqtt_here=true
  part api || $mqtt_here || continue
  if [ "$proto" = websocket ]; then
    link="websocket:
  url: wss://127.0.0.1:$WS_PORT/bench/edge-node/events"
  else
    link="quic:
  url: 127.0.0.1:$QUIC_PORT"
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
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
outbox:
  dir: $W/edge-$proto
  max-messages: 100000000
  max-bytes: 100000000000
YAML
  RUST_LOG=warn,hub::apps=info,hub::edge=info,hub::mqtt=info "$HUB" edge -c "$W/edge-$proto.yaml" 2>"$W/edge-$proto.log" &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  EDGE=$(wait_log "$W/edge-$proto.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
  EDGE_MQ=$(wait_log "$W/edge-$proto.log" 'mqtt listening on' | grep -oE '[0-9.]+:[0-9]+$')
  wait_log "$W/edge-$proto.log" 'connected to the cloud' >/dev/null
  row "idle RSS, hub edge ($proto), KiB" "$(rss_kib "$EDGE_PID")"
  HUBS="$EDGE_PID $CLOUD_PID"
  if part api; then
    for size in 256 16384; do
      n=$COUNT; [ "$size" = 256 ] || n=$BIG_COUNT
      measured "$HUBS" "$BENCH" throughput --publish "$EDGE" --resource up --subscribe "$CLOUD" --prefix node/edge-node/up --count "$n" --size "$size"
      row "hub $proto edge->cloud ${size} B, msg/s" "$(rate delivered "$OUT") ($OUT)"
      cpu_row "hub $proto edge->cloud ${size} B" "$n" edge cloud
      eval "HUB_UP_${proto}_${size}=$(rate delivered "$OUT")"
      measured "$HUBS" "$BENCH" throughput --publish "$CLOUD" --resource node/edge-node/down --subscribe "$EDGE" --prefix down --count "$n" --size "$size"
      row "hub $proto cloud->edge ${size} B, msg/s" "$(rate delivered "$OUT") ($OUT)"
      cpu_row "hub $proto cloud->edge ${size} B" "$n" edge cloud
      eval "HUB_DOWN_${proto}_${size}=$(rate delivered "$OUT")"
    done
    "$HUB" sub -u "$EDGE" -r echo --echo >/dev/null &
    ECHO=$!
    PIDS+=("$ECHO")
    sleep 0.3
    out=$("$BENCH" latency --url "$CLOUD" --resource node/edge-node/echo --count "$REQUESTS")
    row "hub $proto request round trip" "$out"
    eval "HUB_RT_${proto}='$out'"
    kill "$ECHO"
  fi
  # hub's MQTT listeners, loaded like the Mosquitto bridge below (the same client, window and
  # counts): a publisher at the edge's listener to T and a subscriber at the cloud's to
  # node/edge-node/T, then a publisher at the cloud's to node/edge-node/T and a subscriber at the
  # edge's to T. A topic of its own per run, so that nothing of one run reaches the next.
  if $mqtt_here; then
    for qos in 1 0; do
      for size in 256 16384; do
        n=$COUNT; [ "$size" = 256 ] || n=$BIG_COUNT
        t=mq/q$qos/s$size
        measured "$HUBS" "$BENCH" mqtt --publish "$EDGE_MQ" --topic "up/$t" --subscribe "$CLOUD_MQ" \
          --subscribe-topic "node/edge-node/up/$t" --qos "$qos" --count "$n" --size "$size"
        row "hub MQTT ($proto) QoS $qos edge->cloud ${size} B, msg/s" "$(rate delivered "$OUT") ($(grep -oE '[0-9]+ lost' <<<"$OUT"))"
        cpu_row "hub MQTT ($proto) QoS $qos edge->cloud ${size} B" "$(delivered_of "$n" "$OUT")" edge cloud
        eval "HMQ_UP_${proto}_${qos}_${size}=$(rate delivered "$OUT")"
        measured "$HUBS" "$BENCH" mqtt --publish "$CLOUD_MQ" --topic "node/edge-node/down/$t" \
          --subscribe "$EDGE_MQ" --subscribe-topic "down/$t" --qos "$qos" --count "$n" --size "$size"
        row "hub MQTT ($proto) QoS $qos cloud->edge ${size} B, msg/s" "$(rate delivered "$OUT") ($(grep -oE '[0-9]+ lost' <<<"$OUT"))"
        cpu_row "hub MQTT ($proto) QoS $qos cloud->edge ${size} B" "$(delivered_of "$n" "$OUT")" edge cloud
        eval "HMQ_DOWN_${proto}_${qos}_${size}=$(rate delivered "$OUT")"
      done
    done
  fi
  kill "$EDGE_PID"
  wait "$EDGE_PID" 2>/dev/null || true
done

# Idle MQTT connections: a fresh edge (WebSocket link) takes IDLE connections at its MQTT
# listener, each CONNECT (clean session), SUBSCRIBE to a topic of its own at QoS 1, then only
# PINGREQ; the edge's RSS before and 2 s after the last SUBACK.
if part mqtt; then
  cat >"$W/edge-idle.yaml" <<YAML
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
mqtt:
  listen: 127.0.0.1:0
  max-connections: $((IDLE + 16))
outbox:
  dir: $W/edge-idle
YAML
  RUST_LOG=warn,hub::edge=info,hub::mqtt=info "$HUB" edge -c "$W/edge-idle.yaml" 2>"$W/edge-idle.log" &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  EDGE_MQ=$(wait_log "$W/edge-idle.log" 'mqtt listening on' | grep -oE '[0-9.]+:[0-9]+$')
  wait_log "$W/edge-idle.log" 'connected to the cloud' >/dev/null
  idle_mqtt "hub edge" "$EDGE_PID" "$EDGE_MQ"
  kill "$EDGE_PID"
  wait "$EDGE_PID" 2>/dev/null || true
fi
if part api || part mqtt; then
  row "RSS, hub cloud after the runs, KiB" "$(rss_kib "$CLOUD_PID")"
fi

# Reconnects through a relay that emulates a round trip and then blackholes the link: the edge
# notices (read-deadline 1 s), the link returns, and a message queued meanwhile is delivered.
# "connect" is the edge's own measure of its handshake (TCP+TLS+upgrade+hello, or QUIC+hello);
# "delivered" runs from the relay's restore to the cloud application's receipt, so it also holds
# the wait for the edge's next attempt (backoff 0.05-0.2 s) and, for WebSocket, an attempt
# stalled in the blackhole running into handshake-timeout (2 s).
reconnect() { # protocol rtt-ms
  local proto=$1 rtt=$2 port udp=""
  if [ "$proto" = websocket ]; then port=$WS_PORT; else port=$QUIC_PORT; udp=--udp; fi
  "$BENCH" relay --to "127.0.0.1:$port" $udp --rtt-ms "$rtt" >"$W/relay-$proto-$rtt.out" &
  local relay=$!
  PIDS+=("$relay")
  local rport
  rport=$(wait_log "$W/relay-$proto-$rtt.out" 'relay listening' | grep -oE '[0-9]+$')
  local link="quic:
  url: 127.0.0.1:$rport"
  [ "$proto" = websocket ] && link="websocket:
  url: wss://127.0.0.1:$rport/bench/edge-node/events"
  cat >"$W/edge-rc-$proto-$rtt.yaml" <<YAML
$link
  cafile: $W/pki/ca.crt
  certfile: $W/pki/node-edge-node.crt
  keyfile: $W/pki/node-edge-node.key
  handshake-timeout: 2
  read-deadline: 1
controller:
  protocol: $proto
  heartbeat: 0.3
  backoff-initial: 0.05
  backoff-max: 0.2
  project-id: bench
  node-id: edge-node
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
outbox:
  dir: $W/edge-rc-$proto-$rtt
YAML
  local log="$W/edge-rc-$proto-$rtt.log"
  RUST_LOG=info "$HUB" edge -c "$W/edge-rc-$proto-$rtt.yaml" 2>"$log" &
  local edge=$!
  PIDS+=("$edge")
  local apps first
  apps=$(wait_log "$log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
  first=$(wait_log "$log" 'connected to the cloud' | grep -oE '\([^)]*\)')
  "$HUB" sub -u "$CLOUD" -r node/edge-node/rc -n 1 >"$W/rc.out" &
  local sub=$!
  sleep 0.3 # let the subscription register
  kill -USR1 "$relay"
  wait_log "$log" 'link to the cloud lost' >/dev/null
  "$HUB" pub -u "$apps" -r rc '"queued while the link was down"' >/dev/null
  local t0 t1
  t0=$(date +%s.%N)
  kill -USR2 "$relay"
  wait "$sub"
  t1=$(date +%s.%N)
  local again
  again=$(grep 'connected to the cloud' "$log" | tail -1 | grep -oE '\([^)]*\)')
  row "reconnect $proto, RTT $rtt ms: first connect" "$first"
  row "reconnect $proto, RTT $rtt ms: after restore" "connect $again, first message delivered after $(python3 -c "print(f'{($t1 - $t0) * 1000:.1f} ms')")"
  kill "$edge" "$relay"
  wait "$edge" 2>/dev/null || true
}
if part reconnect; then
  for rtt in 0 50; do
    for proto in websocket quic; do
      reconnect "$proto" "$rtt"
    done
  done
fi
if part api || part mqtt || part reconnect; then
  kill "$CLOUD_PID"; wait "$CLOUD_PID" 2>/dev/null || true
fi

# Memory under backlog: an edge whose cloud is unreachable takes BACKLOG messages of 256 B.
# (The parts' bodies below are not indented: their here-documents would not allow it.)
if part backlog; then
BACKLOG=${BACKLOG:-1000000}
cat >"$W/edge-backlog.yaml" <<YAML
quic:
  url: 127.0.0.1:$(free_port)
  cafile: $W/pki/ca.crt
  certfile: $W/pki/node-edge-node.crt
  keyfile: $W/pki/node-edge-node.key
controller:
  protocol: quic
  project-id: bench
  node-id: edge-node
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
outbox:
  dir: $W/edge-backlog
  max-messages: 100000000
  max-bytes: 100000000000
YAML
RUST_LOG=warn,hub::apps=info "$HUB" edge -c "$W/edge-backlog.yaml" 2>"$W/edge-backlog.log" &
EDGE_PID=$!
PIDS+=("$EDGE_PID")
EDGE=$(wait_log "$W/edge-backlog.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
python3 -c "import sys; sys.stdout.write(('\"' + 'x' * 254 + '\"\n') * $BACKLOG)" >"$W/backlog.lines"
t0=$(date +%s.%N)
out=$("$HUB" pub -u "$EDGE" -r backlog --stdin <"$W/backlog.lines")
t1=$(date +%s.%N)
row "edge backlog: $out, accepted msg/s (hub pub --stdin)" "$(python3 -c "print(round($BACKLOG / ($t1 - $t0)))")"
row "RSS, hub edge with $BACKLOG messages queued, KiB" "$(rss_kib "$EDGE_PID")"
row "disk, edge outbox with $BACKLOG messages, bytes" "$(du -sb "$W/edge-backlog" | cut -f1)"
kill "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true
rm -f "$W/backlog.lines"
fi # backlog

# --- scale: many idle nodes on one cloud ------------------------------------------------------
# SCALE nodes, all over WebSocket, then SCALE all over QUIC (SCALE_ONLY=websocket or quic: that
# one only; SCALE_ONLY=mixed: half over each, on one cloud), each with its own certificate, connect
# to a fresh cloud with default settings and stay idle with heartbeats; RSS per node and CPU while
# idle are read from /proc. The cloud holds one descriptor per node (its queue's segment) besides each WebSocket's socket: 10,000 nodes need
# about 15,000 of the 20,000 these machines allow.
# The configuration of a cloud for SCALE nodes of the scale PKI, queues in $W/NAME: cloud_for_scale
# NAME [EXTRA YAML]
cloud_for_scale() {
  cat >"$W/$1.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
  address: 127.0.0.1
  ca: $W/scale-pki/ca.crt
  cert: $W/scale-pki/server.crt
  key: $W/scale-pki/server.key
  node-limit: $((SCALE + 10))
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
queues:
  dir: $W/$1
${2:-}
YAML
}
if part scale; then
SCALE=${SCALE:-10000}
# shellcheck disable=SC2046 # one --node argument per node, split on purpose
"$HUB" certs --dir "$W/scale-pki" $(seq -f 'sim-%.0f' 0 $((SCALE - 1)) | sed 's/^/--node /') >/dev/null
# One fresh cloud per transport (SCALE_ONLY=mixed: one cloud, half over each), so each row is
# the memory of a node of that transport alone.
for only in ${SCALE_ONLY:-websocket quic}; do
cloud_for_scale "scale-cloud-$only"
RUST_LOG=warn,hub::cloud=info "$HUB" cloud -c "$W/scale-cloud-$only.yaml" 2>"$W/scale-cloud-$only.log" &
SCALE_PID=$!
PIDS+=("$SCALE_PID")
S_WS=$(wait_log "$W/scale-cloud-$only.log" 'websocket listening on' | grep -oE '[0-9.]+:[0-9]+$')
S_QUIC=$(wait_log "$W/scale-cloud-$only.log" 'quic listening on' | grep -oE '[0-9.]+:[0-9]+$')
before=$(rss_kib "$SCALE_PID")
only_arg=()
[ "$only" != mixed ] && only_arg=(--only "$only")
"$BENCH" scale --websocket "$S_WS" --quic "$S_QUIC" --pki "$W/scale-pki" --nodes "$SCALE" --hold 15 "${only_arg[@]}" >"$W/scale-$only.out" &
SIM=$!
PIDS+=("$SIM")
connected=$(wait_log "$W/scale-$only.out" '^connected' 1800)
sleep 2 # settle after the last handshake
after=$(rss_kib "$SCALE_PID")
cpu0=$(awk '{print $14 + $15}' "/proc/$SCALE_PID/stat")
sleep 10
cpu1=$(awk '{print $14 + $15}' "/proc/$SCALE_PID/stat")
row "scale ($only): $SCALE nodes" "$connected"
row "scale ($only): hub cloud RSS, KiB (before -> with nodes)" "$before -> $after ($(( (after - before) / SCALE )).$(( (after - before) * 10 / SCALE % 10 )) KiB per node)"
row "scale ($only): hub cloud CPU while idle, % of one core" "$(( (cpu1 - cpu0) * 100 / $(getconf CLK_TCK) / 10 ))"
wait "$SIM" || true
kill "$SCALE_PID"; wait "$SCALE_PID" 2>/dev/null || true
done
fi # scale

# --- metrics: what a scrape costs a cloud with many nodes -------------------------------------
# A fresh cloud (defaults but node-limit, metrics.listen on) with SCALE nodes of hub-bench scale
# connected and idle; hub-bench scrape then GETs /metrics SCRAPES times, 0.2 s apart (so that the
# cloud's caches cool down between scrapes, as between a Prometheus server's), each on a new
# connection, and reads the cloud's CPU time (the run times of all its threads, from
# /proc/PID/task/*/schedstat, in nanoseconds) just before and after each. That includes what the
# cloud did meanwhile for its nodes (heartbeats): the rows say how much of it that is, from its
# rate over 2 s without scrapes. The bar of the design: under 50 ms of CPU and 1 MiB per scrape
# at 10,000 nodes. Then NODES_REQUESTS /nodes requests of the application endpoint (what `hub
# nodes` fetches), measured alike; then the scrapes again on a second cloud with
# metrics.per-node (and as many nodes).
if part metrics; then
SCALE=${SCALE:-10000}
SCRAPES=${SCRAPES:-50}
NODES_REQUESTS=${NODES_REQUESTS:-10}
if [ ! -d "$W/scale-pki" ]; then
  # shellcheck disable=SC2046 # one --node argument per node, split on purpose
  "$HUB" certs --dir "$W/scale-pki" $(seq -f 'sim-%.0f' 0 $((SCALE - 1)) | sed 's/^/--node /') >/dev/null
fi
met() { python3 -c "print('met' if $1 < $2 else 'NOT met')"; } # figure bar
metrics_run() { # per-node: false or true
  local name=metrics-$1
  cloud_for_scale "$name" "metrics:
  listen: 127.0.0.1:0
  per-node: $1"
  RUST_LOG=warn,hub::cloud=info,hub::apps=info,hub::http=info "$HUB" cloud -c "$W/$name.yaml" 2>"$W/$name.log" &
  local cloud=$!
  PIDS+=("$cloud")
  local ws quic apps ops
  ws=$(wait_log "$W/$name.log" 'websocket listening on' | grep -oE '[0-9.]+:[0-9]+$')
  quic=$(wait_log "$W/$name.log" 'quic listening on' | grep -oE '[0-9.]+:[0-9]+$')
  apps=$(wait_log "$W/$name.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
  ops=$(wait_log "$W/$name.log" 'metrics and health listening on' | grep -oE 'http://[0-9.:]+' | cut -c8-)
  "$BENCH" scale --websocket "$ws" --quic "$quic" --pki "$W/scale-pki" --nodes "$SCALE" --hold 3600 >"$W/$name.out" &
  local sim=$!
  PIDS+=("$sim")
  local connected label out cpu bytes bg bar_cpu="no bar" bar_bytes="no bar"
  connected=$(wait_log "$W/$name.out" '^connected' 1800)
  sleep 2 # settle after the last handshake
  label="metrics, $SCALE nodes"
  [ "$1" = true ] && label="metrics per-node, $SCALE nodes"
  row "$label" "$connected"
  out=$("$BENCH" scrape --metrics "$ops" --pid "$cloud" --count "$SCRAPES")
  cpu=$(grep -oE 'CPU [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  bg=$(grep -oE '[0-9.]+ ms of it' <<<"$out" | grep -oE '^[0-9.]+')
  bytes=$(grep -oE '[0-9]+ bytes' <<<"$out" | head -1 | grep -oE '[0-9]+')
  if [ "$1" = false ]; then
    bar_cpu="bar < 50: $(met "$cpu" 50)"
    bar_bytes="bar < 1 MiB: $(met "$bytes" 1048576)"
  fi
  row "$label: CPU per scrape, ms" "$cpu ($bar_cpu; idle background $bg of it)"
  row "$label: response, bytes" "$bytes ($bar_bytes)"
  row "$label: wall per scrape" "$(grep -oE 'p50 [0-9.]+ ms, max [0-9.]+ ms' <<<"$out") ($SCRAPES scrapes)"
  if [ "$1" = false ]; then
    out=$("$BENCH" scrape --nodes "$apps" --pid "$cloud" --count "$NODES_REQUESTS")
    cpu=$(grep -oE 'CPU [0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
    bg=$(grep -oE '[0-9.]+ ms of it' <<<"$out" | grep -oE '^[0-9.]+')
    row "hub nodes, $SCALE nodes: answer, bytes" "$(grep -oE '[0-9]+ bytes' <<<"$out" | head -1 | grep -oE '[0-9]+')"
    row "hub nodes, $SCALE nodes: CPU per request, ms" "$cpu (idle background $bg of it)"
    row "hub nodes, $SCALE nodes: wall per request" "$(grep -oE 'p50 [0-9.]+ ms, max [0-9.]+ ms' <<<"$out") ($NODES_REQUESTS requests)"
  fi
  kill "$sim" "$cloud"
  wait "$sim" "$cloud" 2>/dev/null || true
  rm -rf "${W:?}/$name"
}
metrics_run false
metrics_run true
fi # metrics

# --- cluster: two cloud instances on one nats-server, next to one cloud ------------------------
# The same jobs through one cloud process ("single") and through a cluster of two instances on
# one nats-server with JetStream ("cluster": edges connected to instance A, the cloud
# applications on instance B, so every message crosses NATS). Each mode gets fresh processes:
# the clouds (node-limit, large queue bounds, queues.fsync always as shipped), and
# max(CLUSTER_NODES) edges over WebSocket (nodes cn-0, cn-1, ...) each with a subscriber of its
# own. Rows: 256 B edge->cloud throughput (one node), cloud->edge round robin over each of
# CLUSTER_NODES nodes (cluster mode stores one batch per lane and JetStream round trip, so many
# nodes show the whole), from one publishing application and from one per node, request round
# trips (a cloud application's sync requests
# answered by `hub sub --echo` on node cn-0), CPU per message of the clouds and of nats-server;
# then the ratios cluster/single. Then the cost of a connected node: CLUSTER_SCALE idle nodes
# of hub-bench scale (WebSocket) on a cloud without and one with cluster mode, RSS per node of
# the cloud and of nats-server.
if part cluster; then
CLUSTER_COUNT=${CLUSTER_COUNT:-50000}
CLUSTER_NODES=${CLUSTER_NODES:-1 8}
CLUSTER_REQUESTS=${CLUSTER_REQUESTS:-$REQUESTS}
CLUSTER_SCALE=${CLUSTER_SCALE:-2000}
command -v nats-server >/dev/null || { echo "bench: the cluster part needs nats-server (scripts/test-deps.sh installs it)" >&2; exit 1; }
C_EDGES=1
for k in $CLUSTER_NODES; do [ "$k" -gt "$C_EDGES" ] && C_EDGES=$k; done
# shellcheck disable=SC2046 # one --node argument per node, split on purpose
"$HUB" certs --dir "$W/cl-pki" $(seq -f 'cn-%.0f' 0 $((C_EDGES - 1)) | sed 's/^/--node /') >/dev/null
nats_start() { # name: a fresh nats-server with JetStream in $W/name; sets NATS_PID, NATS_URL
  local port
  port=$(free_port)
  printf 'max_payload: 8MB\n' >"$W/$1.conf" # room for 1 MiB messages with hub's headers
  nats-server -c "$W/$1.conf" -js -sd "$W/$1" -a 127.0.0.1 -p "$port" 2>"$W/$1.log" &
  NATS_PID=$!
  PIDS+=("$NATS_PID")
  wait_log "$W/$1.log" 'Server is ready' >/dev/null
  NATS_URL=nats://127.0.0.1:$port
}
cluster_cloud() { # name pki node-limit [instance]: a cloud's config, in cluster mode with an instance
  cat >"$W/$1.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
  address: 127.0.0.1
  ca: $W/$2/ca.crt
  cert: $W/$2/server.crt
  key: $W/$2/server.key
  node-limit: $3
mqtt:
  listen: 127.0.0.1:0
apps:
  listen: 127.0.0.1:0
queues:
  dir: $W/$1
  max-messages: 1000000
  max-bytes: 10000000000
YAML
  if [ -n "${4:-}" ]; then
    printf 'cluster:\n  nats: %s\n  instance: %s\n' "$NATS_URL" "$4" >>"$W/$1.yaml"
  fi
}
cloud_start() { # name: starts the cloud of $W/name.yaml; sets C_PID, C_WS (port), C_APPS (URL)
  RUST_LOG=warn,hub::apps=info,hub::cloud=info "$HUB" cloud -c "$W/$1.yaml" 2>"$W/$1.log" &
  C_PID=$!
  PIDS+=("$C_PID")
  C_WS=$(wait_log "$W/$1.log" 'websocket listening on' | grep -oE '[0-9]+$')
  C_APPS=$(wait_log "$W/$1.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
}
edges_start() { # mode websocket-port: C_EDGES edges; sets E_PIDS, E_APPS
  E_PIDS=(); E_APPS=()
  local i
  for i in $(seq 0 $((C_EDGES - 1))); do
    cat >"$W/$1-edge-$i.yaml" <<YAML
websocket:
  url: wss://127.0.0.1:$2/bench/cn-$i/events
  cafile: $W/cl-pki/ca.crt
  certfile: $W/cl-pki/node-cn-$i.crt
  keyfile: $W/cl-pki/node-cn-$i.key
controller:
  protocol: websocket
  project-id: bench
  node-id: cn-$i
mqtt:
  listen: off
apps:
  listen: 127.0.0.1:0
outbox:
  dir: $W/$1-edge-$i
  max-messages: 1000000
  max-bytes: 10000000000
YAML
    RUST_LOG=warn,hub::apps=info,hub::edge=info "$HUB" edge -c "$W/$1-edge-$i.yaml" 2>"$W/$1-edge-$i.log" &
    E_PIDS+=($!)
    PIDS+=($!)
  done
  for i in $(seq 0 $((C_EDGES - 1))); do
    E_APPS+=("$(wait_log "$W/$1-edge-$i.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')")
    wait_log "$W/$1-edge-$i.log" 'connected to the cloud' >/dev/null
  done
}
cpu_of() { # label messages: CPU per message of the clouds (and nats-server) in DT, from CPIDS' order
  local i=0 total=0 parts="" name
  for name in $CNAMES; do
    total=$((total + DT[i]))
    parts+="${parts:+, }$name $(us_per "${DT[i]}" "$2")"
    i=$((i + 1))
  done
  row "CPU $1, us/msg" "$(us_per "$total" "$2") ($parts)"
}
cluster_mode() { # single or cluster: throughput and round trips; sets CL_<mode>_* figures
  local mode=$1 label edge_cloud app_cloud k subs i out
  if [ "$mode" = single ]; then
    cluster_cloud cl-single cl-pki 100
    cloud_start cl-single
    edge_cloud=$C_WS; app_cloud=$C_APPS; CPIDS=$C_PID; CNAMES=cloud
    label="single cloud"
  else
    nats_start cl-nats
    cluster_cloud cl-a cl-pki 100 cloud-a
    cluster_cloud cl-b cl-pki 100 cloud-b
    cloud_start cl-a
    local a_pid=$C_PID
    edge_cloud=$C_WS
    cloud_start cl-b
    app_cloud=$C_APPS
    CPIDS="$a_pid $C_PID $NATS_PID"; CNAMES="A B nats-server"
    label="cluster (edge on A, app on B)"
  fi
  edges_start "cl-$mode" "$edge_cloud"
  measured "$CPIDS" "$BENCH" throughput --publish "${E_APPS[0]}" --resource "up/$mode" --subscribe "$app_cloud" \
    --prefix "node/cn-0/up/$mode" --count "$CLUSTER_COUNT"
  row "$label: edge->cloud 256 B, msg/s" "$(rate delivered "$OUT") ($OUT)"
  cpu_of "$label: edge->cloud 256 B" "$CLUSTER_COUNT"
  eval "CL_${mode}_up=$(rate delivered "$OUT")"
  for k in $CLUSTER_NODES; do
    subs=()
    for i in $(seq 0 $((k - 1))); do subs+=(--subscribe "${E_APPS[i]}"); done
    for each in "" --publisher-each; do
      [ "$k" = 1 ] && [ -n "$each" ] && continue
      what="1 node"
      [ "$k" = 1 ] || what="$k nodes, one publisher"
      [ -n "$each" ] && what="$k nodes, a publisher each"
      measured "$CPIDS" "$BENCH" throughput --publish "$app_cloud" --resource "node/cn-{i}/down/$mode/$k$each" \
        "${subs[@]}" $each --prefix "down/$mode/$k$each" --count "$CLUSTER_COUNT"
      row "$label: cloud->edge 256 B, $what, msg/s" "$(rate delivered "$OUT") ($OUT)"
      cpu_of "$label: cloud->edge 256 B, $what" "$CLUSTER_COUNT"
      eval "CL_${mode}_down_$k${each:+_each}=$(rate delivered "$OUT")"
    done
  done
  "$HUB" sub -u "${E_APPS[0]}" -r echo --echo >/dev/null &
  local echo=$!
  PIDS+=("$echo")
  sleep 0.3 # let the subscription register
  out=$("$BENCH" latency --url "$app_cloud" --resource node/cn-0/echo --count "$CLUSTER_REQUESTS")
  row "$label: request round trip" "$out"
  eval "CL_${mode}_rt='$out'"
  kill "$echo" "${E_PIDS[@]}"
  # shellcheck disable=SC2086 # the process ids, split on purpose
  kill $CPIDS
  # shellcheck disable=SC2086
  wait "$echo" "${E_PIDS[@]}" $CPIDS 2>/dev/null || true
}
cluster_mode single
cluster_mode cluster
s=CL_single_up; c=CL_cluster_up
row "ratio cluster/single edge->cloud (256 B)" "$(ratio "${!c}" "${!s}")"
for k in $CLUSTER_NODES; do
  s=CL_single_down_$k; c=CL_cluster_down_$k
  if [ "$k" = 1 ]; then
    row "ratio cluster/single cloud->edge (256 B, 1 node)" "$(ratio "${!c}" "${!s}")"
    continue
  fi
  row "ratio cluster/single cloud->edge (256 B, $k nodes, one publisher)" "$(ratio "${!c}" "${!s}")"
  s=CL_single_down_${k}_each; c=CL_cluster_down_${k}_each
  row "ratio cluster/single cloud->edge (256 B, $k nodes, a publisher each)" "$(ratio "${!c}" "${!s}")"
done
s=CL_single_rt; c=CL_cluster_rt
row "ratio cluster/single request p50, p99" "$(python3 -c "print(f'{$(ms_of p50 "${!c}")/$(ms_of p50 "${!s}"):.2f}x, {$(ms_of p99 "${!c}")/$(ms_of p99 "${!s}"):.2f}x')")"

# The cost of a connected node: CLUSTER_SCALE idle WebSocket nodes on a fresh cloud, without and
# with cluster mode (a fresh nats-server); RSS before and 2 s after the last handshake.
# shellcheck disable=SC2046 # one --node argument per node, split on purpose
"$HUB" certs --dir "$W/cs-pki" $(seq -f 'sim-%.0f' 0 $((CLUSTER_SCALE - 1)) | sed 's/^/--node /') >/dev/null
for mode in single cluster; do
  instance=""
  if [ "$mode" = cluster ]; then
    nats_start cs-nats
    instance="cloud-a"
  fi
  cluster_cloud "cs-$mode" cs-pki $((CLUSTER_SCALE + 10)) $instance
  RUST_LOG=warn,hub::cloud=info "$HUB" cloud -c "$W/cs-$mode.yaml" 2>"$W/cs-$mode.log" &
  cs_pid=$!
  PIDS+=("$cs_pid")
  cs_ws=$(wait_log "$W/cs-$mode.log" 'websocket listening on' | grep -oE '[0-9.]+:[0-9]+$')
  cs_quic=$(wait_log "$W/cs-$mode.log" 'quic listening on' | grep -oE '[0-9.]+:[0-9]+$')
  sleep 1 # the cluster's first heartbeats and watchers
  before=$(rss_kib "$cs_pid")
  [ "$mode" = cluster ] && nats_before=$(rss_kib "$NATS_PID")
  "$BENCH" scale --websocket "$cs_ws" --quic "$cs_quic" --pki "$W/cs-pki" --nodes "$CLUSTER_SCALE" \
    --hold 5 --only websocket >"$W/cs-$mode.out" &
  sim=$!
  PIDS+=("$sim")
  connected=$(wait_log "$W/cs-$mode.out" '^connected' 1800)
  sleep 2 # settle after the last handshake
  after=$(rss_kib "$cs_pid")
  per=$(python3 -c "print(f'{($after - $before) / $CLUSTER_SCALE:.1f}')")
  eval "CS_${mode}=$per"
  row "cluster cost ($mode): $CLUSTER_SCALE nodes" "$connected"
  row "cluster cost ($mode): hub cloud RSS, KiB" "$before -> $after ($per KiB per node)"
  if [ "$mode" = cluster ]; then
    nats_after=$(rss_kib "$NATS_PID")
    row "cluster cost (cluster): nats-server RSS, KiB" "$nats_before -> $nats_after ($(python3 -c "print(f'{($nats_after - $nats_before) / $CLUSTER_SCALE:.1f}')") KiB per node)"
  fi
  wait "$sim" || true
  kill "$cs_pid"; wait "$cs_pid" 2>/dev/null || true
  if [ "$mode" = cluster ]; then kill "$NATS_PID"; wait "$NATS_PID" 2>/dev/null || true; fi
done
s=CS_single; c=CS_cluster
row "cluster cost: hub cloud per node, cluster - single, KiB" "$(python3 -c "print(f'{${!c} - ${!s}:.1f}')")"
fi # cluster

# --- Mosquitto bridge ------------------------------------------------------------------------
TLS_PORT=$(free_port); CLOUD_MQTT=$(free_port); EDGE_MQTT=$(free_port)
# shellcheck source=scripts/mosquitto-bridge.sh
. scripts/mosquitto-bridge.sh
mosquitto_bridge_confs "$W/mosq-" "$W/pki" "$TLS_PORT 127.0.0.1" "$CLOUD_MQTT 127.0.0.1" \
  "$EDGE_MQTT 127.0.0.1" "127.0.0.1:$TLS_PORT"
mq_start() { # config suffix
  mosquitto -c "$W/mosq-cloud$1.conf" 2>"$W/mosq-cloud$1.log" &
  MQ_CLOUD_PID=$!
  mosquitto -c "$W/mosq-edge$1.conf" 2>"$W/mosq-edge$1.log" &
  MQ_EDGE_PID=$!
  PIDS+=("$MQ_CLOUD_PID" "$MQ_EDGE_PID")
  sleep 1.5 # the bridge connects on its own schedule
}
# Idle connections, as for hub's edge: a fresh broker (the cloud one, alone) takes IDLE.
if part mqtt; then
  mosquitto -c "$W/mosq-cloud.conf" 2>"$W/mosq-idle.log" &
  MQ_IDLE_PID=$!
  PIDS+=("$MQ_IDLE_PID")
  sleep 1
  idle_mqtt mosquitto "$MQ_IDLE_PID" "127.0.0.1:$CLOUD_MQTT"
  kill "$MQ_IDLE_PID"; wait "$MQ_IDLE_PID" 2>/dev/null || true
fi
if part api || part mqtt; then
  mq_start ""
  MQS="$MQ_EDGE_PID $MQ_CLOUD_PID"
  for qos in 1 0; do
    for size in 256 16384; do
      n=$COUNT; [ "$size" = 256 ] || n=$BIG_COUNT
      measured "$MQS" "$BENCH" mqtt --publish "127.0.0.1:$EDGE_MQTT" --subscribe "127.0.0.1:$CLOUD_MQTT" --topic "up$qos/x" --qos "$qos" --count "$n" --size "$size"
      row "mosquitto QoS $qos edge->cloud ${size} B, msg/s" "$(rate delivered "$OUT") ($(grep -oE '[0-9]+ lost' <<<"$OUT"))"
      cpu_row "mosquitto QoS $qos edge->cloud ${size} B" "$(delivered_of "$n" "$OUT")" edge cloud
      eval "MQ_UP_${qos}_${size}=$(rate delivered "$OUT")"
      measured "$MQS" "$BENCH" mqtt --publish "127.0.0.1:$CLOUD_MQTT" --subscribe "127.0.0.1:$EDGE_MQTT" --topic "down$qos/x" --qos "$qos" --count "$n" --size "$size"
      row "mosquitto QoS $qos cloud->edge ${size} B, msg/s" "$(rate delivered "$OUT") ($(grep -oE '[0-9]+ lost' <<<"$OUT"))"
      cpu_row "mosquitto QoS $qos cloud->edge ${size} B" "$(delivered_of "$n" "$OUT")" edge cloud
      eval "MQ_DOWN_${qos}_${size}=$(rate delivered "$OUT")"
    done
  done
  kill "$MQ_CLOUD_PID" "$MQ_EDGE_PID"
  wait "$MQ_CLOUD_PID" "$MQ_EDGE_PID" 2>/dev/null || true
fi
# Request round trips, QoS 1: a requester at the cloud broker, an echoing responder at the edge
# broker; both brokers restarted with set_tcp_nodelay (not above: the throughput runs stay as
# they were). It covers the sockets the brokers accept but not the one the edge broker's bridge
# opens, where a reply waits for the delayed ACK; so a second run with TCP_NODELAY set on that
# socket from outside (scripts/tcp-nodelay.py).
if part requests; then
for side in cloud edge; do
  { echo "set_tcp_nodelay true"; cat "$W/mosq-$side.conf"; } >"$W/mosq-$side-rt.conf"
done
mq_start -rt
mq_requests() { # count
  "$BENCH" mqtt --publish "127.0.0.1:$CLOUD_MQTT" --subscribe "127.0.0.1:$EDGE_MQTT" --topic req/x \
    --reply-topic rep/x --requests "$1" --size 64
}
out=$(mq_requests "$MQ_STOCK_REQUESTS")
row "mosquitto request round trip (QoS 1)" "$out"
if scripts/tcp-nodelay.py "$MQ_EDGE_PID" "$TLS_PORT" >/dev/null; then
  MQ_RT=$(mq_requests "$REQUESTS")
  row "mosquitto request round trip, bridge NODELAY" "$MQ_RT"
else
  MQ_RT=$out
  row "mosquitto request round trip, bridge NODELAY" "not measured: could not set TCP_NODELAY on the bridge"
fi
kill "$MQ_CLOUD_PID" "$MQ_EDGE_PID"
wait "$MQ_CLOUD_PID" "$MQ_EDGE_PID" 2>/dev/null || true
fi # requests

# --- WAN: latency, loss and a cut (network namespaces and a userspace link emulator) ----------
# The loopback goodput above is what the WAN figures are compared with.
# Without the api part, scripts/bench-loss.sh measures the loopback goodput itself.
if part wan; then
  HUB=$HUB BENCH=$BENCH LOOPBACK_WS_256=${HUB_UP_websocket_256:-} LOOPBACK_QUIC_256=${HUB_UP_quic_256:-} \
    scripts/bench-loss.sh >"$W/loss.rows" &
  LOSS_PID=$!
  PIDS+=("$LOSS_PID")
  wait "$LOSS_PID" || echo "bench: the loss section failed" >&2
  mapfile -t -O "${#ROWS[@]}" ROWS <"$W/loss.rows"
fi

# --- ratios and footprint --------------------------------------------------------------------
if part api && part requests; then
  for proto in websocket quic; do
    h=HUB_RT_$proto
    row "ratio hub $proto/mosquitto request p50, p99" "$(python3 -c "print(f'{$(ms_of p50 "${!h}")/$(ms_of p50 "$MQ_RT"):.2f}x, {$(ms_of p99 "${!h}")/$(ms_of p99 "$MQ_RT"):.2f}x')")"
  done
fi
if part api; then
  for proto in websocket quic; do
    for dir in UP DOWN; do
      for size in 256 16384; do
        h=HUB_${dir}_${proto}_${size}; q1=MQ_${dir}_1_${size}; q0=MQ_${dir}_0_${size}
        row "ratio hub $proto/mosquitto QoS 1 ($dir, $size B)" "$(ratio "${!h}" "${!q1}")"
        row "ratio hub $proto/mosquitto QoS 0 ($dir, $size B)" "$(ratio "${!h}" "${!q0}")"
      done
    done
  done
fi
# hub MQTT at each QoS against Mosquitto at the same QoS, and hub's QoS 1 (durable end to end)
# against Mosquitto's QoS 0.
if part mqtt; then
  for proto in $MQTT_LINKS; do
    for dir in UP DOWN; do
      for size in 256 16384; do
        h1=HMQ_${dir}_${proto}_1_${size}; h0=HMQ_${dir}_${proto}_0_${size}
        q1=MQ_${dir}_1_${size}; q0=MQ_${dir}_0_${size}
        row "ratio hub MQTT ($proto)/mosquitto QoS 1 ($dir, $size B)" "$(ratio "${!h1}" "${!q1}")"
        row "ratio hub MQTT ($proto)/mosquitto QoS 0 ($dir, $size B)" "$(ratio "${!h0}" "${!q0}")"
        row "ratio hub MQTT ($proto) QoS 1/mosquitto QoS 0 ($dir, $size B)" "$(ratio "${!h1}" "${!q0}")"
      done
    done
  done
fi
row "binary size, native ($(uname -m)), bytes" "$(stat -c %s "$HUB")"
for t in aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do
  f=target/arm-check/$t/release/hub
  [ -f "$f" ] && row "binary size, $t (make arm-check), bytes" "$(stat -c %s "$f")"
done

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); mosquitto $(mosquitto -h | head -1 | awk '{print $3}')"
printf '%s\n' "${ROWS[@]}"
