#!/usr/bin/env bash
# fuzz: run every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for a share of a time budget.
#
#   scripts/fuzz.sh [--dev] [SECONDS]      SECONDS defaults to 600
#
# The targets share SECONDS: each runs for SECONDS / 6 (at least 1 s), after one build of them
# all. --dev builds them without optimizations: about half the build time for far fewer
# executions a second, which suits a short pass (make fuzz-smoke).
#
# Before running, each target's corpus (fuzz/corpus/TARGET, git-ignored) gets seeds: valid
# frames, a length-prefixed stream, short link scripts for the session simulation, the YAML
# files of configs/ and tests/fixtures/, and MQTT 3.1.1 and 5.0 client streams.
#
# Prints one line per target ("frame_decode: ok, 1234567 runs in 150 s" or "session: CRASH,
# input saved in fuzz/artifacts/session/crash-…") and exits 1 if any target crashed (2 if one
# could not be built or run). Replay a crash with `cargo fuzz run TARGET FILE` in fuzz/.
#
# Toolchain: cargo-fuzz needs unstable compiler flags. With a nightly toolchain installed under
# rustup it uses `cargo +nightly`; otherwise the stable toolchain with RUSTC_BOOTSTRAP=1, which
# is what a machine with only stable has. HUB_FUZZ_TOOLCHAIN=nightly|stable picks one.
# cargo-fuzz itself is installed with `cargo install cargo-fuzz --locked` if missing.
set -Eeuo pipefail

usage() {
	sed -n '2,/^set -E/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

BUILD_FLAGS=()
while (($#)); do
	case "$1" in
	-h | --help)
		usage
		exit 0
		;;
	--dev)
		BUILD_FLAGS=(--dev)
		shift
		;;
	*) break ;;
	esac
