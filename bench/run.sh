#!/usr/bin/env bash
# `make bench`: burn-down benchmark. N events (default 100,000) are enqueued, then one instance of
# the service with a no-op subscriber (the example application's "example.ok" handler, built
# in C++) works them off; the figure is the time from start until every row is COMPLETED. Prints
# events per second and the peak RSS (VmHWM) of the supervisor and of each handler process.
#
#   BENCH_EVENTS=100000 BENCH_WORKERS=2 BENCH_BATCH=100 make bench
#
# PostgreSQL is the private cluster of tests/run_with_postgres.sh (fsync off) on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec tests/run_with_postgres.sh bash "$0" "$@"
fi

events="${BENCH_EVENTS:-100000}"
workers="${BENCH_WORKERS:-2}"
batch="${BENCH_BATCH:-100}"
app="${BUILD_DIR:-build}/outbox-example-app"
db="outbox_bench"
psql "$OUTBOX_TEST_PG" -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null 2>&1
export DATABASE_URL="${OUTBOX_TEST_PG%/*}/$db"
"$app" migrate >/dev/null
echo "enqueueing $events events..."
"$app" emit --type example.ok --count "$events" >/dev/null
psql "$DATABASE_URL" -q -c 'VACUUM ANALYZE "Outbox"' -c 'VACUUM ANALYZE "EventLog"' >/dev/null

echo "burn-down: $workers handler processes, batch $batch, pipeline depth 4 per process, read-ahead one batch"
start=$(date +%s.%N)
OUTBOX_WORKERS="$workers" OUTBOX_BATCH_SIZE="$batch" OUTBOX_HTTP_PORT=0 OUTBOX_METRICS_LOG_INTERVAL_MS=0 \
    LOG_LEVEL=warn "$app" run &
pid=$!
peak_sup=0
peak_handler=0
while :; do
    done_count=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM \"Outbox\" WHERE status = 'COMPLETED'")
    for child in $(pgrep -P "$pid" || true); do
        h=$(awk '/VmHWM/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)
        [ "${h:-0}" -gt "$peak_handler" ] && peak_handler=$h
    done
    s=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${s:-0}" -gt "$peak_sup" ] && peak_sup=$s
    [ "$done_count" -ge "$events" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "the service stopped early" >&2; exit 1; }
    sleep 0.2
done
end=$(date +%s.%N)
kill -TERM "$pid"
wait "$pid"
awk -v n="$events" -v s="$start" -v e="$end" -v sup="$peak_sup" -v h="$peak_handler" 'BEGIN {
    t = e - s
    printf "completed %d events in %.2f s: %.0f events/s\n", n, t, n / t
    printf "peak RSS: supervisor %.1f MiB, handler process %.1f MiB\n", sup / 1024, h / 1024
}'
