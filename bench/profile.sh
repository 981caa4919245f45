#!/usr/bin/env bash
# Where the CPU goes during an outbox-worker burn-down (evidence for docs/PERFORMANCE.md).
#
#   BUILD_DIR=/tmp/build-bench bash bench/profile.sh            # 1 instance x 2 handler processes
#   PROFILE_WORKERS=4 PROFILE_EVENTS=100000 bash bench/profile.sh
#
# On the private cluster of tests/run_with_postgres.sh: enqueues PROFILE_EVENTS, then runs the
# burn-down under a system-wide `perf record -e cpu-clock` (software clock: works in VMs without
# hardware counters) and prints the CPU share of each command (postgres, the supervisor, the
# handler processes) and the hottest symbols of the supervisor and of the PostgreSQL backends.
# Also counts the statements the supervisor sent by kind (claims, result batches) and the rows per
# result batch, from the server log with log_min_duration_statement = 0 in a second, unprofiled run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec tests/run_with_postgres.sh bash "$0" "$@"
fi
events="${PROFILE_EVENTS:-100000}"
workers="${PROFILE_WORKERS:-2}"
build_dir="${BUILD_DIR:-build}"
export PGOPTIONS="-c client_min_messages=warning"
base_url="${OUTBOX_TEST_PG%/*}"
mkdir -p bench/work
work=$(mktemp -d "$PWD/bench/work/profile.XXXXXX")
pg_inc=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
g++ -std=c++20 -O2 -g -fno-omit-frame-pointer -I include -I "$pg_inc" bench/noop_app.cpp "$build_dir/liboutbox.a" \
    -lpq -luv -lcjson -lspdlog -lfmt -lcurl -lmicrohttpd -lrdkafka -lnats -lrabbitmq -lhiredis -lpthread -o "$work/noop_app"
g++ -std=c++20 -O2 -I "$pg_inc" bench/latency_driver.cpp -lpq -lpthread -o "$work/latency_driver"
q() { psql "$base_url/$1" -X -q -At -v ON_ERROR_STOP=1 -c "$2"; }

setup_db() {
    q postgres "DROP DATABASE IF EXISTS prof WITH (FORCE)" >/dev/null
    q postgres "CREATE DATABASE prof" >/dev/null
    DATABASE_URL="$base_url/prof" "$work/noop_app" migrate >/dev/null 2>&1
    DATABASE_URL="$base_url/prof" "$work/noop_app" emit --type bench.noop --count "$events" >/dev/null 2>&1
    q prof 'VACUUM ANALYZE "Outbox"' >/dev/null
    q prof 'CHECKPOINT' >/dev/null
}

burn_down() { # extra command prefix for the service, if any
    local t0 t1 pid
    t0=$(date +%s.%N)
    DATABASE_URL="$base_url/prof" OUTBOX_WORKERS="$workers" OUTBOX_HTTP_PORT=0 OUTBOX_METRICS_LOG_INTERVAL_MS=0 \
        LOG_LEVEL=warn "$work/noop_app" run 2>>"$work/service.log" &
    pid=$!
    t1=$(DATABASE_URL="$base_url/prof" "$work/latency_driver" wait --interval-ms 50 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))")
    kill -TERM "$pid"
    wait "$pid" || true
    awk -v a="$t0" -v b="$t1" -v n="$events" 'BEGIN { printf "burn-down: %d events in %.2f s: %.0f events/s\n", n, b - a, n / (b - a) }'
}

