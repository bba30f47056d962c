#!/usr/bin/env bash
# censor-lab.sh — callwatch against censor models built from nftables, on one Linux machine.
#
# Three network namespaces of our own, joined by veth pairs, all addresses in 10.77.0.0/24 and
# existing only inside them (no interface in the host's namespace, no default route anywhere):
#
#   cwlab-agent                cwlab-dpi (router, the censor)            cwlab-refl
#   cwa0 10.77.0.1/30 <-veth-> cwd0 10.77.0.2/30 | cwd1 10.77.0.5/30 <-veth-> cwr0 10.77.0.6/30
#   callwatch-agent test       nft table inet cwlab, hook forward       callwatch-collector serve
#                              (tc tbf for cross-traffic)               (reflector on every profile
#                                                                        port) + coturn, STUN only,
#                                                                        on 10.77.0.10:3478 (stands
#                                                                        in for a platform relay)
#
# The censor sits in a router namespace rather than in the reflector's own input/output hooks:
# a DPI box is a middlebox on the path. Its rules see both directions as transit traffic on the
# forward hook with the box's own conntrack and flow sets, both endpoints' stacks stay
# untouched, coturn sits behind the same box, and the cross-traffic bottleneck (tc tbf) is on
# the router's egress links, shared by both arms. What the reflector counts is what got past
# the box, which is what the agent's up/down loss split relies on.
#
# See tests/lab/README.md. Run as root; `censor-lab.sh --help` for usage.

set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Fixed lab layout.

readonly NS_AGENT=cwlab-agent
readonly NS_DPI=cwlab-dpi
readonly NS_REFL=cwlab-refl
readonly ALL_NS=("$NS_AGENT" "$NS_DPI" "$NS_REFL")
readonly AGENT_IP=10.77.0.1
readonly DPI_AGENT_IP=10.77.0.2
readonly DPI_REFL_IP=10.77.0.5
readonly REFL_IP=10.77.0.6
readonly RELAY_IP=10.77.0.10     # coturn: stands in for the platform's own STUN/TURN server
readonly LAB_NET=10.77.0.0/24
readonly STUN_PORT=3478
readonly CONTROL_PORT=40400      # proto::profile::CONTROL_PORT
readonly GENERIC_PORT=40401      # the generic profile's port; what --reflector names
readonly SINK_PORT=9             # cross-traffic goes here and is dropped on arrival
readonly STATE_DIR=/run/cwlab

# Every port a reflector must listen on for the built-in profiles
# (proto::profile::reflector_ports(): generic 40401, whatsapp 3478, telegram 599 and 1400,
# signal 3478, max 50000, every control arm 40400).
REFLECTOR_PORTS=${CWLAB_REFLECTOR_PORTS:-"599 1400 3478 40400 40401 50000"}

# Model parameters (environment overrides).
CUT_AFTER_S=${CWLAB_CUT_AFTER_S:-6}            # cut-after / upstream-only / downstream-only onset
HANDSHAKE_N=${CWLAB_HANDSHAKE_N:-20}           # handshake-block: first N packets of a flow
POLICE_BPS=${CWLAB_POLICE_BPS:-3600}           # policer: bytes/s per direction (~half a call)
THROTTLE_BYTES=${CWLAB_THROTTLE_BYTES:-40000}  # throttle-after-bytes: flow bytes before throttling
THROTTLE_BPS=${CWLAB_THROTTLE_BPS:-2000}       # ... then this many bytes/s per direction
TBF_KBIT=${CWLAB_TBF_KBIT:-2000}               # cross-traffic: bottleneck rate each way
CROSS_KBIT=${CWLAB_CROSS_KBIT:-1950}           # cross-traffic: flood rate each way (+ the call ~ the bottleneck)

# ---------------------------------------------------------------------------------------------
# Options.

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
BIN_DIR=${CALLWATCH_BIN_DIR:-$REPO_DIR/target/debug}
PLATFORM=whatsapp
TESTS=3
DURATION=15
KEEP=0
WITH_RELAY=0
MODEL_ARGS=()
ACTION=run

usage() {
    cat <<EOF
Usage: $(basename "$0") [options] MODEL...
       $(basename "$0") [options] --all
       $(basename "$0") --list | --print MODEL | --check | --cleanup

Runs callwatch-agent call tests through a censor model (an nftables rule set on a router
namespace between agent and reflector) and prints each test's verdict, the rule that decided
it, per-stream loss, the censor rules' packet counters, and a summary per model.

Options:
  --all               run the whole catalogue
  --tests N           tests per model (default $TESTS)
  --duration SECS     length of each test (default $DURATION; the agent allows 1..=120 and gives a
                      verdict from 12 s on)
  --platform NAME     whatsapp (default), telegram, signal or max
  --with-relay        give every test --relay $RELAY_IP:$STUN_PORT (coturn); relay-address-block
                      always does
  --bin-dir DIR       where callwatch-agent and callwatch-collector are
                      (default \$CALLWATCH_BIN_DIR or $BIN_DIR)
  --keep              leave namespaces, reflector and coturn running on exit (undo: --cleanup)
  --list              print the catalogue and exit
  --print MODEL       print MODEL's nft rule set and exit
  --check             load every model's rule set with 'nft -c' in a scratch namespace and exit
  --cleanup           remove what a --keep run left (namespaces cwlab-*, its processes)
  -h, --help          this text

Model parameters (environment): CWLAB_CUT_AFTER_S=$CUT_AFTER_S CWLAB_HANDSHAKE_N=$HANDSHAKE_N
  CWLAB_POLICE_BPS=$POLICE_BPS CWLAB_THROTTLE_BYTES=$THROTTLE_BYTES CWLAB_THROTTLE_BPS=$THROTTLE_BPS
  CWLAB_TBF_KBIT=$TBF_KBIT CWLAB_CROSS_KBIT=$CROSS_KBIT

Needs root, nft (nftables), ip/tc/ss (iproute2), jq; optional: turnserver (coturn) for the relay
models, python3 for cross-traffic. Everything runs inside namespaces it creates; no packet
leaves them.
EOF
}

