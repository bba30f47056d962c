#!/usr/bin/env bash
# Pacing benchmark: `callwatch-agent test` against `irtt client`, side by side in one run, on
# loopback: 10 s, one 172-byte packet every 20 ms (50 packets/s). Reports CPU seconds
# (user+sys), peak RSS, mean and p99 timer error and late sends for both, and their ratios.
#
#   tests/bench/pacing.sh [ROUNDS]     (default 3; release build; needs irtt and python3)
#
# Bounded: ROUNDS × 2 tests of 10 s; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
command -v irtt >/dev/null || { echo "needs irtt (apt-get install irtt)" >&2; exit 2; }
cargo build --release -q -p callwatch-agent -p callwatch-collector
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rport=$(free_port); iport=$(free_port)
target/release/callwatch-collector serve --data "$tmp/collector" --listen 127.0.0.1:0 \
  --http 127.0.0.1:0 --reflector "127.0.0.1:$rport" >"$tmp/collector.log" 2>&1 &
pids+=($!)
irtt server -b "127.0.0.1:$iport" >"$tmp/irtt-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q "reflector on" "$tmp/collector.log" && grep -q ListenerStart "$tmp/irtt-server.log" && break; sleep 0.1; done

for r in $(seq "$rounds"); do
  /usr/bin/time -f "%U %S %M" -o "$tmp/cw-$r.time" target/release/callwatch-agent test \
    --reflector "127.0.0.1:$rport" --duration 10 --interval-ms 20 --size 172 --json >"$tmp/cw-$r.json"
  /usr/bin/time -f "%U %S %M" -o "$tmp/irtt-$r.time" irtt client -i 20ms -d 10s -l 172 -Q \
    -o "$tmp/irtt-$r.json" "127.0.0.1:$iport"
done

python3 - "$tmp" "$rounds" <<'PY'
import json, sys, statistics as st
tmp, rounds = sys.argv[1], int(sys.argv[2])
def t(path):
    u, s, m = open(path).read().split()[-3:]
    return float(u) + float(s), int(m) / 1024
rows = {"callwatch": [], "irtt": []}
for r in range(1, rounds + 1):
    cpu, rss = t(f"{tmp}/cw-{r}.time")
    rep = json.load(open(f"{tmp}/cw-{r}.json"))["streams"][0]
    tm = rep["timer"]
    rows["callwatch"].append((cpu, rss, tm["mean_error_us"], tm["p99_error_us"], tm["late_sends"], rep["rtt_ms"]["median"]))
    cpu, rss = t(f"{tmp}/irtt-{r}.time")
    s = json.load(open(f"{tmp}/irtt-{r}.json"))["stats"]
    te = s["timer_error"]
    # irtt reports the mean and the maximum of its timer error, not a p99: the max stands in.
    rows["irtt"].append((cpu, rss, te["mean"] / 1e3, te["max"] / 1e3, s["timer_misses"], s["rtt"]["median"] / 1e6))
cols = ["cpu_s", "peak_rss_mib", "timer_mean_us", "timer_p99_us(irtt:max)", "late_sends", "rtt_median_ms"]
med = {k: [st.median(x[i] for x in v) for i in range(len(cols))] for k, v in rows.items()}
print(f"{rounds} rounds each, medians; 10 s, 50 pps, 172 B, loopback")
print(f"{'':10}" + "".join(f"{c:>24}" for c in cols))
for k in rows:
    print(f"{k:10}" + "".join(f"{v:>24.3f}" for v in med[k]))
ratio = [ (a / b if b else float('nan')) for a, b in zip(med["callwatch"], med["irtt"]) ]
print(f"{'ratio cw/irtt':10}" + "".join(f"{v:>24.3f}" for v in ratio))
PY
