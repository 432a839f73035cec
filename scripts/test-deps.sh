#!/usr/bin/env bash
# Installs, when missing, the third-party tools the tests drive (with --mosquitto, only the
# first, for `make demo`): Debian's mosquitto-clients (mosquitto_pub, mosquitto_sub) and
# paho-mqtt 2.x for Python (tests/mqtt_*.rs), and Debian's prometheus (the server and promtool,
# tests/metrics.rs), and Debian's nats-server (tests/cluster_*.rs).
# paho goes into a virtual environment under target/ (target/mqtt-venv) unless python3 already
# has it: that works the same with and without root, on Debian 12 and 13, whose system pip
# refuses to install (externally managed environment). Quiet when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/mqtt-venv
paho_spec='paho-mqtt>=2,<3'

# Runs "$@" as root: directly, or through sudo without a password; fails with a sentence if
# neither is possible.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    echo "test-deps: need root (or password-less sudo) to run: $*" >&2
    return 1
  fi
}

# Installs Debian packages, refreshing the package lists once if the first try fails.
apt_install() {
  local log
  log=$(mktemp)
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1; then
    if ! { as_root apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "test-deps: could not install $*" >&2
      return 1
    fi
  fi
  rm -f "$log"
}

# True when the python at $1 imports paho-mqtt 2.x.
has_paho() {
  [ -x "$1" ] || command -v "$1" >/dev/null || return 1
  "$1" -c 'import sys, paho.mqtt as m; sys.exit(0 if int(m.__version__.split(".")[0]) == 2 else 1)' 2>/dev/null
}

if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  echo "test-deps: installing mosquitto-clients"
  apt_install mosquitto-clients
fi

# `--mosquitto`: only the mosquitto clients (what `make demo` uses).
if [ "${1:-}" = --mosquitto ]; then
  exit 0
fi

# Prometheus 2.42 (bookworm): tests/metrics.rs checks both hubs' output with `promtool check
# metrics`, the dashboard's queries with `promtool check rules`, and scrapes the hubs with a real
# server. Without recommends: the node exporter is not needed. On a machine running systemd the
# package also starts its own prometheus service (on :9090); the tests use ports of their own.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "test-deps: installing prometheus (server and promtool)"
  apt_install --no-install-recommends prometheus
fi
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null || {
    echo "test-deps: $tool is still missing after installing Debian's prometheus package" >&2
    exit 1
  }
done

# NATS server 2.9 (bookworm), JetStream included: the cluster-mode tests (tests/cluster_*.rs)
# start their own servers on loopback. The package also enables a system service on machines
# running systemd; the tests use ports of their own.
if ! command -v nats-server >/dev/null; then
  echo "test-deps: installing nats-server"
  apt_install nats-server
fi
command -v nats-server >/dev/null || {
  echo "test-deps: nats-server is still missing after installing Debian's nats-server package" >&2
  exit 1
}

if ! command -v python3 >/dev/null; then
  echo "test-deps: installing python3"
  apt_install python3
fi

if has_paho python3 || has_paho "$venv/bin/python3"; then
  exit 0
fi

echo "test-deps: installing $paho_spec into $venv"
rm -rf "$venv"
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  # Debian keeps venv's pip bootstrap (ensurepip) in python3-venv.
  rm -rf "$venv"
  apt_install python3-venv
  python3 -m venv "$venv"
fi
"$venv/bin/python3" -m pip install -q --disable-pip-version-check "$paho_spec"
has_paho "$venv/bin/python3" || {
  echo "test-deps: $venv/bin/python3 still cannot import paho-mqtt 2.x" >&2
  exit 1
}