die() {
    echo "censor-lab: $*" >&2
    exit 1
}
note() { echo "censor-lab: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# The catalogue. Each model is a function model_<name> that prints its complete nft rule set
# (table inet cwlab, a filter chain on the forward hook of the router namespace). Every rule has
# a counter and a comment; the comment names the rule in the per-test counter lines.

CATALOGUE=(none full-block handshake-block handshake-open-match cut-after random-loss-5 policer
    downstream-only upstream-only payload-match relay-address-block throttle-after-bytes
    both-loss-5 cross-traffic)
UNAVAILABLE=(constant-delay-port)

declare -A EXPECT DESC
EXPECT[none]=none
EXPECT[full-block]=differentiated
EXPECT[handshake-block]=differentiated
EXPECT[handshake-open-match]=differentiated
EXPECT[cut-after]=differentiated
EXPECT[random-loss-5]=differentiated
EXPECT[policer]=differentiated
EXPECT[downstream-only]=differentiated
EXPECT[upstream-only]=differentiated
EXPECT[payload-match]=differentiated
EXPECT[relay-address-block]=differentiated
EXPECT[throttle-after-bytes]=differentiated
EXPECT[both-loss-5]=not-differentiated
EXPECT[cross-traffic]=not-differentiated

DESC[none]="no rules (counters only)"
DESC[full-block]="drop all UDP to and from the platform port(s)"
DESC[handshake-block]="drop the first $HANDSHAKE_N packets of every flow to the platform port(s)"
DESC[handshake-open-match]="drop STUN messages whose DATA attribute holds a callwatch Open"
DESC[cut-after]="drop platform-port flows both ways from ${CUT_AFTER_S}s after their first packet"
DESC[random-loss-5]="drop 5% of platform-port packets, each way"
DESC[policer]="police platform-port traffic to $POLICE_BPS bytes/s per direction"
DESC[downstream-only]="drop replies from the platform port from ${CUT_AFTER_S}s into the flow"
DESC[upstream-only]="drop packets to the platform port from ${CUT_AFTER_S}s into the flow"
DESC[payload-match]="drop UDP whose payload bytes 4..8 are the STUN cookie 0x2112A442, any port"
DESC[relay-address-block]="drop everything to and from the platform relay $RELAY_IP"
DESC[throttle-after-bytes]="after $THROTTLE_BYTES bytes of a flow, police it to $THROTTLE_BPS bytes/s"
DESC[both-loss-5]="NULL: drop 5% of ALL UDP, each way"
DESC[cross-traffic]="NULL: ${TBF_KBIT} kbit/s tbf bottleneck each way, ${CROSS_KBIT} kbit/s UDP flood"
DESC[constant-delay-port]="not possible here: needs netem (use tests/src/emulator)"

# The platform arm's reflector ports, as an nft anonymous set.
platform_ports() {
    case "$PLATFORM" in
    whatsapp | signal) echo "{ 3478 }" ;;
    telegram) echo "{ 599, 1400 }" ;;
    max) echo "{ 50000 }" ;;
    *) die "unknown platform $PLATFORM (whatsapp, telegram, signal, max)" ;;
    esac
}

expected_for() {
    local m=$1
    # Only WhatsApp's platform arm carries the STUN cookie (Signal's is TURN ChannelData,
    # Telegram's and Max's are not STUN); on the others both STUN models have nothing to match.
    if [[ "$PLATFORM" != whatsapp && ($m == payload-match || $m == handshake-open-match) ]]; then
        echo none
    else
        echo "${EXPECT[$m]}"
    fi
}

# Table header (a model's sets follow it), the chain with the accounting rules every model
# starts with, and the footer.
nft_head() {
    echo "table inet cwlab {"
}
nft_chain() {
    local pp
    pp=$(platform_ports)
    cat <<EOF
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip saddr $AGENT_IP udp dport $pp counter comment "seen: platform arm, up"
		ip daddr $AGENT_IP udp sport $pp counter comment "seen: platform arm, down"
		ip saddr $AGENT_IP udp dport $CONTROL_PORT counter comment "seen: control arm, up"
		ip daddr $AGENT_IP udp sport $CONTROL_PORT counter comment "seen: control arm, down"
EOF
}
nft_tail() {
    printf '\t}\n}\n'
}

# Per-flow age sets: a flow (agent address . agent port) enters @young and @seen on its first
# packet to the platform port; @young forgets it after CUT_AFTER_S, @seen keeps it, so
# "in @seen and not in @young" means "older than CUT_AFTER_S". In-kernel, per flow, no timer
# in the script.
flow_age_sets() {
    cat <<EOF
	set seen {
		type ipv4_addr . inet_service
		flags dynamic, timeout
		timeout 1h
	}
	set young {
		type ipv4_addr . inet_service
		flags dynamic, timeout
		timeout ${CUT_AFTER_S}s
	}
EOF
}
flow_age_rules() {
    local pp
    pp=$(platform_ports)
    cat <<EOF
		udp dport $pp ip saddr . udp sport != @seen add @seen { ip saddr . udp sport } add @young { ip saddr . udp sport } counter comment "new platform flow"
EOF
}

