#!/usr/bin/env bash
# `make bench`: the performance proof of outbox-worker, on a private PostgreSQL 15 cluster
# (tests/run_with_postgres.sh: fsync off, synchronous_commit off) on this machine. What each
# figure means and the latest results: docs/PERFORMANCE.md.
#
#  1. Burn-down. BENCH_EVENTS (100,000) no-op events are enqueued once with
#     `noop_app emit --type bench.noop --count N` into a template database; every run starts from a
#     fresh copy of it. The service (bench/noop_app.cpp: Worker::main with one no-op C++ subscriber)
#     runs with 1, 2 and 4 handler processes, as one instance and as two instances (two `run`
#     processes, distinct OUTBOX_INSTANCE_ID). The figure is N / (time from launching the service
#     until no event is PENDING or PROCESSING, polled every 50 ms). Also: the steady-state rate
#     between the 10th and 90th percentiles of "processedAt", the transactions the database
#     committed, and the peak RSS (VmHWM) of every supervisor and handler process, read just before
#     SIGTERM.
#  2. Ceiling. The service's own claim and result statements, extracted from supervisor/queries.h
#     into a pgbench script (claim up to 100 with the service's parameters, then record every
#     claimed id as a success through the unnest() result statement, each statement its own
#     transaction as in the service), driven by pgbench alone on a copy of the same template: what
#     this database can do in this schema. Prepared statements planned for every call
#     (plan_cache_mode = force_custom_plan), as the service runs them, with 1, 2 and 4 clients: the
#     best is the ceiling. The extended protocol with unnamed statements as well, for reference.
#  3. Latency. bench/latency_driver.cpp commits events one per transaction (outbox_write_event())
#     at a fixed rate (100/s and 1,000/s) for 30 s into an idle service (1 instance, 2 handler
#     processes). Commit-to-handler-start: the handler's own wall clock (BENCH_START_FILE) minus
#     "createdAt"; commit-to-COMPLETED: "processedAt" minus "createdAt".
#  4. Peer. graphile-worker (bench/graphile, version pinned in package.json, installed here with
#     npm) on the same cluster: the same burn-down (jobs enqueued in bulk with add_jobs()) with its
#     local queue and batched completion on, and the same latency runs (add_job() per transaction).
#
# Results: one JSON file per run in bench/results/ (machine, PostgreSQL settings, load averages,
# every figure) and a summary on stdout. Every measurement first waits until the 1-minute load
# average is below BENCH_MAX_LOAD (the machine may be shared) and records the load it ran under.
#
# Environment (defaults in brackets):
#   BENCH_EVENTS [100000]         events per burn-down
#   BENCH_WORKERS ["1 2 4"]       handler processes per instance
#   BENCH_INSTANCES ["1 2"]       service instances (and graphile-worker processes)
#   BENCH_BATCH [100]             OUTBOX_BATCH_SIZE and the ceiling's claim size
#   BENCH_RATES ["100 1000"]      latency runs, events per second
#   BENCH_LATENCY_SECONDS [30]
#   BENCH_LATENCY_WORKERS [2]     handler processes in the latency runs
#   BENCH_REPEAT [1]              repetitions of every burn-down and ceiling figure (median reported)
#   BENCH_PARTS ["outbox graphile burndown ceiling latency"]: systems (outbox, graphile) and
#                                 measurements (burndown and latency of the systems named; ceiling)
#   BENCH_MAX_LOAD [1.5]          0: do not wait for a quiet machine
#   BENCH_LOAD_POLL_S [30] / BENCH_LOAD_MAX_WAIT_S [3600]
#   BUILD_DIR [build]             where liboutbox.a is
#   BENCH_RESULTS_DIR [bench/results]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec tests/run_with_postgres.sh bash "$0" "$@"
fi

events="${BENCH_EVENTS:-100000}"
workers_list="${BENCH_WORKERS:-1 2 4}"
instances_list="${BENCH_INSTANCES:-1 2}"
batch="${BENCH_BATCH:-100}"
rates="${BENCH_RATES:-100 1000}"
latency_seconds="${BENCH_LATENCY_SECONDS:-30}"
latency_workers="${BENCH_LATENCY_WORKERS:-2}"
repeat="${BENCH_REPEAT:-1}"
parts="${BENCH_PARTS:-outbox graphile burndown ceiling latency}"
max_load="${BENCH_MAX_LOAD:-1.5}"
load_poll="${BENCH_LOAD_POLL_S:-30}"
load_max_wait="${BENCH_LOAD_MAX_WAIT_S:-3600}"
build_dir="${BUILD_DIR:-build}"
results_dir="${BENCH_RESULTS_DIR:-bench/results}"
graphile_version=0.17.3

want() { [[ " $parts " == *" $1 "* ]]; }
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

