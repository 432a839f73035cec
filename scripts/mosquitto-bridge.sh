# shellcheck shell=bash
# Sourced by scripts/bench.sh and scripts/bench-loss.sh: the Mosquitto 2.0 bridge both compare hub
# with, so that the loopback and the emulated-link figures come from the same tuned settings.
#
# mosquitto_bridge_confs PREFIX PKI TLS CLOUD_APPS EDGE_APPS BRIDGE_TO writes PREFIXcloud.conf and
# PREFIXedge.conf: a "cloud" broker with a mutual-TLS listener (TLS, as `listener` arguments:
# "PORT ADDRESS") using PKI/ca.crt and PKI/server.{crt,key}, and a plain listener for the
# applications (CLOUD_APPS: "PORT ADDRESS", or "0 PATH" for a unix socket); an "edge" broker with
# the applications' listener EDGE_APPS and a bridge to BRIDGE_TO (ADDRESS:PORT of the TLS
# listener) authenticated as PKI/node-bridge.{crt,key}. Topics bridged: up1/# and up0/# out (edge
# to cloud) at QoS 1 and 0, down1/# and down0/# in, req/# in and rep/# out at QoS 1.
# Tuning: up to a million queued and 1000 in flight per client, persistence and per-message
# logging off, bridge cleansession false, restart_timeout 1 1, try_private.
mosquitto_bridge_confs() {
  local prefix=$1 pki=$2 tls=$3 cloud_apps=$4 edge_apps=$5 bridge_to=$6
  # The settings both brokers share.
  local common="user root
per_listener_settings false
allow_anonymous true
persistence false
log_type error
max_queued_messages 1000000
max_inflight_messages 1000"
  cat >"${prefix}cloud.conf" <<CONF
$common
listener $tls
cafile $pki/ca.crt
certfile $pki/server.crt
keyfile $pki/server.key
require_certificate true
listener $cloud_apps
CONF
  cat >"${prefix}edge.conf" <<CONF
$common
listener $edge_apps
connection cloud
address $bridge_to
bridge_protocol_version mqttv311
bridge_cafile $pki/ca.crt
bridge_certfile $pki/node-bridge.crt
bridge_keyfile $pki/node-bridge.key
cleansession false
restart_timeout 1 1
try_private true
topic up1/# out 1
topic up0/# out 0
topic down1/# in 1
topic down0/# in 0
topic req/# in 1
topic rep/# out 1
CONF
}
