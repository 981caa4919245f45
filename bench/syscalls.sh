#!/usr/bin/env bash
# System calls and CPU time per event of the supervisor and of each handler process in a
# 100,000-event burn-down (1 instance, 2 handler processes, twice): read and write calls from
# /proc/<pid>/io (syscr, syscw: channels and PostgreSQL sockets alike) and utime + stime from
# /proc/<pid>/stat, just before SIGTERM. Exact counts, unlike throughput on a shared machine, so
# two builds compare on them directly (docs/PERFORMANCE.md, "Where the CPU goes"):
#
#   BUILD_DIR=/tmp/build-bench bash bench/syscalls.sh
#   git worktree add /tmp/old a9a7bb4 && cmake -S /tmp/old -B /tmp/build-old \
#       -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOUTBOX_BUILD_TESTS=OFF && cmake --build /tmp/build-old \
#       && BUILD_DIR=/tmp/build-old bash bench/syscalls.sh
#
# Environment (defaults in brackets):
#   SYSCALLS_EVENTS [100000] / SYSCALLS_WORKERS [2] / SYSCALLS_REPEAT [2]
#   OUTBOX_ON_COMPLETE [keep]     passed to the service: keep or delete
#   PG_DURABILITY [relaxed]       the cluster's durability (tests/run_with_postgres.sh): relaxed or
#                                 production; the settings in force are printed first
#   BUILD_DIR [build]             where liboutbox.a is
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec tests/run_with_postgres.sh bash "$0" "$@"
fi
events="${SYSCALLS_EVENTS:-100000}"
workers="${SYSCALLS_WORKERS:-2}"
repeat="${SYSCALLS_REPEAT:-2}"
completion="${OUTBOX_ON_COMPLETE:-keep}"
base_url="${OUTBOX_TEST_PG%/*}"
export PGOPTIONS="-c client_min_messages=warning"
build_dir="${BUILD_DIR:-build}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pg_inc=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
g++ -std=c++20 -O2 -I include -I "$pg_inc" bench/noop_app.cpp "$build_dir/liboutbox.a" \
    -lpq -luv -lcjson -lspdlog -lfmt -lcurl -lmicrohttpd -lrdkafka -lnats -lrabbitmq -lhiredis -lpthread -o "$work/noop_app"
g++ -std=c++20 -O2 -I "$pg_inc" bench/latency_driver.cpp -lpq -lpthread -o "$work/latency_driver"
q() { psql "$base_url/$1" -X -q -At -v ON_ERROR_STOP=1 -c "$2"; }
hz=$(getconf CLK_TCK)

# Read and write calls per event, and utime + stime in seconds and per event, of a live process.
# The /proc/<pid>/stat fields are counted after the command name (in parentheses).
usage() {
    local pid=$1
    awk '/^syscr/ {r=$2} /^syscw/ {w=$2} END {printf "%.2f reads, %.2f writes per event", r/'"$events"', w/'"$events"'}' \
        "/proc/$pid/io"
    sed -e 's/^.*) //' "/proc/$pid/stat" |
        awk -v hz="$hz" -v n="$events" '{s = ($12 + $13) / hz; printf "; utime+stime %.2f s, %.1f µs per event\n", s, s * 1e6 / n}'
}

echo "OUTBOX_ON_COMPLETE=$completion, $workers handler processes, $events events;" \
    "durability: $(q postgres "SELECT 'fsync ' || current_setting('fsync') || ', synchronous_commit ' ||
                               current_setting('synchronous_commit') || ', full_page_writes ' ||
                               current_setting('full_page_writes')")"
for rep in $(seq 1 "$repeat"); do
    q postgres "DROP DATABASE IF EXISTS sysc WITH (FORCE)" >/dev/null
    q postgres "CREATE DATABASE sysc" >/dev/null
    DATABASE_URL="$base_url/sysc" "$work/noop_app" migrate >/dev/null 2>&1
    DATABASE_URL="$base_url/sysc" "$work/noop_app" emit --type bench.noop --count "$events" >/dev/null 2>&1
    q sysc 'VACUUM ANALYZE "Outbox"' >/dev/null
    q sysc 'CHECKPOINT' >/dev/null
    t0=$(date +%s.%N)
    DATABASE_URL="$base_url/sysc" OUTBOX_WORKERS="$workers" OUTBOX_ON_COMPLETE="$completion" OUTBOX_HTTP_PORT=0 \
        OUTBOX_METRICS_LOG_INTERVAL_MS=0 LOG_LEVEL=warn "$work/noop_app" run 2>>"$work/service.log" &
    pid=$!
    # Done in both completion modes when no event is left PENDING or PROCESSING.
    t1=$(DATABASE_URL="$base_url/sysc" "$work/latency_driver" wait --interval-ms 50 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))")
    echo "run $rep: $(awk -v a="$t0" -v b="$t1" -v n="$events" 'BEGIN { printf "%.0f events/s", n / (b - a) }')"
    echo "  supervisor: $(usage "$pid")"
    for c in $(pgrep -P "$pid"); do echo "  handler $c: $(usage "$c")"; done
    kill -TERM "$pid"
    wait "$pid" || true
done
q postgres "DROP DATABASE sysc WITH (FORCE)" >/dev/null
if [ -s "$work/service.log" ]; then
    echo "service log (warnings and errors):"
    tail -n 20 "$work/service.log"
fi
