#!/usr/bin/env bash
# quic-block.sh — an agent's uploads when a censor blocks QUIC, on one Linux machine.
#
# Three network namespaces of our own, joined by veth pairs, all addresses in 10.78.0.0/24 and
# existing only inside them (no interface in the host's namespace, no default route anywhere):
#
#   cwquic-agent                  cwquic-dpi (router, the censor)           cwquic-coll
#   cwqa0 10.78.0.1/30 <-veth-> cwqd0 10.78.0.2/30 | cwqd1 10.78.0.5/30 <-veth-> cwqc0 10.78.0.6/30
#   callwatch-agent run --once    nft table inet cwquic, hook forward       callwatch-collector serve
#                                                                           (QUIC and TCP on 4433)
#
# The censor model is the QUIC-triggered blocking TSPU boxes apply: UDP datagrams that are QUIC
# version 1 Initial packets (long header, type Initial, version 0x00000001) are dropped on the
# router, so no QUIC handshake ever completes; other UDP (the call test to the reflector) and
# TCP pass. The agent uploads once with the path open (over QUIC), then once through the block
# (over TLS on TCP after its QUIC attempt times out), and `status` must say which.
#
# Prints one line per phase and a summary; exits 0 only when both phases went as expected.
# Run as root; `quic-block.sh --help` for usage. Separate from censor-lab.sh (namespaces
# cwlab-*, 10.77.0.0/24): both can run at once.

set -euo pipefail

readonly NS_AGENT=cwquic-agent
readonly NS_DPI=cwquic-dpi
readonly NS_COLL=cwquic-coll
readonly ALL_NS=("$NS_AGENT" "$NS_DPI" "$NS_COLL")
readonly AGENT_IP=10.78.0.1
readonly DPI_AGENT_IP=10.78.0.2
readonly DPI_COLL_IP=10.78.0.5
readonly COLL_IP=10.78.0.6
readonly LAB_NET=10.78.0.0/24
readonly INGEST_PORT=4433   # QUIC and, by the collector's default, TLS over TCP
readonly REFLECTOR_PORT=3479
readonly HTTP_PORT=8080

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
BIN_DIR=${CALLWATCH_BIN_DIR:-$REPO_DIR/target/debug}

usage() {
    cat <<EOF
Usage: $(basename "$0") [--bin-dir DIR]

Blocks QUIC (version 1 Initial packets) with an nftables rule on a router namespace between a
callwatch agent and collector, and checks that the agent's uploads arrive over TLS on TCP and
that 'callwatch-agent status' says tcp (after a first upload over QUIC with the path open).

Options:
  --bin-dir DIR   where callwatch-agent and callwatch-collector are
                  (default \$CALLWATCH_BIN_DIR or $BIN_DIR)
  -h, --help      this text

Needs root, nft (nftables), ip (iproute2), jq, timeout. Everything runs inside namespaces it
creates (cwquic-*) and removes on exit; no packet leaves them.
EOF
}

die() {
    echo "quic-block: $*" >&2
    exit 1
}
note() { echo "quic-block: $*" >&2; }

