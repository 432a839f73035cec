#!/usr/bin/env bash
# The main job, end to end on this machine: a development PKI, a cloud hub serving WebSocket and
# QUIC, two gateways (one per protocol), messages both ways, a request answered by a gateway
# application, the cloud's node list, each hub's readiness and metrics (checked with promtool when
# it is installed); then everything stops cleanly.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "building"
cargo build --release --locked --quiet
HUB=${CARGO_TARGET_DIR:-$PWD/target}/release/hub
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hub-demo.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until FILE has a line matching PATTERN (at most 20 s) and prints it.
wait_log() {
  local file=$1 pattern=$2 i
  for i in $(seq 200); do
    if grep -m1 -E "$pattern" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo: no '$pattern' in $file after 20 s; its log:" >&2
  cat "$file" >&2
  exit 1
}

say "a development PKI: CA, cloud certificate, one certificate per gateway"
run "$HUB" certs --dir "$WORK/pki" --node gw-ws --node gw-quic >/dev/null
ls "$WORK/pki"

say "the cloud hub: WebSocket and QUIC at once, ports picked by the system"
cat >"$WORK/cloudhub.yaml" <<YAML
cloudhub:
  protocol_websocket: true
  port: 0
  protocol_quic: true
  quic_port: 0
  address: 127.0.0.1
  ca: $WORK/pki/ca.crt
  cert: $WORK/pki/server.crt
  key: $WORK/pki/server.key
apps:
  listen: 127.0.0.1:0
mqtt:
  listen: 127.0.0.1:0
queues:
  dir: $WORK/cloud
metrics:
  listen: 127.0.0.1:0
