#!/usr/bin/env bash
# Runs every callwatch fuzz target for SECONDS each (default 60), one after another, at low
# priority in one process, and prints the executions each ran and whether it found a crash.
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]
#
# Bounded: each run stops itself after SECONDS (-max_total_time), and `timeout` ends it 5 min
# after that whatever happens. Works on a stable toolchain (RUSTC_BOOTSTRAP=1, see README.md).
# Environment:
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_WORK       scratch folder for the grown corpus and logs (default /tmp/callwatch-fuzz)
#   CARGO_TARGET_DIR  honoured as usual
# Exit status: 0 when no target crashed, 1 otherwise (crash inputs land in fuzz/artifacts/).
set -uo pipefail

secs="${1:-60}"
shift || true
cd "$(dirname "$0")"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(probe_packet upload_frame signed_report agent_config api_query sketch_and_cells reflector_core)
fi
sanitizer="${FUZZ_SANITIZER:-address}"
work="${FUZZ_WORK:-/tmp/callwatch-fuzz}"
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }

mkdir -p "$work"
echo "== building all targets (sanitizer: $sanitizer)"
if ! nice -n 19 cargo fuzz build --sanitizer "$sanitizer" >"$work/build.log" 2>&1; then
  tail -30 "$work/build.log" >&2
  exit 2
fi

status=0
summary=()
for t in "${targets[@]}"; do
  # New inputs go to the scratch folder (first), the committed seeds are only read (second).
  mkdir -p "$work/corpus/$t" "$work/logs"
  log="$work/logs/$t.log"
  echo "== $t: ${secs}s"
  timeout --kill-after=10 $((secs + 300)) nice -n 19 cargo fuzz run --sanitizer "$sanitizer" "$t" \
    "$work/corpus/$t" "corpus/$t" -- \
    -max_total_time="$secs" -jobs=1 -workers=1 -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"$log" 2>&1
  rc=$?
  rm -f fuzz-0.log
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  if grep -qE '^(==[0-9]+==ERROR|SUMMARY: libFuzzer|thread .* panicked)|Test unit written to' "$log"; then
    verdict="CRASH ($(grep -o 'Test unit written to .*' "$log" | head -1 | sed 's/Test unit written to //'))"
    status=1
  elif [ $rc -ne 0 ]; then
    verdict="exit $rc (see $log)"
    status=1
  else
    verdict="ok"
  fi
  summary+=("$(printf '%-18s %12s execs  %s' "$t" "${execs:-?}" "$verdict")")
done

echo
echo "== executions per target (${secs}s each, logs in $work/logs)"
printf '%s\n' "${summary[@]}"
exit $status