echo "== run 1: perf record -a -g -e cpu-clock during the burn-down ($events events, $workers handler processes)"
setup_db
perf record -a -g -e cpu-clock -F 999 -o "$work/perf.data" -- sleep 3600 >/dev/null 2>&1 &
perf_pid=$!
sleep 0.5
burn_down
kill -INT "$perf_pid"
wait "$perf_pid" || true
report() { perf report -i "$work/perf.data" --stdio --no-children "$@" 2>/dev/null | grep -E '^ +[0-9]' || true; }
echo "-- CPU share by command, % of all samples (2 CPUs x the run; idle is swapper)"
report --sort comm -g none | head -12
echo "-- noop_app (supervisor and handler processes) by process, % of all samples"
report --comm noop_app --sort pid -g none | head -10
echo "-- noop_app: hottest symbols, % of noop_app's samples"
report --comm noop_app --percentage relative --sort dso,sym -g none | head -30
echo "-- PostgreSQL backends: hottest symbols, % of postgres's samples"
report --comm postgres --percentage relative --sort sym -g none | head -30

echo "== run 2: statement log (log_min_duration_statement = 0), same burn-down, not profiled"
setup_db
q postgres "ALTER SYSTEM SET log_min_duration_statement = 0" >/dev/null
q postgres "SELECT pg_reload_conf()" >/dev/null
logpos=$(stat -c %s "$OUTBOX_TEST_PG_LOG")
# Claimed but not yet recorded (PROCESSING) over time, twice a second.
(while :; do
    q prof "SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS'), count(*) FILTER (WHERE \"status\" = 'PROCESSING'),
                   count(*) FILTER (WHERE \"status\" = 'COMPLETED') FROM \"Outbox\"" 2>/dev/null || true
    sleep 0.5
done) >"$work/processing.txt" &
sampler=$!
burn_down
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
echo "-- events PROCESSING (claimed, outcome not yet recorded) over the run: time|processing|completed"
awk -F'|' '{ print "  " $0; if ($2 > m) m = $2 } END { print "  max PROCESSING: " m }' "$work/processing.txt" |
    awk 'NR % 4 == 1 || /max/'
q postgres "ALTER SYSTEM RESET log_min_duration_statement" >/dev/null
q postgres "SELECT pg_reload_conf()" >/dev/null
tail -c +"$((logpos + 1))" "$OUTBOX_TEST_PG_LOG" >"$work/statements.log"
echo "-- statements by kind: count, total ms, mean ms (and rows per result statement)"
awk -v sq="'" '
    function flush() {
        if (have) { n[kind]++; t[kind] += d }
        have = 0
    }
    /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] / {
        if ($0 ~ /DETAIL:  parameters: /) {
            if (have && kind == "record results" && match($0, "[$]1 = " sq "[{][^}]*[}]")) {
                rows = split(substr($0, RSTART + 7, RLENGTH - 8), parts, ",")
                batches++; total_rows += rows; if (rows > max_rows) max_rows = rows
                bucket = rows < 5 ? rows : (rows < 20 ? "5-19" : (rows < 100 ? "20-99" : "100+"))
                hist[bucket]++
            }
            next
        }
        flush()
        if (match($0, /duration: [0-9.]+ ms/)) {
            have = 1; d = substr($0, RSTART + 10, RLENGTH - 13) + 0; kind = "other"
            # The supervisor prepares its statements under names; the text below is the fallback.
            if ($0 ~ /execute outbox_claim:/) kind = "claim"
            else if ($0 ~ /execute outbox_(record|record_delete|record_successes|delete_successes):/) kind = "record results"
            else if ($0 ~ /execute outbox_renew:/) kind = "renew leases"
        }
    }
    have && kind == "other" {
        if ($0 ~ /WITH due AS/) kind = "claim"
        else if ($0 ~ /WITH r AS/) kind = "record results"
        else if ($0 ~ /leaseExpiresAt" = now\(\) \+/) kind = "renew leases"
        else if ($0 ~ /NOT EXISTS/) kind = "bench poll"
    }
    END {
        flush()
        for (k in n) printf "  %-16s %7d  %9.1f ms  %6.3f ms\n", k, n[k], t[k], t[k] / n[k]
        if (batches) {
            printf "  result statements: %d, %.1f rows each on average, at most %d\n", batches, total_rows / batches, max_rows
            for (b in hist) printf "    %5s rows: %d statements\n", b, hist[b]
        }
    }' "$work/statements.log"
rm -rf "$work"