mkdir -p bench/work "$results_dir"
work=$(mktemp -d "$PWD/bench/work/run.XXXXXX")
records="$work/records.jsonl"
: >"$records"
bin="$work/bin"
mkdir -p "$bin"
# psql and pgbench take the password from the URI; the cluster is the script's own.
base_url="${OUTBOX_TEST_PG%/*}"
export PGOPTIONS="-c client_min_messages=warning"
db_url() { echo "$base_url/$1"; }
q() { psql "$(db_url "$1")" -X -q -At -v ON_ERROR_STOP=1 -c "$2"; }
qpg() { q postgres "$1"; }

children=()
cleanup_children() {
    for p in "${children[@]:-}"; do
        if [ -n "$p" ]; then kill -TERM "$p" 2>/dev/null || true; fi
    done
}
trap cleanup_children EXIT

# ---- tools --------------------------------------------------------------------------------------

lib="$build_dir/liboutbox.a"
[ -f "$lib" ] || { echo "bench: $lib not found: build first (make build, or set BUILD_DIR)" >&2; exit 1; }
log "building bench/noop_app.cpp and bench/latency_driver.cpp against $lib"
pg_inc=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
g++ -std=c++20 -O2 -g -I include -I "$pg_inc" bench/noop_app.cpp "$lib" \
    -lpq -luv -lcjson -lspdlog -lfmt -lcurl -lhttp_parser -lpthread -o "$bin/noop_app"
g++ -std=c++20 -O2 -g -I "$pg_inc" bench/latency_driver.cpp -lpq -lpthread -o "$bin/latency_driver"
app="$bin/noop_app"
driver="$bin/latency_driver"

have_graphile=false
if want graphile; then
    if command -v node >/dev/null && command -v npm >/dev/null; then
        log "npm install in bench/graphile (graphile-worker $graphile_version)"
        (cd bench/graphile && npm install --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null)
        have_graphile=true
    else
        log "node/npm not found: the graphile-worker peer is skipped"
    fi
fi

# ---- machine, load, records ---------------------------------------------------------------------

load1() { cut -d' ' -f1 /proc/loadavg; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Waits for a quiet machine, then prints the load average it measures under (1, 5, 15 min) and
# whether the gate was met, as a JSON object.
wait_for_quiet() {
    local waited=0 met=true l
    if [ "$max_load" != 0 ]; then
        while :; do
            l=$(load1)
            if awk -v l="$l" -v m="$max_load" 'BEGIN { exit !(l < m) }'; then
                break
            fi
            if [ "$waited" -ge "$load_max_wait" ]; then
                log "load $l still >= $max_load after ${waited}s: measuring anyway (flagged)"
                met=false
                break
            fi
            log "load average $l >= $max_load: waiting ${load_poll}s"
            sleep "$load_poll"
            waited=$((waited + load_poll))
        done
    fi
    local l1 l5 l15
    read -r l1 l5 l15 < <(loadavg)
    jq -nc --argjson a "$l1" --argjson b "$l5" --argjson c "$l15" --argjson met "$met" --argjson w "$waited" \
        '{load1: $a, load5: $b, load15: $c, gate_met: $met, waited_s: $w}'
}

vmhwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now_s() { date +%s.%N; }
record() { echo "$1" >>"$records"; }

# Transactions committed in a database so far (cumulative statistics: a backend reports its own
# at the latest when it exits, so this is read after the clients have gone).
xact_commits() {
    sleep 0.6
    q "$1" "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
}

# ---- databases ---------------------------------------------------------------------------------

new_db() { # name template
    qpg "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
    qpg "CREATE DATABASE $1 TEMPLATE $2" >/dev/null
}
drop_db() { qpg "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null; }

prepare_outbox_templates() {
    log "template outbox_empty: migrate"
    drop_db outbox_full
    drop_db outbox_empty
    qpg "CREATE DATABASE outbox_empty" >/dev/null
    DATABASE_URL=$(db_url outbox_empty) "$app" migrate >/dev/null 2>&1
    qpg "CREATE DATABASE outbox_full TEMPLATE outbox_empty" >/dev/null
    log "template outbox_full: emit --type bench.noop --count $events"
    local t0 t1
    t0=$(now_s)
    DATABASE_URL=$(db_url outbox_full) "$app" emit --type bench.noop --count "$events" >/dev/null 2>&1
    t1=$(now_s)
    q outbox_full 'VACUUM ANALYZE "Outbox"' >/dev/null
    q outbox_full 'VACUUM ANALYZE "EventLog"' >/dev/null
    q outbox_full 'CHECKPOINT' >/dev/null
    record "$(jq -nc --argjson n "$events" --argjson s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        '{kind: "enqueue", system: "outbox-worker", method: "emit --count (1,000 per transaction)",
          events: $n, seconds: $s, events_per_s: ($n / $s)}')"
}

prepare_graphile_templates() {
    log "template gw_empty: graphile-worker migrate"
    drop_db gw_full
    drop_db gw_empty
    qpg "CREATE DATABASE gw_empty" >/dev/null
    (cd bench/graphile && DATABASE_URL=$(db_url gw_empty) node worker.js migrate)
    qpg "CREATE DATABASE gw_full TEMPLATE gw_empty" >/dev/null
    log "template gw_full: add_jobs() of $events no-op jobs, 10,000 per call"
    local t0 t1 left n
    t0=$(now_s)
    left=$events
    while [ "$left" -gt 0 ]; do
        n=$((left < 10000 ? left : 10000))
        q gw_full "SELECT count(*) FROM graphile_worker.add_jobs(ARRAY(
                       SELECT ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec
                         FROM generate_series(1, $n)))" >/dev/null
        left=$((left - n))
    done
    t1=$(now_s)
    q gw_full 'VACUUM ANALYZE' >/dev/null
    q gw_full 'CHECKPOINT' >/dev/null
    record "$(jq -nc --argjson n "$events" --argjson s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        '{kind: "enqueue", system: "graphile-worker", method: "graphile_worker.add_jobs(), 10,000 per call",
          events: $n, seconds: $s, events_per_s: ($n / $s)}')"
}

