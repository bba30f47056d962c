#!/usr/bin/env bash
# Capture each platform's arms on loopback and classify every flow with nDPI's ndpiReader.
#
#   tests/ndpi/classify.sh [--bin DIR] [--duration SECS] [--out DIR] [--keep] [--expect]
#                          [--platforms "whatsapp telegram signal max"] [--ndpi PATH]
#
# Starts `callwatch-collector serve` (its reflector on every profile port: 599 1400 3478 40400
# 40401 50000, all on 127.0.0.1), then for each platform runs `tcpdump -i lo` while
# `callwatch-agent test --platform P` runs, splits the capture per reflector port with tcpdump
# and runs `ndpiReader -i ARM.pcap -v 2` on each arm separately (separately because nDPI's STUN
# cache is keyed on address+port and would carry a sub-classification from one arm's flow to
# another on the same 127.0.0.1:3478). Prints
#
#   platform  arm       port   ndpi_protocol            confidence
#
# and exits 1 if any control arm (port 40400) is classified as anything but Unknown, or if no
# control flow was seen at all. With --expect it also exits 1 when a platform arm is not the
# classification FINDINGS.md says it should reach (WhatsApp -> WhatsAppCall, Telegram ->
# Telegram, Signal -> SignalVoip, Max -> RTP: nDPI has no Max protocol, RTP is the most it says).
#
# Needs: built binaries (cargo build -p callwatch-agent -p callwatch-collector), ndpiReader
# (Debian: libndpi-bin), tcpdump, and root or CAP_NET_RAW + CAP_NET_BIND_SERVICE (tcpdump on lo,
# the reflector on port 599). Exit codes: 0 ok, 1 a check failed, 2 a prerequisite is missing.
set -euo pipefail
trap 'echo "classify.sh: command failed at line $LINENO" >&2' ERR

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$root/target/debug"
duration=5
out=""
keep=0
expect=0
platforms="whatsapp telegram signal max"
ndpi=ndpiReader
control_port=40400
# Every port a reflector must listen on (proto::profile::reflector_ports()).
reflector_ports="599 1400 3478 40400 40401 50000"

while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --expect) expect=1; shift ;;
    --platforms) platforms=$2; shift 2 ;;
    --ndpi) ndpi=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Platform arm ports per platform (proto/src/profile.rs `ports`; the agent uses the first).
platform_ports() {
  case "$1" in
    whatsapp) echo 3478 ;;
    telegram) echo "599 1400" ;;
    signal) echo 3478 ;;
    max) echo 50000 ;;
    generic) echo 40401 ;;
    *) echo "" ;;
  esac
}

# What --expect wants a platform arm to be classified as (a substring of ndpiReader's name).
expected() {
  case "$1" in
    whatsapp) echo WhatsAppCall ;;
    telegram) echo Telegram ;;
    signal) echo SignalVoip ;;
    max) echo RTP ;;
    *) echo "" ;;
  esac
}

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing: $1 ($2)" >&2; exit 2; }; }
need "$ndpi" "apt-get install libndpi-bin, or --ndpi PATH"
need tcpdump "apt-get install tcpdump"
for b in callwatch-agent callwatch-collector; do
  [ -x "$bin/$b" ] || { echo "missing: $bin/$b (cargo build -p $b)" >&2; exit 2; }
done

if [ -z "$out" ]; then out=$(mktemp -d /tmp/callwatch-ndpi.XXXXXX); fi
mkdir -p "$out"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  if [ "$keep" = 0 ]; then rm -rf "$out"; else echo "captures kept in $out" >&2; fi
}
trap cleanup EXIT

ndpi_version=$({ "$ndpi" -h 2>&1 || true; } | sed -n 's/.*nDPI \([0-9][0-9.]*\).*/\1/p' | sed -n 1p || true)

# --- reflector -------------------------------------------------------------------------------
refl_args=()
for p in $reflector_ports; do refl_args+=(--reflector "127.0.0.1:$p"); done
"$bin/callwatch-collector" serve --data "$out/collector" --listen 127.0.0.1:0 \
  --http 127.0.0.1:0 "${refl_args[@]}" >"$out/collector.log" 2>&1 &
collector=$!
pids+=("$collector")
listening() { # is something bound to UDP 127.0.0.1:$1 (or 0.0.0.0:$1)?
  local hex
  hex=$(printf '%04X' "$1")
  grep -qE "^ *[0-9]+: (0100007F|00000000):$hex " /proc/net/udp 2>/dev/null
}
missing=1
for _ in $(seq 1 100); do
  missing=0
  for p in $reflector_ports; do listening "$p" || missing=1; done
  [ "$missing" = 0 ] && break
  kill -0 "$collector" 2>/dev/null || { cat "$out/collector.log" >&2; echo "collector exited" >&2; exit 2; }
  sleep 0.1
