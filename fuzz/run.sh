#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time.
#
#   fuzz/run.sh                          every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 fuzz/run.sh http    one target, ten minutes
#
# Each target starts from its seeds (fuzz/corpus/<target>/) and its saved crash inputs
# (fuzz/regressions/<target>/, replayed first, so a regression fails at once), and grows a
# working corpus in $FUZZ_BUILD_DIR/corpus/<target>/ that later runs reuse. A crash, a sanitizer
# report, a broken invariant (fuzz/fuzz_check.h) or a hang past FUZZ_TIMEOUT seconds stops that
# target; its input is saved under $FUZZ_BUILD_DIR/crashes/<target>/ and the script exits 1 after
# running the others. Keep a crash input as a regression test by copying it into
# fuzz/regressions/<target>/: tests/unit/fuzz_regressions_test.cpp replays that directory.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export FUZZ_BUILD_DIR=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# Per input. The slowest target (http) needs milliseconds; its own deadline is 10 seconds.
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-30}
# Inputs up to this size; bigger than the HTTP server's head and body limits.
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-16384}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(frames handlers_file config http)
fi

fuzz/build.sh "${TARGETS[@]}"

# abort_on_error turns a sanitizer report into an abort that libFuzzer catches and saves.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Crash inputs of earlier runs stay where they are; only the ones newer than this are reported.
started=$FUZZ_BUILD_DIR/.run-started
mkdir -p "$FUZZ_BUILD_DIR"
touch "$started"

failed=()
for target in "${TARGETS[@]}"; do
    corpus=$FUZZ_BUILD_DIR/corpus/$target
    crashes=$FUZZ_BUILD_DIR/crashes/$target
    log=$FUZZ_BUILD_DIR/logs/$target.log
    mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
    # The first directory receives new inputs; the checked-in ones are only read.
    inputs=("$corpus" "fuzz/corpus/$target")
    if [ -d "fuzz/regressions/$target" ]; then
        inputs+=("fuzz/regressions/$target")
    fi
    options=(-max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" -max_len="$FUZZ_MAX_LEN"
             -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/")
    if [ -f "fuzz/$target.dict" ]; then
        options+=(-dict="fuzz/$target.dict")
    fi
    echo "== fuzz_$target: ${FUZZ_SECONDS}s (log: $log)"
    if "$FUZZ_BUILD_DIR/fuzz_$target" "${options[@]}" "${inputs[@]}" >"$log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
    else
        echo "   FAILED; last lines of the log:"
        tail -n 30 "$log" | sed 's/^/   | /'
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]}"
    for target in "${failed[@]}"; do
        find "$FUZZ_BUILD_DIR/crashes/$target" -type f -newer "$started" -printf '   %p\n'
    done
    echo "Reproduce with: $FUZZ_BUILD_DIR/fuzz_<target> <input>"
    exit 1
fi
echo "fuzzing found nothing in: ${TARGETS[*]}"