# ---- burn-down: outbox-worker ---------------------------------------------------------------------

outbox_burndown() { # instances workers repetition
    local inst=$1 w=$2 rep=$3 db="bd_outbox" k url load
    new_db "$db" outbox_full
    url=$(db_url "$db")
    local x0 x1
    x0=$(xact_commits "$db")
    load=$(wait_for_quiet)
    log "burn-down outbox-worker: $inst instance(s) x $w handler processes (run $rep): load $(jq -r .load1 <<<"$load")"
    local pids=() t_launch t_done logf="$work/outbox-$inst-$w-$rep.log"
    t_launch=$(now_s)
    for ((k = 1; k <= inst; k++)); do
        DATABASE_URL="$url" OUTBOX_WORKERS="$w" OUTBOX_BATCH_SIZE="$batch" OUTBOX_HTTP_PORT=0 \
            OUTBOX_METRICS_LOG_INTERVAL_MS=0 OUTBOX_INSTANCE_ID="bench-$k" LOG_LEVEL=warn \
            "$app" run 2>>"$logf" &
        pids+=($!)
        children+=($!)
    done
    t_done=$(DATABASE_URL="$url" "$driver" wait --interval-ms 50 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))")
    local sup_kb=() handler_kb=() p c
    for p in "${pids[@]}"; do
        sup_kb+=("$(vmhwm_kb "$p")")
        for c in $(pgrep -P "$p" || true); do
            handler_kb+=("$(vmhwm_kb "$c")")
        done
    done
    for p in "${pids[@]}"; do kill -TERM "$p"; done
    for p in "${pids[@]}"; do wait "$p" || log "instance $p exited with $?"; done
    children=()
    x1=$(xact_commits "$db")
    local stats
    stats=$(q "$db" "SELECT json_build_object(
        'completed', count(*) FILTER (WHERE \"status\" = 'COMPLETED'),
        'not_completed', count(*) FILTER (WHERE \"status\" <> 'COMPLETED'),
        'retried', count(*) FILTER (WHERE \"retryCount\" > 0),
        'p10', extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY \"processedAt\")),
        'p90', extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY \"processedAt\")),
        'first', extract(epoch FROM min(\"processedAt\")),
        'last', extract(epoch FROM max(\"processedAt\")))
        FROM \"Outbox\"")
    record "$(jq -nc --argjson stats "$stats" --argjson load "$load" --arg load_end "$(loadavg)" \
        --argjson n "$events" --argjson inst "$inst" --argjson w "$w" --argjson rep "$rep" --argjson batch "$batch" \
        --argjson t0 "$t_launch" --argjson t1 "$t_done" --argjson xacts "$((x1 - x0))" \
        --arg sup "${sup_kb[*]}" --arg hand "${handler_kb[*]}" \
        --arg warnings "$(grep -c . "$logf" || true)" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        {kind: "burndown", system: "outbox-worker", instances: $inst, handler_processes_per_instance: $w,
         batch: $batch, repetition: $rep, events: $n,
         seconds: ($t1 - $t0), events_per_s: ($n / ($t1 - $t0)),
         steady_events_per_s: (0.8 * $n / ($stats.p90 - $stats.p10)),
         first_completion_after_launch_s: ($stats.first - $t0), last_completion_before_detection_s: ($t1 - $stats.last),
         completed: $stats.completed, not_completed: $stats.not_completed, retried: $stats.retried,
         transactions: $xacts, events_per_transaction: ($n / $xacts),
         peak_rss_mib: {supervisor: [$sup | splits(" ") | select(. != "") | kb2mib],
                        handler_processes: [$hand | splits(" ") | select(. != "") | kb2mib]},
         log_lines_warn_or_error: ($warnings | tonumber),
         load_at_start: $load, load_at_end: $load_end,
         command: "BENCH_PARTS=\"outbox burndown\" BENCH_INSTANCES=\($inst) BENCH_WORKERS=\($w) BENCH_EVENTS=\($n) bash bench/run.sh"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"\(.events_per_s | round) events/s (steady \(.steady_events_per_s | round)), \(.events_per_transaction * 10 | round / 10) events per transaction, supervisor \(.peak_rss_mib.supervisor) MiB, handlers \(.peak_rss_mib.handler_processes) MiB"')"
    drop_db "$db"
}

# ---- ceiling: the service's statements under pgbench --------------------------------------------

extract_sql() { # name of the constant in supervisor/queries.h
    awk -v name="$1" '
        index($0, "inline constexpr const char* " name " = R\"sql(") == 1 { on = 1; next }
        on && /^\)sql"/ { exit }
        on { print }' supervisor/queries.h
}

write_ceiling_script() {
    local claim results
    claim=$(extract_sql kClaim)
    results=$(extract_sql kRecordResults)
    if [ -z "$claim" ] || [ -z "$results" ]; then
        echo "bench: cannot extract kClaim / kRecordResults from supervisor/queries.h" >&2
        exit 1
    fi
    {
        echo '-- Generated by bench/run.sh from supervisor/queries.h: the service'"'"'s claim, then its result'
        echo '-- statement for every claimed id (success); each its own implicit transaction, as in the service.'
        echo '\set token random(1, 1000000000000000)'
        echo 'WITH claimed (id, retry_count, max_retries, event_type, created_ms, event_log_id, event_key,'
        echo '              tenant_id, project_id, event_event_type, payload, metadata, correlation_id,'
        echo '              created_at, attempt) AS ('
        # pgbench takes every ":name" for a variable, even inside a string literal: the two colons
        # of the to_char() format are spelled chr(58), which the planner folds into the same constant.
        sed -e 's/\$1/:owner/g' -e 's/\$2/:batch/g' -e 's/\$3/:patterns/g' -e 's/\$4/:token/g' \
            -e 's/\$5/:lease_ms/g' -e "s/HH24:MI:SS/HH24' || chr(58) || 'MI' || chr(58) || 'SS/" <<<"$claim"
        echo ')'
        echo "SELECT COALESCE(array_agg(id), '{}') AS ids, COALESCE(array_agg(:token::bigint), '{}') AS tokens,"
        echo "       COALESCE(array_agg(0), '{}') AS kinds, COALESCE(array_agg(NULL::text), '{}') AS errors,"
        # The service receives payload and metadata as text: the casts make PostgreSQL produce it.
        echo "       COALESCE(array_agg(0::bigint), '{}') AS delays,"
        echo "       sum(length(payload::text) + COALESCE(length(metadata::text), 0) + length(created_at)) AS claimed_bytes"
        echo '  FROM claimed'
        echo '\gset'
        sed -e 's/\$1/:ids/g' -e 's/\$2/:tokens/g' -e 's/\$3/:kinds/g' -e 's/\$4/:errors/g' \
            -e 's/\$5/:delays/g' <<<"$results"
        echo ';'
    } >"$work/ceiling.sql"
}

ceiling() { # protocol clients repetition
    local mode=$1 c=$2 rep=$3 db="ceil_outbox" load per_client out tps completed
    new_db "$db" outbox_full
    load=$(wait_for_quiet)
    per_client=$(((events / batch + c - 1) / c))
    log "ceiling: pgbench -M $mode -c $c -t $per_client (run $rep): load $(jq -r .load1 <<<"$load")"
    local session_options=""
    if [ "$mode" = prepared ]; then
        session_options="-c plan_cache_mode=force_custom_plan" # as supervisor/db_connection.cpp
    fi
    out=$(PGOPTIONS="${PGOPTIONS:-} $session_options" \
        pgbench -n -M "$mode" -c "$c" -j "$c" -t "$per_client" -f "$work/ceiling.sql" \
        -D owner=pgbench-ceiling -D batch="$batch" -D patterns='{bench.%}' -D lease_ms=30000 \
        "$(db_url "$db")" 2>&1) || { echo "$out" >&2; exit 1; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
    completed=$(q "$db" "SELECT count(*) FROM \"Outbox\" WHERE \"status\" = 'COMPLETED'")
    record "$(jq -nc --argjson tps "$tps" --argjson completed "$completed" --argjson tx "$((per_client * c))" \
        --argjson c "$c" --arg mode "$mode" --argjson rep "$rep" --argjson load "$load" --arg load_end "$(loadavg)" \
        --argjson n "$events" --argjson batch "$batch" --argjson per "$per_client" --arg opts "$session_options" '
        {kind: "ceiling", system: "pgbench (service statements)", protocol: $mode, clients: $c, repetition: $rep,
         batch: $batch, transactions: $tx, tps: $tps, completed: $completed,
         events_per_s: ($tps * $completed / $tx), load_at_start: $load, load_at_end: $load_end,
         session_options: $opts,
         command: "BENCH_PARTS=ceiling BENCH_EVENTS=\($n) bash bench/run.sh  (PGOPTIONS=\"\($opts)\" pgbench -n -M \($mode) -c \($c) -j \($c) -t \($per) -f ceiling.sql)"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"\(.events_per_s | round) events/s (\(.completed) completed)"')"
    drop_db "$db"
}

# ---- burn-down: graphile-worker --------------------------------------------------------------------

graphile_burndown() { # instances repetition
    local inst=$1 rep=$2 db="bd_gw" k url load
    new_db "$db" gw_full
    url=$(db_url "$db")
    local x0 x1
    x0=$(xact_commits "$db")
    load=$(wait_for_quiet)
    log "burn-down graphile-worker: $inst process(es) (run $rep): load $(jq -r .load1 <<<"$load")"
    local pids=() t_launch t_done logf="$work/graphile-$inst-$rep.log"
    rm -f "$work"/gw-progress-* "$work"/gw-ready-*
    t_launch=$(now_s)
    for ((k = 1; k <= inst; k++)); do
        (cd bench/graphile && DATABASE_URL="$url" BENCH_EVENTS=$((events / inst)) \
            BENCH_PROGRESS_FILE="$work/gw-progress-$k" BENCH_READY_FILE="$work/gw-ready-$k" \
            exec node worker.js run 2>>"$logf") &
        pids+=($!)
        children+=($!)
    done
    t_done=$(DATABASE_URL="$url" "$driver" wait --interval-ms 50 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)")
    local rss_kb=() p
    for p in "${pids[@]}"; do rss_kb+=("$(vmhwm_kb "$p")"); done
    for p in "${pids[@]}"; do kill -TERM "$p"; done
    for p in "${pids[@]}"; do wait "$p" || true; done
    children=()
    x1=$(xact_commits "$db")
    # Steady state: between the starts of the jobs numbered 10% and 90% of each process's share,
    # summed over the processes.
    local steady ready
    steady=$(for k in $(seq 1 "$inst"); do
        awk 'NR == 1 {na = $1; a = $2} NR == 2 {nb = $1; b = $2} END {if (b > a) print (nb - na) / ((b - a) / 1e6)}' \
            "$work/gw-progress-$k" 2>/dev/null || true
    done | awk '{s += $1} END {print s + 0}')
    ready=$(awk '{printf "%.6f\n", $1 / 1e6}' "$work/gw-ready-1" 2>/dev/null || echo 0)
    record "$(jq -nc --argjson load "$load" --arg load_end "$(loadavg)" --argjson n "$events" --argjson inst "$inst" \
        --argjson rep "$rep" --argjson t0 "$t_launch" --argjson t1 "$t_done" --argjson steady "$steady" \
        --argjson ready "$ready" --arg rss "${rss_kb[*]}" --argjson xacts "$((x1 - x0))" \
        --arg warnings "$(grep -c . "$logf" || true)" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        {kind: "burndown", system: "graphile-worker", instances: $inst,
         settings: "concurrentJobs 24, maxPoolSize 25, localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0",
         repetition: $rep, events: $n, seconds: ($t1 - $t0), events_per_s: ($n / ($t1 - $t0)),
         steady_events_per_s: $steady, runner_ready_after_launch_s: (if $ready > 0 then $ready - $t0 else null end),
         transactions: $xacts, events_per_transaction: ($n / $xacts),
         peak_rss_mib: {node_processes: [$rss | splits(" ") | select(. != "") | kb2mib]},
         log_lines_warn_or_error: ($warnings | tonumber),
         load_at_start: $load, load_at_end: $load_end,
         command: "BENCH_PARTS=\"graphile burndown\" BENCH_INSTANCES=\($inst) BENCH_EVENTS=\($n) bash bench/run.sh"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"\(.events_per_s | round) events/s (steady \(.steady_events_per_s | round)), \(.events_per_transaction * 10 | round / 10) events per transaction, node \(.peak_rss_mib.node_processes) MiB"')"
    drop_db "$db"
}

# ---- latency ---------------------------------------------------------------------------------------

# Percentiles in SQL. $1: outbox | graphile. The start and ack files replace :'starts' and :'acks'.
latency_stats_sql() {
    local table created done_at id_type
    if [ "$1" = outbox ]; then
        table='(SELECT "id" AS id, "createdAt" AS created_at, "processedAt" AS done_at FROM "Outbox"
                 WHERE "eventType" = '"'bench.latency'"') d'
        id_type=text
    else
        table='bench_done d'
        id_type=bigint
    fi
    cat <<EOF
CREATE TEMP TABLE starts (id $id_type, start_us bigint);
CREATE TEMP TABLE acks (id $id_type, ack_us bigint);
\\copy starts FROM :'starts' WITH (FORMAT text, DELIMITER ' ')
\\copy acks FROM :'acks' WITH (FORMAT text, DELIMITER ' ')
WITH s AS (SELECT id, min(start_us) AS start_us, count(*) AS n FROM starts GROUP BY id),
all_events AS (SELECT * FROM $table),
l AS (SELECT (s.start_us - extract(epoch FROM d.created_at) * 1e6) / 1000.0 AS start_ms,
             extract(epoch FROM d.done_at - d.created_at) * 1000.0 AS done_ms,
             (s.start_us - a.ack_us) / 1000.0 AS ack_to_start_ms, s.n
        FROM all_events d JOIN s ON s.id = d.id LEFT JOIN acks a ON a.id = d.id)
SELECT json_build_object(
  'events', (SELECT count(*) FROM all_events),
  'started', count(*), 'delivered_more_than_once', count(*) FILTER (WHERE n > 1),
  'commit_to_start_ms', json_build_object(
      'p50', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY start_ms)::numeric, 3),
      'p95', round(percentile_cont(0.95) WITHIN GROUP (ORDER BY start_ms)::numeric, 3),
      'p99', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY start_ms)::numeric, 3),
      'max', round(max(start_ms)::numeric, 3)),
  'commit_to_completed_ms', json_build_object(
      'p50', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY done_ms)::numeric, 3),
      'p95', round(percentile_cont(0.95) WITHIN GROUP (ORDER BY done_ms)::numeric, 3),
      'p99', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY done_ms)::numeric, 3),
      'max', round(max(done_ms)::numeric, 3)),
  'commit_ack_to_start_ms', json_build_object(
      'p50', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ack_to_start_ms)::numeric, 3),
      'p99', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ack_to_start_ms)::numeric, 3)))