done
[ "$missing" = 0 ] || { cat "$out/collector.log" >&2; echo "reflector not listening on all of: $reflector_ports" >&2; exit 2; }

# --- capture and classify ------------------------------------------------------------------
filter="udp and host 127.0.0.1 and ($(echo "$reflector_ports" | sed 's/\([0-9][0-9]*\)/port \1/g; s/ port/ or port/g'))"
fail=0
printf '%-9s %-8s %-6s %-26s %s\n' platform arm port ndpi_protocol confidence
for platform in $platforms; do
  pcap="$out/$platform.pcap"
  tcpdump -i lo -U -n -w "$pcap" "$filter" >"$out/$platform.tcpdump.log" 2>&1 &
  td=$!
  pids+=("$td")
  # wait until tcpdump is capturing
  for _ in $(seq 1 50); do grep -q 'listening on' "$out/$platform.tcpdump.log" && break; sleep 0.1; done
  agent_rc=0
  "$bin/callwatch-agent" test --reflector 127.0.0.1:40401 --platform "$platform" \
    --duration "$duration" --json >"$out/$platform.report.json" 2>"$out/$platform.agent.log" || agent_rc=$?
  sleep 0.5
  kill -INT "$td" 2>/dev/null || true
  wait "$td" 2>/dev/null || true
  if [ "$agent_rc" != 0 ]; then
    echo "agent test for $platform exited $agent_rc (see $out/$platform.agent.log); classifying what was captured" >&2
  fi
  arms=""
  for p in $(platform_ports "$platform"); do arms="$arms platform:$p"; done
  arms="$arms control:$control_port"
  saw_control=0
  for arm in $arms; do
    role=${arm%%:*}
    port=${arm##*:}
    armpcap="$out/$platform.$role.$port.pcap"
    tcpdump -r "$pcap" -w "$armpcap" "udp port $port" 2>/dev/null
    flows=$("$ndpi" -i "$armpcap" -v 2 2>/dev/null | grep -E '^[[:space:]]+[0-9]+[[:space:]]+UDP ' || true)
    if [ -z "$flows" ]; then
      [ "$role" = platform ] && [ "$port" != "$(platform_ports "$platform" | cut -d' ' -f1)" ] && continue
      printf '%-9s %-8s %-6s %-26s %s\n' "$platform" "$role" "$port" "(no flow)" "-"
      [ "$role" = control ] && fail=1
      continue
    fi
    while IFS= read -r line; do
      proto=$(sed -n 's/.*\[proto: [0-9.]*\/\([^]]*\)\].*/\1/p' <<<"$line")
      conf=$(sed -n 's/.*\[Confidence: \([^]]*\)\].*/\1/p' <<<"$line")
      [ -z "$proto" ] && proto="?"
      [ -z "$conf" ] && conf="-"
      printf '%-9s %-8s %-6s %-26s %s\n' "$platform" "$role" "$port" "$proto" "$conf"
      if [ "$role" = control ]; then
        saw_control=1
        if [ "$proto" != Unknown ] && [ "$conf" = "Match by port" ]; then
          # nDPI guessed from a default port. 40400 is no protocol's default, so the guess came
          # from the agent's ephemeral port (e.g. 51413 BitTorrent, 51820 WireGuard): not our
          # bytes. Judge the flow by DPI alone (-d) instead.
          dpi_only=$("$ndpi" -d -i "$armpcap" -v 2 2>/dev/null | grep -E '^[[:space:]]+[0-9]+[[:space:]]+UDP ' \
            | sed -n 's/.*\[proto: [0-9.]*\/\([^]]*\)\].*/\1/p' | sort -u | tr '\n' ' ')
          echo "note: $platform control flow port-guessed as $proto; by DPI alone: ${dpi_only:-?}" >&2
          [ "$dpi_only" = "Unknown " ] && proto=Unknown
        fi
        if [ "$proto" != Unknown ]; then
          echo "FAIL: $platform control arm (port $port) classified as $proto, not Unknown" >&2
          fail=1
        fi
      elif [ "$expect" = 1 ] && [ -n "$(expected "$platform")" ]; then
        case "$proto" in
          *"$(expected "$platform")"*) ;;
          *) echo "FAIL: $platform platform arm (port $port) is $proto, expected $(expected "$platform")" >&2; fail=1 ;;
        esac
      fi
    done <<<"$flows"
  done
  [ "$saw_control" = 1 ] || { echo "FAIL: no $platform control flow captured" >&2; fail=1; }
done
echo "(nDPI ${ndpi_version:-?}; captures of ${duration}s per platform on 127.0.0.1)"
exit "$fail"
