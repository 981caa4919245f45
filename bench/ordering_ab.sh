#!/usr/bin/env bash
# An A/B of what ordering per key costs the service, and of one remedy, on a private PostgreSQL
# (tests/run_with_postgres.sh, PG_DURABILITY as there; production unless set): burn-downs of
# AB_EVENTS (100,000) no-op events, unordered and over AB_KEYS (10,000) ordering keys, by one
# instance with 2 handler processes (OUTBOX_ON_COMPLETE=keep), in alternation, AB_REPEAT (3) times:
#   unordered   the events without an ordering key
#   ordered     over AB_KEYS keys, migration 004 as it is
#   fn_auto     the same, with plan_cache_mode = auto set on the ordering trigger functions
#               (ALTER FUNCTION ... SET): the service's sessions plan every statement afresh
#               (force_custom_plan, supervisor/db_connection.cpp), which reaches the statements
#               inside those functions too (docs/PERFORMANCE.md, "Ordering per key")
# Each line: variant, repetition, events/s, 1-minute load average. BUILD_DIR [build] has
# liboutbox.a. Not part of `make bench`; about 5 minutes on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    PG_DURABILITY="${PG_DURABILITY:-production}" exec tests/run_with_postgres.sh bash "$0" "$@"
fi
events="${AB_EVENTS:-100000}"
keys="${AB_KEYS:-10000}"
repeat="${AB_REPEAT:-3}"
build_dir="${BUILD_DIR:-build}"
base="${OUTBOX_TEST_PG%/*}"
export PGOPTIONS="-c client_min_messages=warning"
q() { psql "$base/$1" -X -q -At -v ON_ERROR_STOP=1 -c "$2"; }

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
pg_inc=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
g++ -std=c++20 -O2 -I include -I "$pg_inc" bench/noop_app.cpp "$build_dir/liboutbox.a" \
    -lpq -luv -lcjson -lspdlog -lfmt -lcurl -lmicrohttpd -lrdkafka -lnats -lrabbitmq -lhiredis -lpthread -o "$bin/noop_app"
g++ -std=c++20 -O2 -I "$pg_inc" bench/latency_driver.cpp -lpq -lpthread -o "$bin/latency_driver"

q postgres "CREATE DATABASE ab_empty"
DATABASE_URL="$base/ab_empty" "$bin/noop_app" migrate >/dev/null 2>&1
for t in unordered ordered; do
    q postgres "CREATE DATABASE ab_$t TEMPLATE ab_empty"
    key=NULL
    if [ "$t" = ordered ]; then key="'key-' || (g % $keys)"; fi
    for ((from = 1; from <= events; from += 10000)); do
        to=$((from + 9999 < events ? from + 9999 : events))
        q "ab_$t" "SELECT count(*) FROM generate_series($from, $to) g,
                       LATERAL outbox_write_event('ab-' || g, 'default', 'bench.noop', '{}'::jsonb,
                                                  NULL, NULL, NULL, NULL, $key) w" >/dev/null
    done
    q "ab_$t" "VACUUM ANALYZE"
done

burn_down() { # variant template repetition
    local variant=$1 db=ab_run t0 t1 pid
    q postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)"
    q postgres "CREATE DATABASE $db TEMPLATE $2"
    if [ "$variant" = fn_auto ]; then
        q "$db" "ALTER FUNCTION outbox_worker_ordering_release(text, bigint) SET plan_cache_mode = auto;
                 ALTER FUNCTION outbox_worker_ordering_on_update() SET plan_cache_mode = auto"
    fi
    q "$db" CHECKPOINT
    t0=$(date +%s.%N)
    DATABASE_URL="$base/$db" OUTBOX_WORKERS=2 OUTBOX_BATCH_SIZE=100 OUTBOX_HTTP_PORT=0 \
        OUTBOX_METRICS_LOG_INTERVAL_MS=0 LOG_LEVEL=warn "$bin/noop_app" run 2>/dev/null &
    pid=$!
    t1=$(DATABASE_URL="$base/$db" "$bin/latency_driver" wait --interval-ms 50 --timeout-s 600 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))")
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$variant run $3: $(awk -v a="$t0" -v b="$t1" -v n="$events" 'BEGIN { printf "%.0f", n / (b - a) }') events/s, load $(cut -d' ' -f1 /proc/loadavg)"
}

echo "durability $OUTBOX_TEST_PG_DURABILITY, $events events, ordered over $keys keys"
for rep in $(seq 1 "$repeat"); do
    burn_down unordered ab_unordered "$rep"
    burn_down ordered ab_ordered "$rep"
    burn_down fn_auto ab_ordered "$rep"
done