model_none() {
    nft_head
    nft_chain
    nft_tail
}

model_full-block() {
    local pp
    pp=$(platform_ports)
    nft_head
    nft_chain
    cat <<EOF
		udp dport $pp counter drop comment "full-block: up"
		udp sport $pp counter drop comment "full-block: down"
EOF
    nft_tail
}

# Per-flow "first N packets": a dynamic set keyed on the 5-tuple whose elements carry a
# token bucket of N packets that refills at 1/hour. 'limit rate over' is false while the flow's
# bucket still has tokens (its first ~N packets) and true after, so the first ~N packets fall
# through to the drop and the rest are accepted. (A 'ct packets < N drop' rule does not work:
# the first packet's conntrack entry is never confirmed when that packet is dropped, so every
# packet is the "first" again and the flow is blocked for good.)
model_handshake-block() {
    local pp
    pp=$(platform_ports)
    nft_head
    cat <<EOF
	set hs {
		type ipv4_addr . inet_service . ipv4_addr . inet_service
		flags dynamic, timeout
		timeout 10m
	}
EOF
    nft_chain
    cat <<EOF
		udp dport $pp update @hs { ip saddr . udp sport . ip daddr . udp dport limit rate over 1/hour burst $HANDSHAKE_N packets } counter accept comment "handshake-block: flow past its first $HANDSHAKE_N"
		udp dport $pp counter drop comment "handshake-block: first packets of a flow"
EOF
    nft_tail
}

# The WhatsApp framing is a 20-byte STUN header, one 8-byte 0x4000 attribute, then the DATA
# attribute's 4-byte header: the callwatch core starts at payload byte 32, and an Open's core
# starts with version 1, kind 1. Transport-header bit offsets: STUN type at (8+0)*8 = 64, cookie
# at (8+4)*8 = 96, core at (8+32)*8 = 320. A lab-only model: a real censor does not know
# callwatch's Open; it shows what a handshake-only block of an otherwise identical flow does.
# It can only match a bare Open, so this model's tests run without the reflector's key.
model_handshake-open-match() {
    nft_head
    nft_chain
    cat <<EOF
		meta l4proto udp @th,64,16 0x0800 @th,96,32 0x2112a442 @th,320,16 0x0101 counter drop comment "handshake-open-match: STUN 0x0800 carrying an Open"
EOF
    nft_tail
}

model_cut-after() {
    local pp
    pp=$(platform_ports)
    nft_head
    flow_age_sets
    nft_chain
    flow_age_rules
    cat <<EOF
		udp dport $pp ip saddr . udp sport @young counter accept comment "cut-after: young flow, up"
		udp dport $pp counter drop comment "cut-after: old flow, up"
		udp sport $pp ip daddr . udp dport @young counter accept comment "cut-after: young flow, down"
		udp sport $pp counter drop comment "cut-after: old flow, down"
EOF
    nft_tail
}

model_random-loss-5() {
    local pp
    pp=$(platform_ports)
    nft_head
    nft_chain
    cat <<EOF
		udp dport $pp numgen random mod 100 < 5 counter drop comment "random-loss-5: up"
		udp sport $pp numgen random mod 100 < 5 counter drop comment "random-loss-5: down"
EOF
    nft_tail
}

# nft's limit counts the IP packet (skb->len at the forward hook): a WhatsApp voice probe is
# 115 bytes of UDP payload on average (the profile's 88/104/120/136-byte table) + 28 bytes of
# headers, 50 a second: ~7160 bytes/s each way; the default 3600 is half of that. Each rule has
# its own bucket, so each direction is policed on its own.
model_policer() {
    local pp
    pp=$(platform_ports)
    nft_head
    nft_chain
    cat <<EOF
		udp dport $pp limit rate over $POLICE_BPS bytes/second burst 1500 bytes counter drop comment "policer: up over $POLICE_BPS B/s"
		udp sport $pp limit rate over $POLICE_BPS bytes/second burst 1500 bytes counter drop comment "policer: down over $POLICE_BPS B/s"
EOF
    nft_tail
}

model_downstream-only() {
    local pp
    pp=$(platform_ports)
    nft_head
    flow_age_sets
    nft_chain
    flow_age_rules
    cat <<EOF
		udp sport $pp ip daddr . udp dport @young counter accept comment "downstream-only: young flow"
		udp sport $pp counter drop comment "downstream-only: old flow, replies"
EOF
    nft_tail
}

model_upstream-only() {
    local pp
    pp=$(platform_ports)
    nft_head
    flow_age_sets
    nft_chain
    flow_age_rules
    cat <<EOF
		udp dport $pp ip saddr . udp sport @young counter accept comment "upstream-only: young flow"
		udp dport $pp counter drop comment "upstream-only: old flow, probes"
EOF
    nft_tail
}

# @th is the transport header; UDP's is 8 bytes, so payload byte 4 is bit (8+4)*8 = 96.
model_payload-match() {
    nft_head
    nft_chain
    cat <<EOF
		meta l4proto udp @th,96,32 0x2112a442 counter drop comment "payload-match: STUN cookie at payload[4..8]"
EOF
    nft_tail
}