FROM l;
EOF
}

latency_run() { # system rate
    local system=$1 rate=$2 db="lat_$1" pid url load starts acks drive stats connections=2 logf
    starts="$work/starts-$system-$rate"
    acks="$work/acks-$system-$rate"
    logf="$work/latency-$system-$rate.log"
    rm -f "$starts" "$acks"
    if [ "$system" = outbox ]; then
        new_db "$db" outbox_empty
    else
        new_db "$db" gw_empty
        # graphile-worker deletes a job when it completes: a trigger keeps when (the deleting
        # statement's transaction time, as "processedAt" is for outbox-worker).
        q "$db" "CREATE TABLE bench_done (id bigint, created_at timestamptz, done_at timestamptz);
                 CREATE FUNCTION bench_done() RETURNS trigger LANGUAGE plpgsql AS \$\$
                 BEGIN INSERT INTO bench_done VALUES (OLD.id, OLD.created_at, now()); RETURN NULL; END \$\$;
                 CREATE TRIGGER bench_done AFTER DELETE ON graphile_worker._private_jobs
                     FOR EACH ROW EXECUTE FUNCTION bench_done()" >/dev/null
    fi
    url=$(db_url "$db")
    if [ "$system" = outbox ]; then
        DATABASE_URL="$url" OUTBOX_WORKERS="$latency_workers" OUTBOX_BATCH_SIZE="$batch" OUTBOX_HTTP_PORT=0 \
            OUTBOX_METRICS_LOG_INTERVAL_MS=0 OUTBOX_INSTANCE_ID=bench-latency LOG_LEVEL=warn \
            BENCH_START_FILE="$starts" "$app" run 2>>"$logf" &
        pid=$!
        children+=($pid)
        # Ready once its handler processes are up.
        for _ in $(seq 1 100); do
            [ "$(pgrep -c -P "$pid" || true)" -ge "$latency_workers" ] && break
            sleep 0.1
        done
    else
        rm -f "$work/gw-lat-ready"
        (cd bench/graphile && DATABASE_URL="$url" BENCH_START_FILE="$starts" BENCH_READY_FILE="$work/gw-lat-ready" \
            exec node worker.js run 2>>"$logf") &
        pid=$!
        children+=($pid)
        for _ in $(seq 1 100); do
            [ -s "$work/gw-lat-ready" ] && break
            sleep 0.1
        done
    fi
    sleep 1
    load=$(wait_for_quiet)
    log "latency $system: $rate events/s for ${latency_seconds}s: load $(jq -r .load1 <<<"$load")"
    drive=$(DATABASE_URL="$url" "$driver" emit --system "$system" --rate "$rate" --seconds "$latency_seconds" \
        --connections "$connections" --ack-file "$acks")
    local done_sql
    if [ "$system" = outbox ]; then
        done_sql="SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))"
    else
        done_sql="SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)"
    fi
    DATABASE_URL="$url" "$driver" wait --interval-ms 100 --timeout-s 300 --sql "$done_sql" >/dev/null
    local rss_kb=() c
    rss_kb+=("$(vmhwm_kb "$pid")")
    for c in $(pgrep -P "$pid" || true); do rss_kb+=("$(vmhwm_kb "$c")"); done
    kill -TERM "$pid"
    wait "$pid" || true
    children=()
    # \copy takes its line as it is (no psql variables): the paths go in literally.
    stats=$(latency_stats_sql "$system" | sed -e "s|:'starts'|'$starts'|" -e "s|:'acks'|'$acks'|" |
        psql "$url" -X -q -At -v ON_ERROR_STOP=1)
    record "$(jq -nc --argjson stats "$stats" --argjson drive "$drive" --argjson load "$load" --arg load_end "$(loadavg)" \
        --arg system "$system" --argjson rate "$rate" --argjson secs "$latency_seconds" --argjson w "$latency_workers" \
        --arg rss "${rss_kb[*]}" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        {kind: "latency", system: (if $system == "outbox" then "outbox-worker" else "graphile-worker" end),
         rate: $rate, seconds: $secs,
         setup: (if $system == "outbox" then "1 instance, \($w) handler processes, batch 100"
                 else "1 process, concurrentJobs 24, localQueue.size 500, completeJobBatchDelay 0" end),
         driver: $drive} + $stats +
        {peak_rss_mib: [$rss | splits(" ") | select(. != "") | kb2mib],
         load_at_start: $load, load_at_end: $load_end,
         command: "BENCH_PARTS=\"\($system) latency\" BENCH_RATES=\($rate) bash bench/run.sh"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"start p50/p95/p99/max \(.commit_to_start_ms.p50)/\(.commit_to_start_ms.p95)/\(.commit_to_start_ms.p99)/\(.commit_to_start_ms.max) ms; completed p50/p99 \(.commit_to_completed_ms.p50)/\(.commit_to_completed_ms.p99) ms"')"
    drop_db "$db"
}

