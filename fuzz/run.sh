#!/usr/bin/env bash
# Coverage-guided fuzzing of the edge's parsers and decisions with libFuzzer, on the stable
# toolchain (the instrumentation flags cargo-fuzz passes, without its nightly-only sanitizers;
# debug assertions and overflow checks stay on, so arithmetic overflow is a crash too).
#
#   fuzz/run.sh                       every target for 600 s each
#   fuzz/run.sh 60 framing range      these targets for 60 s each
#   JOBS=2 fuzz/run.sh 600 policy     two fuzzing processes on one target
#
# Targets (fuzz/fuzz_targets, entry points in src/fuzz.rs): framing (the HTTP/1 framing guard:
# its verdict must not depend on how reads split the stream), cache_control (Cache-Control,
# CDN-Cache-Control, Surrogate-Control, the structured-field dictionary), range (satisfiable
# ranges are inside the body, ascending, disjoint, never more bytes than the body), policy (the
# storage decision on arbitrary response heads: no-store, private, Set-Cookie never stored),
# disk_head (a disk tier head read back: fails to decode, or round-trips), origin_response (an
# origin's response as the edge's HTTP/1.1 client reads it: the same outcome however the reads
# split it, and a pass-through's header lines are the fields its header map gives), client_head (a client's request as the edge's own HTTP/1.1 path reads it, its short
# body included: it ends where the framing guard ends the message, a request left to hyper is
# left untouched, and a split read changes nothing).
#
# The committed corpus (fuzz/corpus/TARGET) seeds each run and is never written; what a run
# finds goes to a scratch corpus under fuzz/target/corpus, and a crash to fuzz/artifacts/TARGET/.
# Copy a crash input into fuzz/corpus/TARGET once it is fixed: `cargo test --test fuzz_corpus`
# replays the committed corpus on every test run. Prints one line per target: runs, crashes.
set -euo pipefail

SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(framing cache_control range policy dns config geoip gossip disk_head origin_response client_head)
JOBS=${JOBS:-1}
PARALLEL=""
[ "$JOBS" -gt 1 ] && PARALLEL="-jobs=$JOBS -workers=$JOBS"
cd "$(dirname "$0")"
FUZZ=$(pwd)

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# With an explicit --target, RUSTFLAGS instrument the fuzzed code but not build scripts.
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$TRIPLE"

printf '| target | seconds | runs | runs/s | corpus | crashes |\n|---|---|---|---|---|---|\n'
for t in "${TARGETS[@]}"; do
  [ -d "corpus/$t" ] || { echo "no target $t (fuzz/corpus/$t)" >&2; exit 2; }
  scratch="$FUZZ/target/corpus/$t"
  artifacts="$FUZZ/artifacts/$t"
  mkdir -p "$scratch" "$artifacts"
  log="$FUZZ/target/$t.log"
  status=0
  "$FUZZ/target/$TRIPLE/release/$t" "$scratch" "corpus/$t" \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    $PARALLEL -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  # With -jobs, each worker logs to fuzz-N.log in the current directory.
  if [ "$JOBS" -gt 1 ]; then cat fuzz-*.log >>"$log" 2>/dev/null || true; rm -f fuzz-*.log; fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s+=$2} END {print s+0}')
  crashes=$(find "$artifacts" -type f | wc -l)
  corpus=$(find "$scratch" -type f | wc -l)
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$SECONDS_EACH" "$runs" \
    "$((runs / SECONDS_EACH))" "$corpus" "$crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    echo "$t: libFuzzer exited $status; see $log and $artifacts" >&2
  fi
done