model_relay-address-block() {
    nft_head
    nft_chain
    cat <<EOF
		ip daddr $RELAY_IP counter drop comment "relay-address-block: to relay"
		ip saddr $RELAY_IP counter drop comment "relay-address-block: from relay"
EOF
    nft_tail
}

# 'ct bytes' is the flow's byte count, both directions (needs nf_conntrack_acct=1, which the lab
# sets in the router namespace).
model_throttle-after-bytes() {
    local pp
    pp=$(platform_ports)
    nft_head
    nft_chain
    cat <<EOF
		udp dport $pp ct bytes > $THROTTLE_BYTES limit rate over $THROTTLE_BPS bytes/second burst 1500 bytes counter drop comment "throttle-after-bytes: up"
		udp sport $pp ct bytes > $THROTTLE_BYTES limit rate over $THROTTLE_BPS bytes/second burst 1500 bytes counter drop comment "throttle-after-bytes: down"
EOF
    nft_tail
}

model_both-loss-5() {
    nft_head
    nft_chain
    cat <<EOF
		ip saddr $AGENT_IP meta l4proto udp numgen random mod 100 < 5 counter drop comment "both-loss-5: up, all UDP"
		ip daddr $AGENT_IP meta l4proto udp numgen random mod 100 < 5 counter drop comment "both-loss-5: down, all UDP"
EOF
    nft_tail
}

# The queueing is tc's (tbf on both router egresses, set up around each test); the rules only
# count the flood.
model_cross-traffic() {
    nft_head
    nft_chain
    cat <<EOF
		udp dport $SINK_PORT counter comment "cross-traffic: flood packets forwarded"
EOF
    nft_tail
}

ruleset() {
    local m=$1
    declare -F "model_$m" >/dev/null || die "no model '$m' (see --list)"
    "model_$m"
}

is_model() {
    local m=$1 x
    for x in "${CATALOGUE[@]}"; do [[ $x == "$m" ]] && return 0; done
    return 1
}

list_catalogue() {
    printf '%-22s %-20s %s\n' model "expected ($PLATFORM)" "what it does"
    local m
    for m in "${CATALOGUE[@]}"; do
        printf '%-22s %-20s %s\n' "$m" "$(expected_for "$m")" "${DESC[$m]}"
    done
    for m in "${UNAVAILABLE[@]}"; do
        printf '%-22s %-20s %s\n' "$m" "-" "${DESC[$m]}"
    done
}

# ---------------------------------------------------------------------------------------------
# Checks.

require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        die "must run as root: it creates network namespaces, veth links, nftables rule sets and tc qdiscs (try: sudo $0 ...)"
    fi
}