# ---- run ---------------------------------------------------------------------------------------

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_at_begin=$(loadavg)
prepare_outbox_templates
write_ceiling_script
if $have_graphile && { want burndown || want latency; }; then
    prepare_graphile_templates
fi

if want outbox && want burndown; then
    for rep in $(seq 1 "$repeat"); do
        for inst in $instances_list; do
            for w in $workers_list; do
                outbox_burndown "$inst" "$w" "$rep"
            done
        done
    done
fi
if want ceiling; then
    for rep in $(seq 1 "$repeat"); do
        for mode in extended prepared; do
            for c in 1 2 4; do
                ceiling "$mode" "$c" "$rep"
            done
        done
    done
fi
if $have_graphile && want burndown; then
    for rep in $(seq 1 "$repeat"); do
        for inst in $instances_list; do
            graphile_burndown "$inst" "$rep"
        done
    done
fi
if want latency; then
    for rate in $rates; do
        if want outbox; then latency_run outbox "$rate"; fi
        if $have_graphile; then latency_run graphile "$rate"; fi
    done
fi

# ---- results -----------------------------------------------------------------------------------

pg_settings=$(qpg "SELECT json_object_agg(name, setting || COALESCE(' ' || unit, '')) FROM pg_settings
                   WHERE name IN ('server_version', 'fsync', 'synchronous_commit', 'full_page_writes',
                                  'shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'work_mem',
                                  'wal_level', 'max_connections', 'autovacuum', 'jit')")
machine=$(jq -nc --arg nproc "$(nproc)" --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
    --arg mem "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" --arg kernel "$(uname -r)" \
    --arg os "$(. /etc/os-release && echo "$PRETTY_NAME")" --arg node "$(node --version 2>/dev/null || echo none)" \
    --arg commit "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --arg dirty "$(git status --porcelain 2>/dev/null | grep -vc '^??' || true)" \
    --arg gxx "$(g++ -dumpfullversion)" --arg gw "$graphile_version" \
    '{nproc: ($nproc | tonumber), cpu_model: $cpu, memory: $mem, kernel: $kernel, os: $os, node: $node,
      graphile_worker: $gw, gxx: $gxx, git_commit: $commit, git_modified_files: ($dirty | tonumber)}')
out="$results_dir/$(date -u +%Y%m%dT%H%M%SZ).json"
jq -s --argjson machine "$machine" --argjson pg "$pg_settings" --arg started "$started_at" \
    --arg finished "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg load_begin "$load_at_begin" --arg load_end "$(loadavg)" \
    --arg build "$build_dir" --argjson events "$events" --argjson maxload "$max_load" '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[(length / 2 | floor)]
                       else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    . as $r |
    ($r | map(select(.kind == "burndown")) | group_by([.system, .instances, .handler_processes_per_instance])
        | map({system: .[0].system, instances: .[0].instances,
               handler_processes_per_instance: .[0].handler_processes_per_instance,
               runs: length, events_per_s: (map(.events_per_s) | median),
               steady_events_per_s: (map(.steady_events_per_s) | median)})) as $bd |
    ($r | map(select(.kind == "ceiling")) | group_by([.protocol, .clients])
        | map({protocol: .[0].protocol, clients: .[0].clients, runs: length,
               events_per_s: (map(.events_per_s) | median)})) as $ceil |
    ([$bd[] | select(.system == "outbox-worker") | .events_per_s] | max) as $ob_best |
    ([$bd[] | select(.system == "graphile-worker") | .events_per_s] | max) as $gw_best |
    ([$ceil[] | select(.protocol == "prepared") | .events_per_s] | max) as $ceiling |
    ([$r[] | select(.kind == "burndown" and .system == "outbox-worker") | .peak_rss_mib.supervisor[]] | max) as $sup |
    ([$r[] | select(.kind == "burndown" and .system == "outbox-worker") | .peak_rss_mib.handler_processes[]] | max) as $hand |
    ([$r[] | select(.kind == "latency" and .system == "outbox-worker" and .rate == 1000) | .commit_to_start_ms.p99] | first) as $p99 |
    {started: $started, finished: $finished, events: $events, build_dir: $build,
     machine: $machine, postgresql: ($pg + {cluster: "tests/run_with_postgres.sh (private, fsync off)"}),
     load_gate: {max_load1: $maxload, load_at_begin: $load_begin, load_at_end: $load_end},
     summary: {
       burndown: $bd, ceiling: $ceil,
       outbox_best_events_per_s: $ob_best, graphile_best_events_per_s: $gw_best,
       outbox_over_graphile: (if $gw_best and $ob_best then $ob_best / $gw_best else null end),
       ceiling_events_per_s: $ceiling,
       outbox_fraction_of_ceiling: (if $ceiling and $ob_best then $ob_best / $ceiling else null end),
       max_supervisor_rss_mib: $sup, max_handler_process_rss_mib: $hand,
       p99_commit_to_start_ms_at_1000: $p99,
       targets: {
         burndown_ahead_of_graphile: (if $gw_best and $ob_best then $ob_best > $gw_best else null end),
         at_least_85pct_of_ceiling: (if $ceiling and $ob_best then $ob_best >= 0.85 * $ceiling else null end),
         p99_start_under_10ms_at_1000: (if $p99 then $p99 < 10 else null end),
         supervisor_under_20mib: (if $sup then $sup < 20 else null end),
         handler_under_10mib: (if $hand then $hand < 10 else null end)}},
     records: $r}' "$records" >"$out"
cp "$work/ceiling.sql" "${out%.json}.ceiling.sql"

echo
echo "results: $out"
jq -r '
  .summary as $s |
  "burn-down (\(.events) events), events/s (median of runs; steady state 10%-90% in brackets):",
  ($s.burndown[] | "  \(.system) \(.instances) instance(s)\(if .handler_processes_per_instance then " x \(.handler_processes_per_instance) handler processes" else "" end): \(.events_per_s | round) (\(.steady_events_per_s | round))"),
  "ceiling (the service statements under pgbench), events/s:",
  ($s.ceiling[] | "  \(.protocol) \(.clients) client(s): \(.events_per_s | round)"),
  "outbox best \($s.outbox_best_events_per_s // "-"); graphile best \($s.graphile_best_events_per_s // "-"); ratio \($s.outbox_over_graphile // "-"); fraction of ceiling \($s.outbox_fraction_of_ceiling // "-")",
  "peak RSS: supervisor \($s.max_supervisor_rss_mib) MiB, handler process \($s.max_handler_process_rss_mib) MiB",
  (.records[] | select(.kind == "latency") | "latency \(.system) \(.rate)/s: commit-to-start p50/p95/p99/max \(.commit_to_start_ms.p50)/\(.commit_to_start_ms.p95)/\(.commit_to_start_ms.p99)/\(.commit_to_start_ms.max) ms; commit-to-completed \(.commit_to_completed_ms.p50)/\(.commit_to_completed_ms.p95)/\(.commit_to_completed_ms.p99)/\(.commit_to_completed_ms.max) ms"),
  "targets: \($s.targets)"' "$out"
rm -rf "$work"