YAML
RUST_LOG=info "$HUB" cloud -c "$WORK/cloudhub.yaml" 2>"$WORK/cloud.log" &
PIDS+=($!)
WS_PORT=$(wait_log "$WORK/cloud.log" 'websocket listening on' | grep -oE '[0-9]+$')
QUIC_PORT=$(wait_log "$WORK/cloud.log" 'quic listening on' | grep -oE '[0-9]+$')
CLOUD=$(wait_log "$WORK/cloud.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
echo "websocket :$WS_PORT, quic :$QUIC_PORT, applications $CLOUD"

edge() { # node protocol url-section
  local node=$1 proto=$2
  cat >"$WORK/$node.yaml" <<YAML
$3
  cafile: $WORK/pki/ca.crt
  certfile: $WORK/pki/node-$node.crt
  keyfile: $WORK/pki/node-$node.key
controller:
  protocol: $proto
  project-id: demo
  node-id: $node
apps:
  listen: 127.0.0.1:0
mqtt:
  listen: 127.0.0.1:0
outbox:
  dir: $WORK/$node
metrics:
  listen: 127.0.0.1:0
YAML
  RUST_LOG=info "$HUB" edge -c "$WORK/$node.yaml" 2>"$WORK/$node.log" &
  PIDS+=($!)
}

say "two gateways: gw-ws over WebSocket, gw-quic over QUIC"
edge gw-ws websocket "websocket:
  url: wss://127.0.0.1:$WS_PORT/demo/gw-ws/events"
edge gw-quic quic "quic:
  url: 127.0.0.1:$QUIC_PORT"
GW_WS=$(wait_log "$WORK/gw-ws.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
GW_QUIC=$(wait_log "$WORK/gw-quic.log" 'apps listening on' | grep -oE 'ws://[0-9.:]+')
wait_log "$WORK/gw-ws.log" 'connected to the cloud' | sed 's/^.*\] //'
wait_log "$WORK/gw-quic.log" 'connected to the cloud' | sed 's/^.*\] //'

say "applications subscribe: the cloud to every gateway, each gateway to its commands"
"$HUB" sub -u "$CLOUD" -r node/ -n 2 >"$WORK/cloud-sub.out" &
CLOUD_SUB=$!
"$HUB" sub -u "$GW_WS" -r commands --echo >"$WORK/gw-ws-sub.out" &
PIDS+=($!)
"$HUB" sub -u "$GW_QUIC" -r commands --echo >"$WORK/gw-quic-sub.out" &
PIDS+=($!)
sleep 0.3 # let the subscriptions register

say "gateway applications publish readings upward"
run "$HUB" pub -u "$GW_WS" -r readings/temperature '{"celsius": 21.5}'
run "$HUB" pub -u "$GW_QUIC" -r readings/humidity '{"percent": 48}'
wait "$CLOUD_SUB"
echo "the cloud application received:"
cat "$WORK/cloud-sub.out"

say "a cloud application commands a gateway"
run "$HUB" pub -u "$CLOUD" -r node/gw-ws/commands/valve '{"open": true}'
wait_log "$WORK/gw-ws-sub.out" 'valve' >/dev/null
echo "the gw-ws application received:"
cat "$WORK/gw-ws-sub.out"

say "a cloud application asks gw-quic and waits for the answer (request/response)"
run "$HUB" req -u "$CLOUD" -r node/gw-quic/commands/ping '{"ping": 1}'

say "devices speak MQTT: mosquitto_pub on gw-quic, mosquitto_sub in the cloud, and back"
scripts/test-deps.sh --mosquitto
CLOUD_MQTT=$(wait_log "$WORK/cloud.log" 'mqtt listening on' | grep -oE '[0-9]+$')
GW_MQTT=$(wait_log "$WORK/gw-quic.log" 'mqtt listening on' | grep -oE '[0-9]+$')
mosquitto_sub -p "$CLOUD_MQTT" -t 'node/+/sensors/#' -q 1 -C 1 -v >"$WORK/mqtt-cloud.out" &
MQTT_SUB=$!
mosquitto_sub -p "$GW_MQTT" -t 'commands/#' -q 1 -C 1 -v >"$WORK/mqtt-gw.out" &
MQTT_GW_SUB=$!
sleep 0.3 # let the subscriptions register
run mosquitto_pub -p "$GW_MQTT" -t sensors/door -q 1 -m closed
wait "$MQTT_SUB"
echo "the cloud's MQTT subscriber received:"
cat "$WORK/mqtt-cloud.out"
run mosquitto_pub -p "$CLOUD_MQTT" -t node/gw-quic/commands/light -q 1 -m '{"on": true}'
wait "$MQTT_GW_SUB"
echo "the gateway's MQTT subscriber received (the gw-quic application above too):"
cat "$WORK/mqtt-gw.out"

say "the cloud's nodes"
run "$HUB" nodes -u "$CLOUD"

say "operations: each hub's /readyz and some of its metrics"
# GET http://ADDR/PATH over bash's /dev/tcp (no curl needed); prints the body.
http_get() {
  local addr=$1 path=$2
  exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$addr" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}
for hub in cloud gw-ws gw-quic; do
  ops=$(wait_log "$WORK/$hub.log" 'metrics and health listening on' | grep -oE '[0-9.]+:[0-9]+$')
  echo "$hub (http://$ops): $(http_get "$ops" /readyz)"
  http_get "$ops" /metrics >"$WORK/$hub.metrics"
  grep -E '^hub_(nodes_connected|link_up|queue_messages|app_connections|link_(receive|transmit)_messages_total)[{ ]' \
    "$WORK/$hub.metrics" | sed 's/^/  /'
done
if command -v promtool >/dev/null; then
  for hub in cloud gw-ws gw-quic; do
    promtool check metrics <"$WORK/$hub.metrics"
    echo "promtool check metrics: $hub passes"
  done
else
  echo "promtool not installed, skipping the check (Debian: apt-get install prometheus)"
fi

say "stopping: SIGTERM everywhere"
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait || true
PIDS=()
grep -h -E 'shutting down|stopped' "$WORK/cloud.log" "$WORK/gw-ws.log" "$WORK/gw-quic.log" | sed 's/^\[[^ ]* /[/'
say "done"