while (($#)); do
    case $1 in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root: it creates network namespaces, veth links and nftables rule sets"
for t in ip nft jq timeout; do
    command -v "$t" >/dev/null 2>&1 || die "missing $t (Debian packages iproute2, nftables, jq, coreutils)"
done
AGENT=$BIN_DIR/callwatch-agent
COLLECTOR=$BIN_DIR/callwatch-collector
for b in "$AGENT" "$COLLECTOR"; do
    [[ -x $b ]] || die "$b not found; build with: cargo build -p callwatch-agent -p callwatch-collector"
done
for ns in "${ALL_NS[@]}"; do
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
        die "namespace $ns already exists (another run, or one that was killed); remove it with: ip netns del $ns"
    fi
done

# ---------------------------------------------------------------------------------------------
# Bookkeeping: every process we start is recorded by PID, every namespace we create by name;
# cleanup ends and removes exactly those.

WORK=$(mktemp -d /tmp/cwquic.XXXXXX)
PIDS=()
CREATED_NS=()
cleanup() {
    local rc=$? pid n ns
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for ((n = 0; n < 50; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for ns in "${CREATED_NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

# Polls a condition every 0.1 s, at most SECS seconds.
wait_until() {
    local secs=$1 n
    shift
    for ((n = 0; n < secs * 10; n++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Namespaces and links.

for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns"
    CREATED_NS+=("$ns")
    ip -n "$ns" link set lo up
done
ip link add cwqa0 netns "$NS_AGENT" type veth peer name cwqd0 netns "$NS_DPI"
ip link add cwqd1 netns "$NS_DPI" type veth peer name cwqc0 netns "$NS_COLL"
ip -n "$NS_AGENT" addr add "$AGENT_IP/30" dev cwqa0
ip -n "$NS_AGENT" link set cwqa0 up
ip -n "$NS_AGENT" route add "$LAB_NET" via "$DPI_AGENT_IP"
ip -n "$NS_DPI" addr add "$DPI_AGENT_IP/30" dev cwqd0
ip -n "$NS_DPI" addr add "$DPI_COLL_IP/30" dev cwqd1
ip -n "$NS_DPI" link set cwqd0 up
ip -n "$NS_DPI" link set cwqd1 up
ip netns exec "$NS_DPI" sysctl -qw net.ipv4.ip_forward=1
ip -n "$NS_COLL" addr add "$COLL_IP/30" dev cwqc0
ip -n "$NS_COLL" link set cwqc0 up
ip -n "$NS_COLL" route add "$LAB_NET" via "$DPI_COLL_IP"

# ---------------------------------------------------------------------------------------------
# The collector: QUIC on 4433/udp and, by default, TLS over TCP on 4433/tcp.

mkdir -p "$WORK/agent"
ip netns exec "$NS_COLL" "$COLLECTOR" serve --data "$WORK/collector" \
    --listen "$COLL_IP:$INGEST_PORT" --reflector "$COLL_IP:$REFLECTOR_PORT" \
    --http "$COLL_IP:$HTTP_PORT" >"$WORK/collector.out" 2>"$WORK/collector.log" &
COLLECTOR_PID=$!
PIDS+=("$COLLECTOR_PID")
collector_up() { grep -q "HTTP API on" "$WORK/collector.out"; }
if ! wait_until 30 collector_up; then
    die "the collector did not start: $(tail -5 "$WORK/collector.log")"
fi
grep -q "TLS/TCP ingest on $COLL_IP:$INGEST_PORT" "$WORK/collector.out" ||
    die "the collector does not listen on TCP $COLL_IP:$INGEST_PORT: $(cat "$WORK/collector.out")"
PIN=$(sed -n 's/^collector pin (SHA-256 of its certificate): //p' "$WORK/collector.out")
[[ ${#PIN} -eq 64 ]] || die "no pin in the collector's output"

CONFIG=$WORK/agent/agent.toml
# One platform (generic, on the reflector's one port); nobody answers init's notice here.
"$AGENT" init --config "$CONFIG" --collector "$COLL_IP:$INGEST_PORT" --pin "$PIN" \
    --reflector "$COLL_IP:$REFLECTOR_PORT" --platform generic --accept-risks >/dev/null
sed -i 's/^duration_secs = .*/duration_secs = 1/' "$CONFIG"

metrics() {
    # The collector's /metrics, fetched from the agent's side over plain bash /dev/tcp.
    ip netns exec "$NS_AGENT" timeout 10 bash -c \
        "exec 3<>/dev/tcp/$COLL_IP/$HTTP_PORT; printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3; cat <&3"
}
metric() { # name{labels}
    metrics | awk -v m="$1" '$1 == m { print $2 }'
}

# One agent cycle (a 1 s test, then the upload); prints the transport status gives.
cycle() {
    local phase=$1 rc=0
    timeout --kill-after=5 90 ip netns exec "$NS_AGENT" "$AGENT" run --once --config "$CONFIG" \
        >"$WORK/$phase.out" 2>"$WORK/$phase.log" || rc=$?
    if ((rc != 0)); then
        die "$phase: the agent exited $rc: $(tail -5 "$WORK/$phase.log")"
    fi
    "$AGENT" status --json --config "$CONFIG" | jq -r .upload_transport
}

FAIL=0
check() { # what, got, want
    if [[ $2 == "$3" ]]; then
        echo "  ok: $1 = $2"
    else
        echo "  WRONG: $1 = $2, expected $3"
        FAIL=1
    fi
}

# ---------------------------------------------------------------------------------------------
# Phase 1: the path is open.

echo "phase open (no censor rules):"
t0=$(date +%s%N)
transport=$(cycle open)
t1=$(date +%s%N)
check "status upload_transport" "$transport" quic
check "reports stored" "$(metric callwatch_stored_reports)" 1
echo "  run --once took $(((t1 - t0) / 1000000)) ms"

# ---------------------------------------------------------------------------------------------
# Phase 2: QUIC v1 Initial packets to the collector are dropped.

ip netns exec "$NS_DPI" nft -f - <<EOF
table inet cwquic {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip daddr $COLL_IP udp dport $INGEST_PORT @th,64,8 & 0xf0 == 0xc0 @th,72,32 0x00000001 counter drop comment "QUIC v1 Initial to the collector"
		ip daddr $COLL_IP udp dport $INGEST_PORT counter comment "other UDP to the ingest port"
		ip daddr $COLL_IP tcp dport $INGEST_PORT counter comment "TCP to the ingest port"
	}
}
EOF
counter() { # comment
    ip netns exec "$NS_DPI" nft -j list chain inet cwquic forward |
        jq -r --arg c "$1" '.nftables[] | select(.rule.comment == $c) | .rule.expr[] | select(.counter) | .counter.packets'
}

echo "phase blocked (QUIC v1 Initial packets dropped on the router):"
t0=$(date +%s%N)
transport=$(cycle blocked)
t1=$(date +%s%N)
check "status upload_transport" "$transport" tcp
check "reports stored" "$(metric callwatch_stored_reports)" 2
check "connections over quic" "$(metric 'callwatch_ingest_connections_total{transport="quic"}')" 1
check "connections over tcp" "$(metric 'callwatch_ingest_connections_total{transport="tcp"}')" 1
dropped=$(counter "QUIC v1 Initial to the collector")
tcp_packets=$(counter "TCP to the ingest port")
if [[ ${dropped:-0} -gt 0 && ${tcp_packets:-0} -gt 0 ]]; then
    echo "  ok: the censor dropped $dropped QUIC Initial packet(s); $tcp_packets TCP packet(s) passed"
else
    echo "  WRONG: censor counters: QUIC Initials dropped ${dropped:-?}, TCP packets ${tcp_packets:-?}"
    FAIL=1
fi
grep -q "trying TLS over TCP" "$WORK/blocked.log" && echo "  ok: the agent logged its fallback" ||
    { echo "  WRONG: no fallback in the agent's log"; FAIL=1; }
"$AGENT" status --config "$CONFIG" | grep -E "^upload transport|QUIC did not get through" | sed 's/^/  status: /'
echo "  run --once took $(((t1 - t0) / 1000000)) ms"

if ((FAIL)); then
    echo "quic-block: FAILED (logs were in $WORK)"
    tail -20 "$WORK/blocked.log" >&2
    exit 1
fi
echo "quic-block: all as expected: uploads got out over TLS on TCP while QUIC was blocked"