require_tools() {
    local missing=() t pkg
    for t in ip:iproute2 tc:iproute2 ss:iproute2 nft:nftables jq:jq timeout:coreutils; do
        command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t%%:*} (Debian package ${t#*:})")
    done
    if ((${#missing[@]})); then
        pkg=$(printf '%s\n' "${missing[@]}" | sed 's/.*package \(.*\))/\1/' | sort -u | tr '\n' ' ')
        die "missing: ${missing[*]}. Install with: apt-get install -y $pkg"
    fi
}

require_binaries() {
    AGENT=$BIN_DIR/callwatch-agent
    COLLECTOR=$BIN_DIR/callwatch-collector
    local b
    for b in "$AGENT" "$COLLECTOR"; do
        [[ -x $b ]] || die "$b not found; build with: cargo build -p callwatch-agent -p callwatch-collector (or pass --bin-dir)"
    done
}

have_coturn() { command -v turnserver >/dev/null 2>&1; }
have_python() { command -v python3 >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------
# Process and namespace bookkeeping. Every process we start is recorded by PID; cleanup ends
# those PIDs only.

WORK=""
PIDS=()         # long-running: reflector, coturn
TRANSIENT=()    # per test: agent, floods
CREATED_NS=()
CLEANED=0

track_ns() { CREATED_NS+=("$1"); }

kill_pids() {
    local pid n
    for pid in "$@"; do
        if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "$@"; do
        [[ -n $pid ]] || continue
        for ((n = 0; n < 50; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    ((CLEANED)) && return
    CLEANED=1
    trap - EXIT INT TERM
    if ((${#TRANSIENT[@]})); then kill_pids "${TRANSIENT[@]}"; fi
    if ((KEEP)) && ((${#CREATED_NS[@]})); then
        echo
        echo "censor-lab: --keep: namespaces ${CREATED_NS[*]} left; reflector and coturn still run (PIDs ${PIDS[*]:-none})."
        echo "  inspect: ip netns exec $NS_DPI nft list ruleset"
        echo "  test:    ip netns exec $NS_AGENT $AGENT test --reflector $REFL_IP:$GENERIC_PORT --platform $PLATFORM"
        echo "  undo:    $0 --cleanup"
        echo "  logs:    $WORK"
        return
    fi
    if ((${#PIDS[@]})); then kill_pids "${PIDS[@]}"; fi
    local ns
    for ns in "${CREATED_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "$STATE_DIR/pids" "$STATE_DIR/work"
    [[ -n $WORK && -d $WORK ]] && rm -rf "$WORK"
    return "$rc"
}

on_signal() {
    echo
    note "interrupted; cleaning up"
    cleanup
    exit 130
}

# --cleanup: what a --keep run left. Processes are ended by the PIDs it recorded, and only if
# that PID still runs the program it recorded.
cleanup_kept() {
    local line pid exe
    if [[ -f $STATE_DIR/pids ]]; then
        while read -r pid exe; do
            [[ -n $pid ]] || continue
            if [[ -e /proc/$pid/exe && $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe"* ]]; then
                kill_pids "$pid"
                echo "ended $pid ($exe)"
            fi
        done <"$STATE_DIR/pids"
        rm -f "$STATE_DIR/pids"
    fi
    if [[ -f $STATE_DIR/work ]]; then
        line=$(cat "$STATE_DIR/work")
        [[ $line == /tmp/cwlab.* && -d $line ]] && rm -rf "$line" && echo "removed $line"
        rm -f "$STATE_DIR/work"
    fi
    local ns
    for ns in "${ALL_NS[@]}" cwlab-check; do
        if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
            ip netns del "$ns" && echo "deleted namespace $ns"
        fi
    done
}

# Polls a condition (a command) every 0.1 s, at most SECS seconds.
wait_until() {
    local secs=$1 n
    shift
    for ((n = 0; n < secs * 10; n++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

udp_bound() { # ns addr port
    ip netns exec "$1" ss -Hnlu "src $2:$3" 2>/dev/null | grep -q .
}

all_reflector_ports_bound() {
    local p
    for p in $REFLECTOR_PORTS; do udp_bound "$NS_REFL" "$REFL_IP" "$p" || return 1; done
}

alive() { kill -0 "$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Setup.

# Before anything is created or recorded: a lab left by --keep must be removed first.
refuse_stale_lab() {
    local ns
    for ns in "${ALL_NS[@]}"; do
        if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
            die "namespace $ns already exists (a --keep run?); remove it with: $0 --cleanup"
        fi
    done
    if [[ -s $STATE_DIR/pids ]]; then
        die "$STATE_DIR/pids lists processes of an earlier --keep run; remove them with: $0 --cleanup"
    fi
}

setup_namespaces() {
    local ns
    for ns in "${ALL_NS[@]}"; do
        ip netns add "$ns"
        track_ns "$ns"
        ip -n "$ns" link set lo up
    done
    # Both veth ends are created inside the lab's namespaces: nothing appears in the host's.
    ip link add cwa0 netns "$NS_AGENT" type veth peer name cwd0 netns "$NS_DPI"
    ip link add cwd1 netns "$NS_DPI" type veth peer name cwr0 netns "$NS_REFL"

    ip -n "$NS_AGENT" addr add "$AGENT_IP/30" dev cwa0
    ip -n "$NS_AGENT" link set cwa0 up
    ip -n "$NS_AGENT" route add "$LAB_NET" via "$DPI_AGENT_IP"

    ip -n "$NS_DPI" addr add "$DPI_AGENT_IP/30" dev cwd0
    ip -n "$NS_DPI" addr add "$DPI_REFL_IP/30" dev cwd1
    ip -n "$NS_DPI" link set cwd0 up
    ip -n "$NS_DPI" link set cwd1 up
    ip -n "$NS_DPI" route add 10.77.0.8/29 via "$REFL_IP"
    ip netns exec "$NS_DPI" sysctl -qw net.ipv4.ip_forward=1
    # 'ct bytes' (throttle-after-bytes) needs per-flow byte accounting.
    ip netns exec "$NS_DPI" sysctl -qw net.netfilter.nf_conntrack_acct=1 2>/dev/null ||
        note "cannot enable nf_conntrack_acct; throttle-after-bytes will never match"

    ip -n "$NS_REFL" addr add "$REFL_IP/30" dev cwr0
    ip -n "$NS_REFL" addr add "$RELAY_IP/32" dev cwr0
    ip -n "$NS_REFL" link set cwr0 up
    ip -n "$NS_REFL" route add "$LAB_NET" via "$DPI_REFL_IP"

    # Cross-traffic is sent to SINK_PORT and dropped on arrival (no ICMP back).
    for ns in "$NS_AGENT" "$NS_REFL"; do
        ip netns exec "$ns" nft -f - <<EOF
table inet cwlab_sink {
	chain input {
		type filter hook input priority filter; policy accept;
		udp dport $SINK_PORT counter drop comment "cross-traffic sink"
	}
}
EOF
    done

    ip -n "$NS_AGENT" route get "$REFL_IP" | grep -q "via $DPI_AGENT_IP" ||
        die "the lab's routing is wrong: $NS_AGENT does not route $REFL_IP via $DPI_AGENT_IP"
}

# A one-second generic test through the router with no censor rules: the path works end to end.
sanity_check() {
    ip netns exec "$NS_DPI" nft delete table inet cwlab 2>/dev/null || true
    local out=$WORK/sanity.json rc=0
    timeout --kill-after=5 60 ip netns exec "$NS_AGENT" "$AGENT" test --reflector "$REFL_IP:$GENERIC_PORT" \
        --platform generic --duration 1 --json >"$out" 2>"$WORK/sanity.err" &
    local pid=$!
    TRANSIENT+=("$pid")
    wait "$pid" || rc=$?
    TRANSIENT=()
    if ((rc != 0)) || ! jq -e '.streams[0].packets_received > 0' "$out" >/dev/null 2>&1; then
        die "sanity check failed: a 1 s generic test from $NS_AGENT to $REFL_IP:$GENERIC_PORT got no replies ($(tail -1 "$WORK/sanity.err"))"
    fi
    note "sanity: a 1 s generic test through the router got $(jq -r '.streams[0].packets_received' "$out") replies"
}

record_pid() { # pid exe
    PIDS+=("$1")
    echo "$1 $(readlink -f "$2")" >>"$STATE_DIR/pids"
}

start_reflector() {
    local args=(serve --data "$WORK/collector" --listen "$REFL_IP:4433" --http "$REFL_IP:8080")
    local p
    for p in $REFLECTOR_PORTS; do args+=(--reflector "$REFL_IP:$p"); done
    ip netns exec "$NS_REFL" "$COLLECTOR" "${args[@]}" >"$WORK/collector.out" 2>"$WORK/collector.log" &
    local pid=$!
    record_pid "$pid" "$COLLECTOR"
    if ! wait_until 30 all_reflector_ports_bound; then
        alive "$pid" || die "the collector exited: $(tail -5 "$WORK/collector.log")"
        die "the reflector did not bind all of $REFLECTOR_PORTS on $REFL_IP within 30 s (see $WORK/collector.log)"
    fi
    REFLECTOR_KEY=$(tr -d '[:space:]' <"$WORK/collector/reflector.pub") ||
        die "the collector wrote no $WORK/collector/reflector.pub"
    note "reflector on $REFL_IP, udp ports $REFLECTOR_PORTS (pid $pid), key $REFLECTOR_KEY"
}

COTURN=0
start_coturn() {
    if ! have_coturn; then
        note "turnserver not found (Debian package coturn): relay models are skipped"
        return
    fi
    ip netns exec "$NS_REFL" turnserver -n --stun-only --no-cli --no-tcp --no-tls --no-dtls \
        --listening-ip "$RELAY_IP" --listening-port "$STUN_PORT" \
        --no-stdout-log --log-file "$WORK/coturn.log" --simple-log \
        --pidfile "$WORK/coturn.pid" >"$WORK/coturn.out" 2>&1 &
    local pid=$!
    record_pid "$pid" "$(command -v turnserver)"
    if ! wait_until 15 udp_bound "$NS_REFL" "$RELAY_IP" "$STUN_PORT"; then
        note "coturn did not bind $RELAY_IP:$STUN_PORT (see $WORK/coturn.log); relay models are skipped"
        return
    fi
    COTURN=1
    note "coturn (STUN only) on $RELAY_IP:$STUN_PORT, the platform relay (pid $pid)"
}

load_model() {
    local m=$1 file=$WORK/rules-$1.nft
    ruleset "$m" >"$file"
    ip netns exec "$NS_DPI" nft delete table inet cwlab 2>/dev/null || true
    ip netns exec "$NS_DPI" nft -c -f "$file" || die "model $m: rule set does not load (see $file)"
    ip netns exec "$NS_DPI" nft -f "$file"
}

# ---------------------------------------------------------------------------------------------
# Cross-traffic: tbf bottleneck both ways in the router and a bounded UDP flood each way.

FLOOD_PY='
import socket, sys, time
dst, port, kbit, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
size = 1000
pps = kbit * 1000.0 / 8.0 / (size + 28)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(size)
start = time.monotonic()
sent = 0
while True:
    now = time.monotonic() - start
    if now >= secs:
        break
    due = int(now * pps)
    while sent < due:
        try:
            s.sendto(payload, (dst, port))
        except OSError:
            pass
        sent += 1
    time.sleep(0.002)
print(sent)
'

tbf_on() {
    local dev
    for dev in cwd0 cwd1; do
        ip netns exec "$NS_DPI" tc qdisc replace dev "$dev" root tbf rate "${TBF_KBIT}kbit" burst 8kb latency 60ms
    done
}
tbf_off() {
    local dev
    for dev in cwd0 cwd1; do
        ip netns exec "$NS_DPI" tc qdisc del dev "$dev" root 2>/dev/null || true
    done
}

start_floods() {
    local secs=$((DURATION + 6))
    timeout "$((secs + 5))" ip netns exec "$NS_AGENT" python3 -c "$FLOOD_PY" "$REFL_IP" "$SINK_PORT" "$CROSS_KBIT" "$secs" \
        >"$WORK/flood-up.out" 2>&1 &
    TRANSIENT+=($!)
    timeout "$((secs + 5))" ip netns exec "$NS_REFL" python3 -c "$FLOOD_PY" "$AGENT_IP" "$SINK_PORT" "$CROSS_KBIT" "$secs" \
        >"$WORK/flood-down.out" 2>&1 &
    TRANSIENT+=($!)
    sleep 2 # let the queues fill before the call starts (a warm-up, not a synchronisation)
}
stop_floods() {
    if ((${#TRANSIENT[@]})); then kill_pids "${TRANSIENT[@]}"; fi
    TRANSIENT=()
}

# ---------------------------------------------------------------------------------------------
# Running tests and reading reports.
#
# JSON fields read (callwatch_proto::report::CallReport): .verdict, .verdict_detail.rule (when
# present), .verdict_detail.reason, .streams[].role, .streams[].outcome (when present),
# .streams[].loss (when present), .streams[].loss_up, .streams[].loss_down (number or null),
# .streams[].packets_sent, .streams[].packets_reflected, .streams[].packets_received,
# .streams[].rtt_ms.median (number or null), .streams[].dark_from_ms (when present),
# .verdict_detail.relay.{relay_sent,relay_answered,reference_sent,reference_answered} and
# .verdict_detail.onset.{at_ms,p_value} (when present).

JQ_TEST='
def pct: if . == null then "?" else ((. * 1000 | round) / 10 | tostring) + "%" end;
def num: if . == null then "?" else tostring end;
def ms: if . == null then "?" else ((. * 10 | round) / 10 | tostring) end;
"verdict=\(.verdict // "null") rule=\(.verdict_detail.rule // "-")",
(.streams[] | "      \(.role): \(.outcome // "-") sent=\(.packets_sent|num) reflected=\(.packets_reflected|num) received=\(.packets_received|num) loss=\(.loss|pct) loss_up=\(.loss_up|pct) loss_down=\(.loss_down|pct) rtt_p50=\(.rtt_ms.median|ms)ms\(if .dark_from_ms != null then " dark_from=\(.dark_from_ms)ms" else "" end)"),
(.verdict_detail.relay // empty | "      relay answered \(.relay_answered)/\(.relay_sent), reference answered \(.reference_answered)/\(.reference_sent)"),
(.verdict_detail.onset // empty | "      onset at \(.at_ms) ms (p = \(.p_value))"),
(if .verdict_detail.reason then "      reason: \(.verdict_detail.reason)" else empty end)
'

show_counters() {
    ip netns exec "$NS_DPI" nft -j list chain inet cwlab forward 2>/dev/null | jq -r '
        .nftables[] | select(.rule) | .rule
        | ([.expr[] | select(.counter) | .counter.packets][0]) as $n
        | "      nft: \($n) pkts  \(.comment // "-")"' || true
}

# The tbf qdiscs' own counts (cross-traffic): what the bottleneck sent, dropped and delayed.
show_tbf() {
    local dev
    for dev in cwd1 cwd0; do
        ip netns exec "$NS_DPI" tc -s -j qdisc show dev "$dev" 2>/dev/null | jq -r --arg dev "$dev" '
            .[] | select(.kind == "tbf")
            | "      tc:  tbf \($dev) (\(if $dev == "cwd1" then "up" else "down" end)): sent \(.packets) pkts, dropped \(.drops), overlimits \(.overlimits)"' || true
    done
}

declare -A N_DIFF N_INC N_NONE N_ERR N_RUN
RESULTS_TSV=""

run_model() {
    local m=$1 expected relay=$WITH_RELAY i rc out err verdict rule
    expected=$(expected_for "$m")
    N_DIFF[$m]=0 N_INC[$m]=0 N_NONE[$m]=0 N_ERR[$m]=0 N_RUN[$m]=0
    if [[ $m == relay-address-block ]]; then
        if ((!COTURN)); then
            echo "== $m: SKIPPED (needs coturn: apt-get install -y coturn)"
            N_RUN[$m]=skip
            return
        fi
        relay=1
    fi
    if [[ $m == cross-traffic ]] && ! have_python; then
        echo "== $m: SKIPPED (needs python3 for the flood)"
        N_RUN[$m]=skip
        return
    fi
    echo "== $m: ${DESC[$m]}  (expected: $expected)"
    for ((i = 1; i <= TESTS; i++)); do
        load_model "$m"
        out=$WORK/$m-$i.json
        err=$WORK/$m-$i.err
        local args=(test --reflector "$REFL_IP:$GENERIC_PORT" --platform "$PLATFORM" --duration "$DURATION" --json)
        # Sealed platform arms, as a configured agent sends; handshake-open-match matches a
        # cleartext Open, which only a bare arm (an agent without the key) has.
        if [[ $m != handshake-open-match ]]; then args+=(--reflector-key "$REFLECTOR_KEY"); fi
        # With --relay the agent also sends the same STUN Binding requests to the reflector host
        # (role relay-reference; the reflector answers them on the control port).
        if ((relay)); then args+=(--relay "$RELAY_IP:$STUN_PORT"); fi
        if [[ $m == cross-traffic ]]; then
            tbf_on
            start_floods
        fi
        timeout --kill-after=5 "$((DURATION + 90))" ip netns exec "$NS_AGENT" "$AGENT" "${args[@]}" >"$out" 2>"$err" &
        local apid=$!
        TRANSIENT+=("$apid")
        rc=0
        wait "$apid" || rc=$?
        local tbf_lines=""
        if [[ $m == cross-traffic ]]; then
            stop_floods
            tbf_lines=$(show_tbf)
            tbf_off
        fi
        TRANSIENT=()
        N_RUN[$m]=$((N_RUN[$m] + 1))
        if ((rc == 0)) && verdict=$(jq -er '.verdict // "null"' "$out" 2>/dev/null); then
            rule=$(jq -r '.verdict_detail.rule // "-"' "$out")
            local lines=()
            mapfile -t lines < <(jq -r "$JQ_TEST" "$out")
            echo "  test $i/$TESTS: ${lines[0]}"
            printf '%s\n' "${lines[@]:1}"
            case $verdict in
            differentiated) N_DIFF[$m]=$((N_DIFF[$m] + 1)) ;;
            inconclusive) N_INC[$m]=$((N_INC[$m] + 1)) ;;
            none) N_NONE[$m]=$((N_NONE[$m] + 1)) ;;
            *) N_ERR[$m]=$((N_ERR[$m] + 1)) ;;
            esac
            RESULTS_TSV+="$m	$i	$verdict	$rule"$'\n'
        else
            N_ERR[$m]=$((N_ERR[$m] + 1))
            local why
            why=$({ grep -v '^\s*$' "$err" || true; } | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
            if ((rc == 124)); then why="timed out after $((DURATION + 90)) s"; fi
            echo "  test $i/$TESTS: NO REPORT (exit $rc): ${why:-no output}"
            RESULTS_TSV+="$m	$i	no-report	${why:-exit $rc}"$'\n'
        fi
        show_counters
        if [[ -n $tbf_lines ]]; then echo "$tbf_lines"; fi
    done
}

summary() {
    echo
    printf '%-22s %5s %14s %12s %5s %9s  %-18s %s\n' model tests differentiated inconclusive none no-report expected agrees
    local m n agree
    for m in "$@"; do
        if [[ ${N_RUN[$m]:-0} == skip ]]; then
            printf '%-22s %5s %14s %12s %5s %9s  %-18s %s\n' "$m" - - - - - "$(expected_for "$m")" skipped
            continue
        fi
        n=${N_RUN[$m]:-0}
        case $(expected_for "$m") in
        differentiated) agree=${N_DIFF[$m]} ;;
        none) agree=${N_NONE[$m]} ;;
        not-differentiated) agree=$((N_INC[$m] + N_NONE[$m])) ;;
        esac
        printf '%-22s %5s %14s %12s %5s %9s  %-18s %s\n' "$m" "$n" "${N_DIFF[$m]}" "${N_INC[$m]}" \
            "${N_NONE[$m]}" "${N_ERR[$m]}" "$(expected_for "$m")" "$agree/$n"
        ((agree == n)) || DISAGREED+=("$m")
    done
}

DISAGREED=()

# --check: every model's rule set through 'nft -c' (and a real load) in a scratch namespace.
check_all() {
    local ns=cwlab-check m ok=0 bad=0 tmp
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
        die "namespace $ns exists; run $0 --cleanup"
    fi
    ip netns add "$ns"
    track_ns "$ns"
    tmp=$(mktemp -d /tmp/cwlab.XXXXXX)
    WORK=$tmp
    for m in "${CATALOGUE[@]}"; do
        ruleset "$m" >"$tmp/$m.nft"
        if ip netns exec "$ns" nft -c -f "$tmp/$m.nft" && ip netns exec "$ns" nft -f "$tmp/$m.nft" &&
            ip netns exec "$ns" nft delete table inet cwlab; then
            echo "ok   $m"
            ok=$((ok + 1))
        else
            echo "FAIL $m (rules: $(basename "$tmp/$m.nft"))"
            bad=$((bad + 1))
        fi
    done
    echo "$ok passed, $bad failed"
    ((bad == 0))
}

# ---------------------------------------------------------------------------------------------

main() {
    while (($#)); do
        case $1 in
        --all) MODEL_ARGS=("${CATALOGUE[@]}") ;;
        --tests) TESTS=${2:?--tests needs N}; shift ;;
        --duration) DURATION=${2:?--duration needs SECS}; shift ;;
        --platform) PLATFORM=${2:?--platform needs a name}; shift ;;
        --with-relay) WITH_RELAY=1 ;;
        --bin-dir) BIN_DIR=${2:?--bin-dir needs DIR}; shift ;;
        --keep) KEEP=1 ;;
        --list) ACTION=list ;;
        --print) ACTION=print; PRINT_MODEL=${2:?--print needs MODEL}; shift ;;
        --check) ACTION=check ;;
        --cleanup) ACTION=cleanup ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) MODEL_ARGS+=("$1") ;;
        esac
        shift
    done
    [[ $TESTS =~ ^[1-9][0-9]*$ ]] || die "--tests must be a positive number"
    if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < 1 || DURATION > 120)); then
        die "--duration must be 1..=120"
    fi
    platform_ports >/dev/null

    case $ACTION in
    list) list_catalogue; exit 0 ;;
    print)
        if [[ " ${UNAVAILABLE[*]} " == *" $PRINT_MODEL "* ]]; then die "$PRINT_MODEL: ${DESC[$PRINT_MODEL]}"; fi
        is_model "$PRINT_MODEL" || die "no model '$PRINT_MODEL' (see --list)"
        ruleset "$PRINT_MODEL"
        exit 0
        ;;
    cleanup) require_root; cleanup_kept; exit 0 ;;
    check)
        require_root
        require_tools
        trap cleanup EXIT
        trap on_signal INT TERM
        check_all
        exit $?
        ;;
    esac

    ((${#MODEL_ARGS[@]})) || { usage >&2; die "name a model or --all (--list shows the catalogue)"; }
    local m
    for m in "${MODEL_ARGS[@]}"; do
        if [[ " ${UNAVAILABLE[*]} " == *" $m "* ]]; then
            die "$m: ${DESC[$m]}"
        fi
        is_model "$m" || die "no model '$m' (see --list)"
    done
    require_root
    require_tools
    require_binaries
    refuse_stale_lab

    mkdir -p "$STATE_DIR"
    WORK=$(mktemp -d /tmp/cwlab.XXXXXX)
    echo "$WORK" >"$STATE_DIR/work"
    : >"$STATE_DIR/pids"
    trap cleanup EXIT
    trap on_signal INT TERM

    setup_namespaces
    note "namespaces $NS_AGENT ($AGENT_IP) -> $NS_DPI (router, censor) -> $NS_REFL ($REFL_IP)"
    start_reflector
    start_coturn
    sanity_check
    note "agent: $AGENT; $TESTS test(s) of ${DURATION}s per model, platform $PLATFORM; logs in $WORK"
    echo

    for m in "${MODEL_ARGS[@]}"; do
        run_model "$m"
    done
    summary "${MODEL_ARGS[@]}"
    if ((KEEP)); then
        printf '%s' "$RESULTS_TSV" >"$WORK/results.tsv"
    fi
    if ((${#DISAGREED[@]})); then
        echo "verdicts differ from the expected ones for: ${DISAGREED[*]}"
        exit 1
    fi
}

main "$@"