done
if (($# > 1)); then
	echo "fuzz.sh: one SECONDS expected, not '$*' (see --help)" >&2
	exit 2
fi
SECONDS_TOTAL=${1:-600}
if ! [[ $SECONDS_TOTAL =~ ^[0-9]+$ ]] || ((SECONDS_TOTAL == 0)); then
	echo "fuzz.sh: SECONDS must be a positive whole number, not '$SECONDS_TOTAL'" >&2
	exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ="$ROOT/fuzz"
TARGETS=(frame_decode stream_decoder session config_parse mqtt_decode message_json)
PER=$((SECONDS_TOTAL / ${#TARGETS[@]}))
((PER >= 1)) || PER=1

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz" >&2
	cargo install cargo-fuzz --locked >&2
fi

toolchain=${HUB_FUZZ_TOOLCHAIN:-}
if [[ -z $toolchain ]]; then
	if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
		toolchain=nightly
	else
		toolchain=stable
	fi
fi
case "$toolchain" in
nightly) FUZZ_CARGO=(cargo +nightly fuzz) ;;
stable)
	export RUSTC_BOOTSTRAP=1
	FUZZ_CARGO=(cargo fuzz)
	# Named, so that a rust-toolchain file or RUSTUP_TOOLCHAIN cannot pick another one.
	command -v rustup >/dev/null && FUZZ_CARGO=(cargo +stable fuzz)
	;;
*)
	echo "fuzz.sh: HUB_FUZZ_TOOLCHAIN must be nightly or stable, not '$toolchain'" >&2
	exit 2
	;;
esac

# Writes bytes given as hex to a file.
hex() {
	local out=$1 hex=$2 esc=''
	while [[ -n $hex ]]; do
		esc+="\\x${hex:0:2}"
		hex=${hex:2}
	done
	printf '%b' "$esc" >"$out"
}

# How many crash (or hang) inputs a target has left in fuzz/artifacts.
artifacts() {
	[[ -d $FUZZ/artifacts/$1 ]] || {
		echo 0
		return
	}
	find "$FUZZ/artifacts/$1" -type f | wc -l
}

seed() {
	local c="$FUZZ/corpus"
	mkdir -p "$c"/{frame_decode,stream_decoder,session,config_parse,mqtt_decode,message_json}
	# The HELLO of docs/protocol.md, a WELCOME, a HEARTBEAT, a MESSAGE holding an encoded message
	# and an ACK.
	local hello=010100003a98000005dc017009656467652d6e6f6465000001000102030405060708000000000000000100000000000000000000000000000000
	local message=100000000000000001000000018bcfe56800026d3100036170700362757306757064617465000a646576696365732f74317b2274223a32312e357d
	hex "$c/frame_decode/seed-hello" "$hello"
	hex "$c/frame_decode/seed-welcome" 020100007530000001f400000040000000000000000900000000000000010000000000000000
	hex "$c/frame_decode/seed-heartbeat" 03
	hex "$c/frame_decode/seed-message" "$message"
	hex "$c/frame_decode/seed-ack" 110000000000000102
	# Two cut points (5 and 32), then HELLO, HEARTBEAT, MESSAGE and ACK behind their lengths.
	hex "$c/stream_decoder/seed-stream" "02000500200000003a${hello}0000000103000000003b${message}00000009110000000000000102"
	# Session scripts: a mode byte (1: frames may be forged), the link parameters (windows 8 and
	# 4, heartbeat 5.05 s, deadlines 11 s), the two stream ids (6 and 10), then operations:
	# submit messages, let time pass, drop/duplicate/reorder frames, stall, reconnect.
	local params=000700031388271027100509
	hex "$c/session/seed-faithful" "00${params}0600070700050403e70600070403e70c0403e7"
	hex "$c/session/seed-lossy" "00${params}060007070005040010080009010a000403e70b75300403e70d0104007f"
	hex "$c/session/seed-forged" "01${params}06000704001e0e01010000000000000000000000000000000000000f0105deadbeef000403e7"
	# MQTT client streams behind a byte that picks the packet size limit (00: 1 MiB; 80 + n:
	# 2 + 4n bytes). 3.1.1: mosquitto_pub's CONNECT (user, password, will), a QoS 1 PUBLISH, a
	# SUBSCRIBE, a PUBREL, a PINGREQ, a DISCONNECT. 5.0: a CONNECT with properties, a PUBLISH
	# with Payload Format, Response Topic and Correlation Data, a SUBSCRIBE with a Subscription
	# Identifier and options, a PUBACK with a reason code, a DISCONNECT with will and expiry.
	# Then a CONNECT followed by a PUBLISH over a 66-byte limit.
	local connect3=103700044d51545404ec001e000873656e736f722d37000d646561642f73656e736f722d3700036279650005616c6963650006736563726574
	local connect5=105d00044d5154540506002d201100000e10210014270001000022000a2600047369746500056e6f7274681901000873656e736f722d3819180000000503000a746578742f706c61696e2600016b0001760006646561642f780004676f6e65
	hex "$c/mqtt_decode/seed-v311" "00${connect3}32090003612f6200016869820800020003612f2b0162020001c000e000"
	hex "$c/mqtt_decode/seed-v5" "00${connect5}32180003612f6200010e01010800047265737009000201026869820b0002020b050003612f2b2d4003000110e00704051100000000"
	hex "$c/mqtt_decode/seed-too-large" "90100c00044d5154540402003c000030e907"
	# Applications' messages: the layout the hub writes, and the same in another order with
	# whitespace, escapes, unknown fields and nested content.
	printf '%s' '{"header":{"msg_id":"m-1","parent_msg_id":"","timestamp":1764081600000,"sync":false},"route":{"source":"app","group":"bench","operation":"update","resource":"node/gw-1/up"},"content":"7 xxxx"}' >"$c/message_json/seed-canonical"
	printf '%s' ' { "content" : { "t" : [ 1 , -2.5e+3 , true , null ] } , "route" : { "resource" : "a\/b" } , "header" : { "urgent" : true , "x" : {} } } ' >"$c/message_json/seed-any-order"
	local f
	for f in "$ROOT"/configs/*.yaml "$ROOT"/tests/fixtures/*/*/*.yaml; do
		[[ -e $f ]] || continue
		cp "$f" "$c/config_parse/seed-$(basename "$(dirname "$(dirname "$f")")")-$(basename "$f")"
	done
}

cd "$FUZZ"
seed
echo "fuzz.sh: building the targets ($toolchain${BUILD_FLAGS[*]:+, ${BUILD_FLAGS[*]}})" >&2
if ! "${FUZZ_CARGO[@]}" build "${BUILD_FLAGS[@]}" >&2; then
	echo "fuzz.sh: the fuzz targets did not build" >&2
	exit 2
fi

status=0
for t in "${TARGETS[@]}"; do
	log="$FUZZ/target/fuzz-$t.log"
	touch "$log.start"
	before=$(artifacts "$t")
	if "${FUZZ_CARGO[@]}" run "${BUILD_FLAGS[@]}" "$t" -- -max_total_time="$PER" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 >"$log" 2>&1; then
		runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -1)
		echo "$t: ok, ${runs:-? runs}"
	else
		if (($(artifacts "$t") > before)); then
			artifact=$(find "$FUZZ/artifacts/$t" -type f -newer "$log.start" -printf '%f\n' | head -1)
			echo "$t: CRASH, input saved in fuzz/artifacts/$t/$artifact (log: ${log#"$ROOT"/})"
			status=1
		else
			echo "$t: FAILED to run (log: ${log#"$ROOT"/})"
			((status == 1)) || status=2
		fi
	fi
done
exit "$status"
