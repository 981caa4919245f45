#!/usr/bin/env bash
# `make bench`: the performance proof of outbox-worker, on a private PostgreSQL 15 cluster
# (tests/run_with_postgres.sh) on this machine, against graphile-worker as the peer, side by side in
# one run. What each figure means and the latest results: docs/PERFORMANCE.md.
#
# Durability. Every figure is measured under each setting of BENCH_DURABILITY, in its order, in one
# cluster that switches between them by reload (ALTER SYSTEM, pg_reload_conf(), CHECKPOINT):
#   production  fsync, synchronous_commit and full_page_writes on: PostgreSQL's defaults. First,
#               and the headline.
#   relaxed     the three off (the test cluster's own settings), reported beside it, never instead.
# Before every measurement a new session of the database under test checks with SHOW that the three
# are in force (the run stops if not), and every result record carries them ("durability").
#
#  1. Burn-down. BENCH_EVENTS (100,000) no-op events are enqueued once with
#     `noop_app emit --type bench.noop --count N` into a template database; every run starts from a
#     fresh copy of it. The service (bench/noop_app.cpp: Worker::main with one no-op C++ subscriber)
#     runs with BENCH_WORKERS handler processes per instance, as BENCH_INSTANCES instances (`run`
#     processes, distinct OUTBOX_INSTANCE_ID), once per completion mode of BENCH_COMPLETION
#     (OUTBOX_ON_COMPLETE: keep marks a success COMPLETED, delete deletes the Outbox row).
#     graphile-worker (bench/graphile, version pinned in package.json, installed here with npm) works
#     the same number of no-op jobs, enqueued in bulk with add_jobs(), with its local queue and
#     batched completion on, as BENCH_INSTANCES processes. The systems alternate run by run, so that
#     drift of a shared machine hits them alike: outbox keep, graphile, outbox delete, graphile, and
#     the whole sequence BENCH_REPEAT times; the summary reports medians, and the ratio of
#     outbox-worker to graphile-worker as median against median (same durability and instances).
#     Ordered burn-downs (SPEC 2a): for every N in BENCH_ORDERING other than "none", the same
#     BENCH_EVENTS no-op events spread over N ordering keys (event i has the key "key-<i mod N>",
#     written with outbox_write_event() in transactions of 10,000) are worked by the same service
#     and setup, right after the unordered run of the same completion mode: events of one key go one
#     at a time, so the figure shows what ordering costs. The summary gives each ordered figure's
#     ratio to the unordered one of the same completion mode and durability (median against median;
#     the target is >= 0.8 for 10,000 keys).
#     The figure is N / (time from launching the workers until no event is left: no Outbox row
#     PENDING or PROCESSING, no graphile-worker job), polled every 50 ms. Also: the steady-state rate
#     between the 10th and 90th percentiles of "processedAt" (keep only: in delete mode the rows are
#     gone, and the figure is null), the transactions the database committed, the peak RSS (VmHWM)
#     and the CPU time (utime + stime) per event of every supervisor, handler process and
#     graphile-worker process, read just before SIGTERM, and for outbox-worker the CPU time the
#     PostgreSQL cluster's processes used during the burn-down. (bench/syscalls.sh adds system
#     calls.)
#  2. Ceiling. The service's own claim and result statements, printed from supervisor/queries.h by
#     bench/print_sql.cpp, in a pgbench script: claim up to BENCH_BATCH with the service's
#     parameters, then record every claimed id as a success through the statement the service sends
#     for a batch of successes in the completion mode (keep: kRecordSuccesses where
#     supervisor/queries.h has it, else kRecordResults; delete: kDeleteSuccesses, else
#     kRecordResultsDelete), each statement its own transaction as in the service; driven by
#     pgbench alone on a copy of the same template: what this database can do in this schema. The claim's columns are all produced (each claimed row is
#     also turned into text, as the service receives it); only the first, the id, is used.
#     Protocols of BENCH_CEILING_PROTOCOLS: prepared is the service's (statements planned for every
#     call, plan_cache_mode = force_custom_plan, as supervisor/db_connection.cpp sets); extended
#     (unnamed statements) for reference. The best over BENCH_CEILING_CLIENTS is the ceiling.
#  3. Latency. bench/latency_driver.cpp commits events one per transaction (outbox_write_event())
#     at a fixed rate (BENCH_RATES) for BENCH_LATENCY_SECONDS into an idle service (1 instance,
#     BENCH_LATENCY_WORKERS handler processes, OUTBOX_ON_COMPLETE=keep, which the completion time
#     needs). Commit-to-handler-start: the handler's own wall clock (BENCH_START_FILE) minus
#     "createdAt"; commit-to-COMPLETED: "processedAt" minus "createdAt". The same for
#     graphile-worker (add_job() per transaction, one process). Peak RSS of every process as well.
#  4. Key latency (SPEC 2a). The driver commits BENCH_KEY_EVENTS events of one ordering key back to
#     back (at BENCH_KEY_RATE per second, from 4 connections, each event its own transaction) into
#     an idle service as in 3; the key's events run one at a time, so most of them wait for the one
#     before. Times are the handler's wall clock at start (BENCH_START_FILE) and commit times from
#     PostgreSQL (track_commit_timestamp, which tests/run_with_postgres.sh turns on): the commit of
#     the event's own write (pg_xact_commit_timestamp of its "EventLog" row) and the commit of the
#     previous event's completion (of its "Outbox" row, last written by that completion in keep
#     mode). Reported: hand-off, from the previous event's completion commit to the start of the
#     next, over the events already written by then (the key's pace when its events queue);
#     due-to-start, from the later of the two commits (when the event could first run) to its
#     start, over every event but the first; commit-to-start, from the event's own commit (waiting
#     behind the earlier ones included); and the key's events per second.
#  5. Brokers (SPEC 4, issue 12). The burn-down of part 1 (the same BENCH_EVENTS events, from the
#     same template, unordered, OUTBOX_ON_COMPLETE=keep, BENCH_INSTANCES x BENCH_WORKERS) worked by
#     the real build/outbox-worker binary with a handlers file of one broker subscriber for
#     "bench.*" (OUTBOX_HANDLERS), for each broker of BENCH_BROKERS, alternating with the no-op
#     burn-down of bench/noop_app: noop, nats, kafka, redis, amqp, noop, ... BENCH_REPEAT times,
#     under every durability setting. Each broker is a throw-away server of this run, on free
#     ports, in the run's work directory, stopped at the end (also on failure):
#       nats   nats-server -js, a stream "bench" capturing "bench.>" with file storage (the
#              server's default sync: the PubAck does not wait for an fsync); subject
#              ${eventType}. A new server for every burn-down.
#       kafka  librdkafka's mock cluster (build/outbox-test-kafka-mock: 3 brokers, in memory),
#              topic "bench" with 6 partitions, replication 3; the producer has acks=all. A new
#              cluster for every burn-down.
#       redis  redis-server with appendonly yes, appendfsync always (XADD answers after the fsync
#              of the append-only file), stream "bench". A new server for every burn-down.
#       amqp   rabbitmq-server (Debian's, with its own epmd, node name, ports and HOME, as
#              tests/support/rabbitmq_server.cpp starts it): a durable topic exchange "bench",
#              a durable classic queue "bench" bound with "#"; messages persistent, mandatory,
#              with publisher confirms. One node for the whole run (it takes seconds to start);
#              the queue is deleted and declared again before every burn-down.
#     bench/broker_setup.cpp (the brokers' own client libraries, not the service's sinks)
#     creates the stream, exchange and queue, and counts afterwards what the broker holds (stream
#     messages, the sum of the topic's high watermarks, XLEN, the queue's length): a run records
#     whether it holds at least BENCH_EVENTS messages, and whether every event was COMPLETED.
#     Recorded as for part 1, plus the CPU time the broker server used during the burn-down (on a
#     machine short of CPU, the CPU per event of PostgreSQL, the service and the broker together
#     is what sets the rate). The summary gives per broker the median events/s and its fraction
#     of the median no-op burn-down of the same series and durability (targets: >= 0.5 for nats
#     and kafka), and the largest peak RSS of a handler process (target < 30 MiB).
#
# Results: one JSON file per run in bench/results/ (machine, PostgreSQL settings, load averages,
# every record, and a summary per durability setting with the targets) and the same summary on
# stdout: per durability setting a burn-down table (events/s, ratio to graphile-worker), the
# ceiling, latency, peak RSS and CPU per event. Every measurement first waits until the 1-minute
# load average is below BENCH_MAX_LOAD (the machine may be shared) and records the load it ran
# under.
#
# Environment (defaults in brackets). The defaults keep a full run near 30 minutes on 2 cores; the
# larger matrix of earlier runs is BENCH_WORKERS="1 2 4" BENCH_INSTANCES="1 2"
# BENCH_CEILING_PROTOCOLS="extended prepared" BENCH_CEILING_CLIENTS="1 2 4".
#   BENCH_EVENTS [100000]         events per burn-down and ceiling run
#   BENCH_DURABILITY ["production relaxed"]  settings measured, in this order; the first is the
#                                 headline
#   BENCH_WORKERS ["2"]           handler processes per instance
#   BENCH_INSTANCES ["1"]         service instances (and graphile-worker processes)
#   BENCH_COMPLETION ["keep delete"]  OUTBOX_ON_COMPLETE of the outbox-worker runs
#   BENCH_ORDERING ["none 10000 100"]  outbox-worker burn-downs: unordered (none) and the events
#                                 spread over N ordering keys
#   BENCH_BATCH [100]             OUTBOX_BATCH_SIZE and the ceiling's claim size
#   BENCH_REPEAT [3]              repetitions of every burn-down and ceiling figure (median reported)
#   BENCH_CEILING_PROTOCOLS ["prepared"] / BENCH_CEILING_CLIENTS ["1 2"]
#   BENCH_RATES ["100 1000"]      latency runs, events per second
#   BENCH_LATENCY_SECONDS [30]
#   BENCH_LATENCY_WORKERS [2]     handler processes in the latency runs
#   BENCH_LATENCY_CONNECTIONS [16]  the driver's connections: each has one commit in flight, so
#                                 with fsync on (a few ms a commit) 2 cannot reach 1,000/s; the
#                                 rate achieved is recorded, and a run that fell short by more than
#                                 5% is flagged and does not count for the target
#   BENCH_KEY_EVENTS [2000] / BENCH_KEY_RATE [1000]  the key-latency run
#   BENCH_PARTS ["outbox graphile burndown ceiling latency keylatency brokers"]: systems
#                                 (outbox, graphile) and measurements (burndown and latency of the
#                                 systems named; ceiling; keylatency and brokers, outbox-worker
#                                 only)
#   BENCH_BROKERS ["nats kafka redis amqp"]  the brokers of part 5, in the order they run
#   BENCH_MAX_LOAD [1.5]          0: do not wait for a quiet machine
#   BENCH_LOAD_POLL_S [30] / BENCH_LOAD_MAX_WAIT_S [3600]
#   BUILD_DIR [build]             where liboutbox.a is (and, for part 5, outbox-worker and
#                                 outbox-test-kafka-mock)
#   BENCH_RESULTS_DIR [bench/results]
#
# A quick trial (a few minutes): BENCH_EVENTS=3000 BENCH_REPEAT=1 BENCH_LATENCY_SECONDS=5
# BENCH_MAX_LOAD=0 bash bench/run.sh
# The brokers alone, with the no-op burn-downs they are compared with: BENCH_PARTS="outbox
# brokers" BENCH_DURABILITY=production bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

durabilities="${BENCH_DURABILITY:-production relaxed}"
for d in $durabilities; do
    case "$d" in
    production | relaxed) ;;
    *)
        echo "bench: BENCH_DURABILITY: unknown setting '$d' (production, relaxed)" >&2
        exit 64
        ;;
    esac
done
read -r headline _ <<<"$durabilities"
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    # The cluster starts in the first setting; the others are switched to by reload.
    PG_DURABILITY="$headline" exec tests/run_with_postgres.sh bash "$0" "$@"
fi

events="${BENCH_EVENTS:-100000}"
workers_list="${BENCH_WORKERS:-2}"
instances_list="${BENCH_INSTANCES:-1}"
completion_list="${BENCH_COMPLETION:-keep delete}"
batch="${BENCH_BATCH:-100}"
rates="${BENCH_RATES:-100 1000}"
latency_seconds="${BENCH_LATENCY_SECONDS:-30}"
latency_workers="${BENCH_LATENCY_WORKERS:-2}"
latency_connections="${BENCH_LATENCY_CONNECTIONS:-16}"
repeat="${BENCH_REPEAT:-3}"
ceiling_protocols="${BENCH_CEILING_PROTOCOLS:-prepared}"
ceiling_clients="${BENCH_CEILING_CLIENTS:-1 2}"
parts="${BENCH_PARTS:-outbox graphile burndown ceiling latency keylatency brokers}"
brokers_list="${BENCH_BROKERS:-nats kafka redis amqp}"
ordering_list="${BENCH_ORDERING:-none 10000 100}"
key_events="${BENCH_KEY_EVENTS:-2000}"
key_rate="${BENCH_KEY_RATE:-1000}"
max_load="${BENCH_MAX_LOAD:-1.5}"
load_poll="${BENCH_LOAD_POLL_S:-30}"
load_max_wait="${BENCH_LOAD_MAX_WAIT_S:-3600}"
build_dir="${BUILD_DIR:-build}"
results_dir="${BENCH_RESULTS_DIR:-bench/results}"
graphile_version=0.17.3

for c in $completion_list; do
    case "$c" in
    keep | delete) ;;
    *)
        echo "bench: BENCH_COMPLETION: unknown mode '$c' (keep, delete)" >&2
        exit 64
        ;;
    esac
done
for o in $ordering_list; do
    if [ "$o" != none ] && ! [[ "$o" =~ ^[1-9][0-9]*$ ]]; then
        echo "bench: BENCH_ORDERING: '$o' is neither none nor a number of keys" >&2
        exit 64
    fi
done
for b in $brokers_list; do
    case "$b" in
    nats | kafka | redis | amqp) ;;
    *)
        echo "bench: BENCH_BROKERS: unknown broker '$b' (nats, kafka, redis, amqp)" >&2
        exit 64
        ;;
    esac
done
for m in $ceiling_protocols; do
    case "$m" in
    prepared | extended) ;;
    *)
        echo "bench: BENCH_CEILING_PROTOCOLS: unknown protocol '$m' (prepared, extended)" >&2
        exit 64
        ;;
    esac
done

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
    if declare -F stop_brokers >/dev/null; then stop_brokers; fi
}
trap cleanup_children EXIT
# A signal ends the script through its EXIT trap, so that no broker server outlives it.
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools --------------------------------------------------------------------------------------

lib="$build_dir/liboutbox.a"
[ -f "$lib" ] || { echo "bench: $lib not found: build first (make build, or set BUILD_DIR)" >&2; exit 1; }
log "building bench/noop_app.cpp, bench/latency_driver.cpp and bench/print_sql.cpp against $lib"
pg_inc=$(pg_config --includedir 2>/dev/null || echo /usr/include/postgresql)
g++ -std=c++20 -O2 -g -I include -I "$pg_inc" bench/noop_app.cpp "$lib" \
    -lpq -luv -lcjson -lspdlog -lfmt -lcurl -lmicrohttpd -lrdkafka -lnats -lrabbitmq -lhiredis -lpthread -o "$bin/noop_app"
g++ -std=c++20 -O2 -g -I "$pg_inc" bench/latency_driver.cpp -lpq -lpthread -o "$bin/latency_driver"
g++ -std=c++20 -O1 -I . bench/print_sql.cpp -o "$bin/print_sql"
app="$bin/noop_app"
driver="$bin/latency_driver"

worker_bin="$build_dir/outbox-worker"
kafka_mock="$build_dir/outbox-test-kafka-mock"
broker_setup="$bin/broker_setup"
if want brokers; then
    missing=()
    [ -x "$worker_bin" ] || missing+=("$worker_bin (make build)")
    for b in $brokers_list; do
        case "$b" in
        nats) command -v nats-server >/dev/null || missing+=(nats-server) ;;
        kafka) [ -x "$kafka_mock" ] || missing+=("$kafka_mock (built with the tests: make build)") ;;
        redis) { command -v redis-server && command -v redis-cli; } >/dev/null || missing+=(redis-server redis-cli) ;;
        amqp) { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v epmd; } >/dev/null || missing+=(rabbitmq-server epmd) ;;
        esac
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "bench: part brokers needs ${missing[*]} (make deps, make build)" >&2
        exit 1
    fi
    log "building bench/broker_setup.cpp"
    g++ -std=c++20 -O2 bench/broker_setup.cpp -lnats -lrabbitmq -lrdkafka -o "$broker_setup"
fi

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

# ---- machine, load, durability, records -----------------------------------------------------------

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

# The setting being measured, and the values a new session of the database under test showed for
# it just before the measurement (set by check_durability, added to every record).
durability=
durability_in_force='null'

durability_value() { # setting name -> on | off
    if [ "$1" = production ]; then echo on; else echo off; fi
}

# What a new session of database $1 shows, as JSON.
show_durability() {
    q "$1" "SELECT json_build_object('fsync', current_setting('fsync'),
                                     'synchronous_commit', current_setting('synchronous_commit'),
                                     'full_page_writes', current_setting('full_page_writes'))"
}

# Switches the cluster to setting $1: all three are reloadable. The reload is asynchronous (the
# postmaster rereads the file when it gets to its SIGHUP), so new sessions are polled until they
# show the new values. The CHECKPOINT then flushes everything written so far, which after
# turning fsync on is what makes the data files durable at all; it also starts every measurement
# of the setting from the same clean state.
set_durability() {
    local v shown expected i
    v=$(durability_value "$1")
    expected=$(jq -nc --arg v "$v" '{fsync: $v, synchronous_commit: $v, full_page_writes: $v}')
    log "durability $1: fsync, synchronous_commit, full_page_writes = $v"
    qpg "ALTER SYSTEM SET fsync = $v" >/dev/null
    qpg "ALTER SYSTEM SET full_page_writes = $v" >/dev/null
    qpg "ALTER SYSTEM SET synchronous_commit = $v" >/dev/null
    qpg "SELECT pg_reload_conf()" >/dev/null
    for i in $(seq 1 100); do
        shown=$(show_durability postgres)
        if jq -e --argjson e "$expected" '. == $e' <<<"$shown" >/dev/null; then
            break
        fi
        if [ "$i" = 100 ]; then
            echo "bench: durability $1 not in force 10 s after the reload: $shown" >&2
            exit 1
        fi
        sleep 0.1
    done
    qpg "CHECKPOINT" >/dev/null
    durability=$1
}

# Checks with SHOW, in a new session of database $1, that the setting being measured is in force,
# and keeps what it showed for the records. Stops the run if not: a figure measured under the
# wrong durability must not be reported under this one.
check_durability() {
    local v shown
    v=$(durability_value "$durability")
    shown=$(show_durability "$1")
    if ! jq -e --arg v "$v" '.fsync == $v and .synchronous_commit == $v and .full_page_writes == $v' \
        <<<"$shown" >/dev/null; then
        echo "bench: durability $durability expected ($v), database $1 shows $shown" >&2
        exit 1
    fi
    durability_in_force=$(jq -c --arg d "$durability" '{setting: $d} + .' <<<"$shown")
}

# Every measurement starts here: the durability check (on the database it measures), then the
# load gate. Sets the caller's `load`.
begin_measurement() {
    check_durability "$1"
    load=$(wait_for_quiet)
}

vmhwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# utime + stime of a live process in seconds; the fields are counted after the command name,
# which is in parentheses and could contain spaces.
cpu_s() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    sed -e 's/^.*) //' <<<"$stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($12 + $13) / hz}'
}
now_s() { date +%s.%N; }

# CPU time of the cluster's processes (the postmaster's children: backends, WAL writer,
# checkpointer, ...), "pid seconds" per line. A backend's time is read while it lives: the
# service's connections are still open when a burn-down's end is detected.
postmaster_pid=
pg_cpu_snapshot() {
    local c
    if [ -z "$postmaster_pid" ]; then
        postmaster_pid=$(head -n 1 "$(qpg "SHOW data_directory")/postmaster.pid")
    fi
    for c in $(pgrep -P "$postmaster_pid" || true); do echo "$c $(cpu_s "$c")"; done
}
# Seconds the cluster's processes used between two snapshots (processes new in the second count
# whole).
pg_cpu_delta() { # before after
    awk 'NR == FNR { before[$1] = $2; next } { s += $2 - (before[$1] + 0) } END { printf "%.2f\n", s }' \
        <(echo "$1") <(echo "$2")
}
record() { jq -c --argjson d "$durability_in_force" '. + {durability: $d}' <<<"$1" >>"$records"; }

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
    check_durability outbox_full
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
    local o
    for o in $ordering_list; do
        if [ "$o" != none ]; then prepare_ordered_template "$o"; fi
    done
}

# outbox_ord_N: the same number of no-op events as outbox_full, spread over N ordering keys
# (event i has "key-<i mod N>"), written through outbox_write_event() with the ordering key in
# transactions of 10,000.
prepare_ordered_template() { # keys
    local keys=$1 db="outbox_ord_$1" t0 t1 from to
    drop_db "$db"
    qpg "CREATE DATABASE $db TEMPLATE outbox_empty" >/dev/null
    log "template $db: $events events over $keys ordering keys"
    check_durability "$db"
    t0=$(now_s)
    for ((from = 1; from <= events; from += 10000)); do
        to=$((from + 9999 < events ? from + 9999 : events))
        q "$db" "SELECT count(*) FROM generate_series($from, $to) g,
                     LATERAL outbox_write_event('ord-' || g, 'default', 'bench.noop', '{}'::jsonb,
                                                NULL, NULL, NULL, NULL, 'key-' || (g % $keys)) w" >/dev/null
    done
    t1=$(now_s)
    q "$db" 'VACUUM ANALYZE' >/dev/null
    q "$db" 'CHECKPOINT' >/dev/null
    record "$(jq -nc --argjson n "$events" --argjson k "$keys" --argjson s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        '{kind: "enqueue", system: "outbox-worker", ordering_keys: $k,
          method: "outbox_write_event() with an ordering key, 10,000 per transaction",
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
    check_durability gw_full
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

# ---- broker servers (part 5) ----------------------------------------------------------------------

# Throw-away servers in the run's work directory, on free ports. nats, redis and kafka are started
# for one burn-down and stopped after it (broker_release); the RabbitMQ node, which takes seconds
# to start, lives from its first burn-down to the end of the run. stop_brokers (the EXIT trap)
# stops whatever is still running.
brokers_dir="$work/brokers"
declare -A broker_pid=() # kind -> pid of its server (amqp: the start script, its group's leader)
declare -A broker_url=() # kind -> what the handlers file points at
broker_server_pid=       # the process whose CPU time is the server's (amqp: the Erlang VM)
broker_runs=0
kafka_fd=
rabbit_epmd_pid=
rabbit_user=bench
rabbit_password="bench-secret-$$"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until file $1 contains the text $3, for at most $2 seconds and while process $4 lives.
wait_for_text() { # file seconds text pid
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if grep -q -F -- "$3" "$1" 2>/dev/null; then return 0; fi
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

broker_failed() { # kind log-file what
    echo "bench: $1: $3; the end of $2:" >&2
    tail -n 30 "$2" >&2 || true
    exit 1
}

# The handlers file of the burn-down: one subscriber of kind $1 for "bench.*".
write_handlers() { # kind json-of-the-kind's-object
    jq -n --arg kind "$1" --argjson spec "$2" \
        '[{name: "bench-\($kind)", eventTypes: ["bench.*"]} + {($kind): $spec}]' >"$work/handlers-$1.json"
}

nats_start() {
    local dir="$brokers_dir/nats-$broker_runs" port
    mkdir -p "$dir"
    port=$(free_port)
    nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir/store" 2>"$dir/server.log" &
    broker_pid[nats]=$!
    broker_server_pid=${broker_pid[nats]}
    wait_for_text "$dir/server.log" 15 "Server is ready" "$broker_server_pid" ||
        broker_failed nats "$dir/server.log" "nats-server did not start"
    broker_url[nats]="nats://127.0.0.1:$port"
    "$broker_setup" nats-stream "${broker_url[nats]}" bench 'bench.>'
    write_handlers nats "$(jq -nc --arg url "${broker_url[nats]}" '{url: $url, subject: "${eventType}"}')"
}

redis_start() {
    local dir="$brokers_dir/redis-$broker_runs" port
    mkdir -p "$dir"
    port=$(free_port)
    # As tests/support/redis_server.cpp: every write is in the fsynced append-only file before
    # the reply; no RDB snapshots.
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always \
        --save "" --daemonize no --logfile "" >"$dir/server.log" 2>&1 &
    broker_pid[redis]=$!
    broker_server_pid=${broker_pid[redis]}
    wait_for_text "$dir/server.log" 15 "Ready to accept connections" "$broker_server_pid" ||
        broker_failed redis "$dir/server.log" "redis-server did not start"
    broker_url[redis]="redis://127.0.0.1:$port/0"
    write_handlers redis "$(jq -nc --arg url "${broker_url[redis]}" '{url: $url, stream: "bench"}')"
}

kafka_start() {
    local dir="$brokers_dir/kafka-$broker_runs"
    mkdir -p "$dir"
    mkfifo "$dir/stdin"
    # The mock cluster runs until its stdin ends: the script holds the FIFO open (kafka_fd) and
    # closes it to stop the cluster. Opening either end waits for the other.
    "$kafka_mock" --brokers 3 bench:6 <"$dir/stdin" >"$dir/stdout" 2>"$dir/server.log" &
    broker_pid[kafka]=$!
    broker_server_pid=${broker_pid[kafka]}
    exec {kafka_fd}>"$dir/stdin"
    wait_for_text "$dir/stdout" 15 ":" "$broker_server_pid" ||
        broker_failed kafka "$dir/server.log" "the mock cluster did not print its bootstrap servers"
    broker_url[kafka]=$(head -n 1 "$dir/stdout")
    write_handlers kafka "$(jq -nc --arg b "${broker_url[kafka]}" '{brokers: $b, topic: "bench"}')"
}

# As tests/support/rabbitmq_server.cpp: the real start script (not /usr/sbin/rabbitmq-server,
# which switches to the rabbitmq user), an epmd of our own in the foreground (started by the node
# it would daemonize and outlive the run), a unique node name, and configuration, data, logs and
# HOME (the Erlang cookie) in the work directory. setsid makes the start script the leader of a
# process group holding the Erlang VM, so that the whole node can be killed at once.
amqp_start() {
    local dir="$brokers_dir/rabbitmq" amqp_port dist_port epmd_port i
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log" "$dir/plugins-expand"
    amqp_port=$(free_port)
    dist_port=$(free_port)
    epmd_port=$(free_port)
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$amqp_port
default_user = $rabbit_user
default_pass = $rabbit_password
loopback_users = none
disk_free_limit.absolute = 1MB
log.console = false
log.file.level = warning
EOF
    echo "[]." >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    epmd -port "$epmd_port" -address 127.0.0.1 2>"$dir/epmd.log" &
    rabbit_epmd_pid=$!
    log "starting rabbitmq-server (node bench-$$@localhost, AMQP port $amqp_port)"
    (cd "$dir" && exec env -u RABBITMQ_NODE_ONLY -u RABBITMQ_ALLOW_INPUT -u NOTIFY_SOCKET \
        HOME="$dir/home" RABBITMQ_NODENAME="bench-$$@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$amqp_port" RABBITMQ_DIST_PORT="$dist_port" ERL_EPMD_PORT="$epmd_port" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand" \
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false" \
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/stdout" 2>&1) &
    broker_pid[amqp]=$!
    broker_url[amqp]="amqp://$rabbit_user:$rabbit_password@127.0.0.1:$amqp_port/"
    # Up when a login works and the exchange and queue can be declared; a loaded machine may take
    # a minute or more.
    for ((i = 0; i < 1800; i++)); do
        if "$broker_setup" amqp-queue "${broker_url[amqp]}" bench bench "#" 2>/dev/null; then break; fi
        kill -0 "${broker_pid[amqp]}" 2>/dev/null || broker_failed amqp "$dir/stdout" "rabbitmq-server exited"
        sleep 0.1
    done
    "$broker_setup" amqp-queue "${broker_url[amqp]}" bench bench "#" ||
        broker_failed amqp "$dir/log/bench-$$@localhost.log" "rabbitmq-server did not accept AMQP in time"
    write_handlers amqp "$(jq -nc --arg url "${broker_url[amqp]}" '{url: $url, exchange: "bench", routingKey: "${eventType}"}')"
}

# Starts (or, for RabbitMQ, empties) the server of kind $1 and writes its handlers file. Sets
# broker_server_pid.
broker_prepare() { # kind
    broker_runs=$((broker_runs + 1))
    case "$1" in
    nats) nats_start ;;
    redis) redis_start ;;
    kafka) kafka_start ;;
    amqp)
        if [ -z "${broker_pid[amqp]:-}" ]; then
            amqp_start
        else
            "$broker_setup" amqp-queue "${broker_url[amqp]}" bench bench "#"
        fi
        broker_server_pid=$(pgrep -g "${broker_pid[amqp]}" beam.smp | head -n 1 || true)
        ;;
    esac
}

# What the broker holds now: messages in the stream, the sum of the topic's high watermarks,
# XLEN, the queue's length.
broker_count() { # kind
    case "$1" in
    nats) "$broker_setup" nats-count "${broker_url[nats]}" bench ;;
    kafka) "$broker_setup" kafka-count "${broker_url[kafka]}" bench ;;
    redis) redis-cli -u "${broker_url[redis]}" XLEN bench ;;
    amqp) "$broker_setup" amqp-count "${broker_url[amqp]}" bench ;;
    esac
}

broker_stop() { # kind
    local pid=${broker_pid[$1]:-}
    if [ -z "$pid" ]; then return 0; fi
    case "$1" in
    amqp)
        # A throw-away node: killed, not shut down (its data goes with the work directory).
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        if [ -n "$rabbit_epmd_pid" ]; then
            kill -TERM "$rabbit_epmd_pid" 2>/dev/null || true
            wait "$rabbit_epmd_pid" 2>/dev/null || true
            rabbit_epmd_pid=
        fi
        ;;
    kafka)
        if [ -n "$kafka_fd" ]; then
            exec {kafka_fd}>&-
            kafka_fd=
        fi
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        ;;
    *)
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        ;;
    esac
    unset "broker_pid[$1]"
}

# The server and the durability of its acknowledgement, for the records.
broker_server_description() { # kind
    case "$1" in
    nats) echo "$(nats-server --version): JetStream stream with file storage and the server's default sync (fsync on a timer, sync_interval 2 min by default; the PubAck does not wait for it)" ;;
    kafka) echo "librdkafka $(pkg-config --modversion rdkafka 2>/dev/null || echo '?') mock cluster, 3 brokers, in memory; topic of 6 partitions, replication 3; producer acks=all, idempotent" ;;
    redis) echo "$(redis-server --version | cut -d' ' -f1-3): appendonly yes, appendfsync always (XADD answers after the fsync)" ;;
    amqp) echo "rabbitmq-server $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?'): durable topic exchange, durable classic queue; persistent messages, mandatory, publisher confirms" ;;
    esac
}

# After a burn-down: the servers started for it go (RabbitMQ stays).
broker_release() { # kind
    if [ "$1" != amqp ]; then broker_stop "$1"; fi
}

stop_brokers() {
    local kind
    for kind in "${!broker_pid[@]}"; do broker_stop "$kind"; done
}

# ---- burn-down: outbox-worker ---------------------------------------------------------------------

# Part 1, and part 5 when a sink is given: noop (bench/noop_app, as part 1, but recorded as the
# brokers' baseline) or a broker kind (build/outbox-worker with that broker's handlers file).
outbox_burndown() { # instances workers completion repetition ordering(none|keys) [sink]
    local inst=$1 w=$2 completion=$3 rep=$4 ordering=${5:-none} sink=${6:-} db="bd_outbox" k url load template=outbox_full
    if [ "$ordering" != none ]; then template="outbox_ord_$ordering"; fi
    new_db "$db" "$template"
    url=$(db_url "$db")
    local program=("$app") handlers="" what="outbox-worker $completion"
    if [ -n "$sink" ] && [ "$sink" != noop ]; then
        broker_prepare "$sink"
        program=("$worker_bin")
        handlers="$work/handlers-$sink.json"
        what="outbox-worker $completion -> $sink"
    elif [ "$sink" = noop ]; then
        what="outbox-worker $completion (no-op, beside the brokers)"
    fi
    local x0 x1
    x0=$(xact_commits "$db")
    begin_measurement "$db"
    log "burn-down $what$(if [ "$ordering" != none ]; then echo ", $ordering ordering keys"; fi): $inst instance(s) x $w handler processes ($durability, run $rep): load $(jq -r .load1 <<<"$load")"
    local pids=() t_launch t_done logf="$work/outbox-$durability-$completion-$ordering-$inst-$w-$rep${sink:+-$sink}.log"
    local server_cpu0=0 server_cpu1=0 pg_cpu0 pg_cpu1
    if [ -n "$handlers" ]; then server_cpu0=$(cpu_s "$broker_server_pid"); fi
    pg_cpu0=$(pg_cpu_snapshot)
    t_launch=$(now_s)
    for ((k = 1; k <= inst; k++)); do
        DATABASE_URL="$url" OUTBOX_WORKERS="$w" OUTBOX_BATCH_SIZE="$batch" OUTBOX_ON_COMPLETE="$completion" \
            OUTBOX_HTTP_PORT=0 OUTBOX_METRICS_LOG_INTERVAL_MS=0 OUTBOX_INSTANCE_ID="bench-$k" LOG_LEVEL=warn \
            env ${handlers:+"OUTBOX_HANDLERS=$handlers"} "${program[@]}" run 2>>"$logf" &
        pids+=($!)
        children+=($!)
    done
    # Done in both modes when no event is left to do: in keep mode the rows are COMPLETED, in
    # delete mode they are gone.
    t_done=$(DATABASE_URL="$url" "$driver" wait --interval-ms 50 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))")
    pg_cpu1=$(pg_cpu_snapshot)
    if [ -n "$handlers" ]; then server_cpu1=$(cpu_s "$broker_server_pid"); fi
    local sup_kb=() handler_kb=() sup_cpu=() handler_cpu=() p c
    for p in "${pids[@]}"; do
        sup_kb+=("$(vmhwm_kb "$p")")
        sup_cpu+=("$(cpu_s "$p")")
        for c in $(pgrep -P "$p" || true); do
            handler_kb+=("$(vmhwm_kb "$c")")
            handler_cpu+=("$(cpu_s "$c")")
        done
    done
    for p in "${pids[@]}"; do kill -TERM "$p"; done
    for p in "${pids[@]}"; do wait "$p" || log "instance $p exited with $?"; done
    children=()
    x1=$(xact_commits "$db")
    # A success leaves a COMPLETED row in keep mode and no row in delete mode: "completed" counts
    # both. Retries and the "processedAt" percentiles are only known of rows that are still there.
    local stats
    stats=$(q "$db" "SELECT json_build_object(
        'rows_left', count(*),
        'completed', count(*) FILTER (WHERE \"status\" = 'COMPLETED') + ($events - count(*)),
        'not_completed', count(*) FILTER (WHERE \"status\" <> 'COMPLETED'),
        'retried', count(*) FILTER (WHERE \"retryCount\" > 0),
        'p10', extract(epoch FROM percentile_disc(0.1) WITHIN GROUP (ORDER BY \"processedAt\")),
        'p90', extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY \"processedAt\")),
        'first', extract(epoch FROM min(\"processedAt\")),
        'last', extract(epoch FROM max(\"processedAt\")))
        FROM \"Outbox\"")
    # Part 5: what the broker holds (counted, not read), and the server's CPU time.
    local broker='null'
    if [ -n "$handlers" ]; then
        local held
        held=$(broker_count "$sink")
        broker=$(jq -nc --arg kind "$sink" --argjson held "$held" --argjson n "$events" \
            --argjson c0 "$server_cpu0" --argjson c1 "$server_cpu1" --arg server "$(broker_server_description "$sink")" '
            {kind: $kind, server: $server, messages_held: $held, holds_every_event: ($held >= $n),
             server_cpu_s: ($c1 - $c0 | . * 100 | round / 100),
             server_cpu_us_per_event: (($c1 - $c0) * 1e6 / $n * 10 | round / 10)}')
        broker_release "$sink"
    fi
    record "$(jq -nc --argjson stats "$stats" --argjson load "$load" --arg load_end "$(loadavg)" \
        --argjson n "$events" --argjson inst "$inst" --argjson w "$w" --argjson rep "$rep" --argjson batch "$batch" \
        --arg completion "$completion" --arg dur "$durability" --arg ordering "$ordering" \
        --arg sink "$sink" --argjson broker "$broker" --arg brokers "$brokers_list" \
        --argjson pg_cpu "$(pg_cpu_delta "$pg_cpu0" "$pg_cpu1")" \
        --argjson t0 "$t_launch" --argjson t1 "$t_done" --argjson xacts "$((x1 - x0))" \
        --arg sup "${sup_kb[*]}" --arg hand "${handler_kb[*]}" --arg sup_cpu "${sup_cpu[*]}" \
        --arg hand_cpu "${handler_cpu[*]}" --arg warnings "$(grep -c . "$logf" || true)" \
        --arg log_head "$(head -n 3 "$logf" 2>/dev/null | cut -c1-300)" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        def nums: [splits(" ") | select(. != "") | tonumber];
        def per_event_us: (. * 1e6 / $n * 10 | round / 10);
        ($completion == "keep" and $stats.p10 != null and $stats.p90 != null and $stats.p90 > $stats.p10) as $has_steady |
        {kind: "burndown", system: "outbox-worker", completion: $completion,
         ordering_keys: (if $ordering == "none" then null else ($ordering | tonumber) end), instances: $inst,
         handler_processes_per_instance: $w, batch: $batch, repetition: $rep, events: $n,
         seconds: ($t1 - $t0), events_per_s: ($n / ($t1 - $t0)),
         steady_events_per_s: (if $has_steady then 0.8 * $n / ($stats.p90 - $stats.p10) else null end),
         first_completion_after_launch_s: (if $completion == "keep" and $stats.first != null then $stats.first - $t0 else null end),
         last_completion_before_detection_s: (if $completion == "keep" and $stats.last != null then $t1 - $stats.last else null end),
         completed: $stats.completed, not_completed: $stats.not_completed, rows_left: $stats.rows_left,
         retried: (if $completion == "keep" then $stats.retried else null end),
         transactions: $xacts, events_per_transaction: ($n / $xacts),
         peak_rss_mib: {supervisor: [$sup | splits(" ") | select(. != "") | kb2mib],
                        handler_processes: [$hand | splits(" ") | select(. != "") | kb2mib]},
         cpu_s: {supervisor: ($sup_cpu | nums), handler_processes: ($hand_cpu | nums), postgres: $pg_cpu},
         cpu_us_per_event: {supervisor: ($sup_cpu | nums | add // 0 | per_event_us),
                            handler_processes: ($hand_cpu | nums | add // 0 | per_event_us),
                            postgres: ($pg_cpu | per_event_us)},
         log_lines_warn_or_error: ($warnings | tonumber),
         log_first_lines: (if $log_head == "" then null else [$log_head | splits("\n")] end),
         load_at_start: $load, load_at_end: $load_end,
         command: (if $sink == ""
             then "BENCH_DURABILITY=\($dur) BENCH_PARTS=\"outbox burndown\" BENCH_COMPLETION=\($completion) BENCH_ORDERING=\($ordering) BENCH_INSTANCES=\($inst) BENCH_WORKERS=\($w) BENCH_EVENTS=\($n) bash bench/run.sh"
             else "BENCH_DURABILITY=\($dur) BENCH_PARTS=\"outbox brokers\" BENCH_BROKERS=\"\($brokers)\" BENCH_INSTANCES=\($inst) BENCH_WORKERS=\($w) BENCH_EVENTS=\($n) bash bench/run.sh" end)}
        + (if $sink == "" then {} else {part: "brokers", sink: $sink, broker: $broker} end)')"
    log "  -> $(tail -n 1 "$records" | jq -r '"\(.events_per_s | round) events/s (steady \(.steady_events_per_s // "-" | if type == "number" then round else . end)), \(.events_per_transaction * 10 | round / 10) events per transaction, supervisor \(.peak_rss_mib.supervisor) MiB \(.cpu_us_per_event.supervisor) µs/event, handlers \(.peak_rss_mib.handler_processes) MiB \(.cpu_us_per_event.handler_processes) µs/event, postgres \(.cpu_us_per_event.postgres) µs/event\(if .broker then ", \(.broker.kind) server \(.broker.server_cpu_us_per_event) µs/event, holds \(.broker.messages_held) messages" else "" end)"')"
    if [ "$(tail -n 1 "$records" | jq '.broker.holds_every_event // true')" != true ]; then
        log "  !! the broker holds only $(tail -n 1 "$records" | jq .broker.messages_held) messages"
    fi
    if [ "$(tail -n 1 "$records" | jq .not_completed)" != 0 ]; then
        log "  !! $(tail -n 1 "$records" | jq .not_completed) events not completed (see $logf)"
    fi
    drop_db "$db"
}

# ---- burn-down: graphile-worker --------------------------------------------------------------------

graphile_burndown() { # instances repetition
    local inst=$1 rep=$2 db="bd_gw" k url load
    new_db "$db" gw_full
    url=$(db_url "$db")
    local x0 x1
    x0=$(xact_commits "$db")
    begin_measurement "$db"
    log "burn-down graphile-worker: $inst process(es) ($durability, run $rep): load $(jq -r .load1 <<<"$load")"
    local pids=() t_launch t_done logf="$work/graphile-$durability-$inst-$rep.log"
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
    local rss_kb=() cpu=() p
    for p in "${pids[@]}"; do
        rss_kb+=("$(vmhwm_kb "$p")")
        cpu+=("$(cpu_s "$p")")
    done
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
        --argjson ready "$ready" --arg rss "${rss_kb[*]}" --arg cpu "${cpu[*]}" --argjson xacts "$((x1 - x0))" \
        --arg dur "$durability" --arg warnings "$(grep -c . "$logf" || true)" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        def nums: [splits(" ") | select(. != "") | tonumber];
        {kind: "burndown", system: "graphile-worker", instances: $inst,
         settings: "concurrentJobs 24, maxPoolSize 25, localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0",
         repetition: $rep, events: $n, seconds: ($t1 - $t0), events_per_s: ($n / ($t1 - $t0)),
         steady_events_per_s: (if $steady > 0 then $steady else null end),
         runner_ready_after_launch_s: (if $ready > 0 then $ready - $t0 else null end),
         transactions: $xacts, events_per_transaction: ($n / $xacts),
         peak_rss_mib: {node_processes: [$rss | splits(" ") | select(. != "") | kb2mib]},
         cpu_s: {node_processes: ($cpu | nums)},
         cpu_us_per_event: {node_processes: ($cpu | nums | add // 0 | . * 1e6 / $n * 10 | round / 10)},
         log_lines_warn_or_error: ($warnings | tonumber),
         load_at_start: $load, load_at_end: $load_end,
         command: "BENCH_DURABILITY=\($dur) BENCH_PARTS=\"graphile burndown\" BENCH_INSTANCES=\($inst) BENCH_EVENTS=\($n) bash bench/run.sh"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"\(.events_per_s | round) events/s (steady \(.steady_events_per_s // "-" | if type == "number" then round else . end)), \(.events_per_transaction * 10 | round / 10) events per transaction, node \(.peak_rss_mib.node_processes) MiB \(.cpu_us_per_event.node_processes) µs/event"')"
    drop_db "$db"
}

# ---- ceiling: the service's statements under pgbench --------------------------------------------

# Substitutes the statement's numbered parameters with pgbench variables: $1 (the first word) for
# $1, and so on. Stops if the statement has a parameter beyond the names given, which means the
# service's statement changed shape and this script must follow.
bind_parameters() { # statement-name name-of-$1 name-of-$2 ...
    local name=$1 sql n used
    shift
    sql=$("$bin/print_sql" "$name")
    used=$(grep -o '\$[0-9]\+' <<<"$sql" | tr -d '$' | sort -n -u | tail -n 1 || true)
    if [ -n "$used" ] && [ "$used" -gt $# ]; then
        echo "bench: $name takes \$$used, the ceiling script binds only \$1..\$$# ($*)" >&2
        exit 1
    fi
    # From the highest number down, so that $1 does not eat the start of $10.
    for ((n = $#; n >= 1; n--)); do
        sql=${sql//\$$n/:${!n}}
    done
    echo "$sql"
}

# The result statement of each completion mode's ceiling script (set by write_ceiling_script).
declare -A ceiling_statement=()

# The statement the service sends to record a batch of successes in completion mode $1: the
# success-only statement where supervisor/queries.h has one (print_sql exits 3 where it has not),
# else the general result statement. Prints its name and the names of the pgbench variables bound
# to its parameters.
results_statement() {
    local success_only general
    if [ "$1" = keep ]; then
        success_only=kRecordSuccesses general=kRecordResults
    else
        success_only=kDeleteSuccesses general=kRecordResultsDelete
    fi
    if "$bin/print_sql" "$success_only" >/dev/null 2>&1; then
        echo "$success_only ids tokens"
    else
        echo "$general ids tokens kinds errors delays"
    fi
}

write_ceiling_script() { # completion -> path of the script
    local completion=$1 results_stmt results_vars out="$work/ceiling-$1.sql"
    read -r results_stmt results_vars <<<"$(results_statement "$completion")"
    ceiling_statement[$completion]=$results_stmt
    {
        echo "-- Generated by bench/run.sh from supervisor/queries.h (bench/print_sql.cpp): the service's claim,"
        echo "-- then its result statement ($results_stmt, OUTBOX_ON_COMPLETE=$completion) for every claimed id"
        echo '-- (success); each its own implicit transaction, as in the service.'
        echo '\set token random(1, 1000000000000000)'
        # Only the first column, the id, is used (rows without one, if the claim returns any, are
        # no events; a parked candidate is returned too and simply not completed, as its lease
        # token does not match). Each claimed row is also turned into text
        # (claimed_row_bytes), so that PostgreSQL produces every column as the service receives
        # it, whatever the claim returns. The claim has data-modifying CTEs of its own, which
        # PostgreSQL allows only at the top level: its main query becomes one more CTE of its own
        # WITH (claim_result), after the line ")" that closes its last CTE.
        # pgbench takes every ":name" for a variable, even inside a string literal: the two colons
        # of the to_char() format are spelled chr(58), which the planner folds into the same constant.
        bind_parameters kClaim owner batch patterns token lease_ms |
            sed -e "s/HH24:MI:SS/HH24' || chr(58) || 'MI' || chr(58) || 'SS/" |
            awk '{ line[NR] = $0; if ($0 == ")") last = NR }
                 END {
                     if (!last) { print "bench: kClaim has no CTE to extend" > "/dev/stderr"; exit 1 }
                     for (i = 1; i <= last; i++) print line[i]
                     print ", claim_result AS ("
                     for (i = last + 1; i <= NR; i++) print line[i]
                     print ")"
                 }'
        echo "SELECT COALESCE(array_agg(id), '{}') AS ids, COALESCE(array_agg(:token::bigint), '{}') AS tokens,"
        echo "       COALESCE(array_agg(0), '{}') AS kinds, COALESCE(array_agg(NULL::text), '{}') AS errors,"
        echo "       COALESCE(array_agg(0::bigint), '{}') AS delays, sum(octet_length(c::text)) AS claimed_row_bytes"
        echo '  FROM claim_result c WHERE c.id IS NOT NULL'
        echo '\gset'
        # shellcheck disable=SC2086 # the variable names are words
        bind_parameters "$results_stmt" $results_vars
        echo ';'
    } >"$out"
    # Any other ":name" would be taken for an undefined variable by pgbench: say which.
    local stray
    stray=$(grep -v '^--' "$out" | grep -o '\(^\|[^:]\):[A-Za-z_][A-Za-z0-9_]*' | sed -e 's/^.*://' | sort -u |
        grep -v -x -e owner -e batch -e patterns -e token -e lease_ms -e ids -e tokens -e kinds -e errors -e delays || true)
    if [ -n "$stray" ]; then
        echo "bench: the ceiling script $out has colons pgbench would take for variables: $stray" >&2
        exit 1
    fi
    echo "$out"
}

ceiling() { # protocol clients completion repetition
    local mode=$1 c=$2 completion=$3 rep=$4 db="ceil_outbox" load per_client out tps completed script
    script="$work/ceiling-$completion.sql"
    new_db "$db" outbox_full
    begin_measurement "$db"
    per_client=$(((events / batch + c - 1) / c))
    log "ceiling $completion: pgbench -M $mode -c $c -t $per_client ($durability, run $rep): load $(jq -r .load1 <<<"$load")"
    local session_options=""
    if [ "$mode" = prepared ]; then
        session_options="-c plan_cache_mode=force_custom_plan" # as supervisor/db_connection.cpp
    fi
    out=$(PGOPTIONS="${PGOPTIONS:-} $session_options" \
        pgbench -n -M "$mode" -c "$c" -j "$c" -t "$per_client" -f "$script" \
        -D owner=pgbench-ceiling -D batch="$batch" -D patterns='{bench.%}' -D lease_ms=30000 \
        "$(db_url "$db")" 2>&1) || { echo "$out" >&2; exit 1; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
    # Successes: COMPLETED rows (keep) and rows gone (delete).
    completed=$(q "$db" "SELECT count(*) FILTER (WHERE \"status\" = 'COMPLETED') + ($events - count(*)) FROM \"Outbox\"")
    record "$(jq -nc --argjson tps "$tps" --argjson completed "$completed" --argjson tx "$((per_client * c))" \
        --argjson c "$c" --arg mode "$mode" --arg completion "$completion" --argjson rep "$rep" --argjson load "$load" \
        --arg load_end "$(loadavg)" --argjson n "$events" --argjson batch "$batch" --argjson per "$per_client" \
        --arg opts "$session_options" --arg dur "$durability" --arg stmt "${ceiling_statement[$completion]}" '
        {kind: "ceiling", system: "pgbench (service statements)", completion: $completion,
         statements: ["kClaim", $stmt], protocol: $mode,
         clients: $c, repetition: $rep, batch: $batch, transactions: $tx, tps: $tps, completed: $completed,
         events_per_s: ($tps * $completed / $tx), load_at_start: $load, load_at_end: $load_end,
         session_options: $opts,
         command: "BENCH_DURABILITY=\($dur) BENCH_PARTS=ceiling BENCH_CEILING_PROTOCOLS=\($mode) BENCH_CEILING_CLIENTS=\($c) BENCH_COMPLETION=\($completion) BENCH_EVENTS=\($n) bash bench/run.sh  (PGOPTIONS=\"\($opts)\" pgbench -n -M \($mode) -c \($c) -j \($c) -t \($per) -f ceiling-\($completion).sql)"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"\(.events_per_s | round) events/s (\(.completed) completed)"')"
    drop_db "$db"
}

# ---- latency ---------------------------------------------------------------------------------------

# Percentiles in SQL. $1: outbox | graphile. The start and ack files replace :'starts' and :'acks'.
latency_stats_sql() {
    local table id_type
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
    local system=$1 rate=$2 db="lat_$1" pid url load starts acks drive stats logf
    starts="$work/starts-$durability-$system-$rate"
    acks="$work/acks-$durability-$system-$rate"
    logf="$work/latency-$durability-$system-$rate.log"
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
        DATABASE_URL="$url" OUTBOX_WORKERS="$latency_workers" OUTBOX_BATCH_SIZE="$batch" OUTBOX_ON_COMPLETE=keep \
            OUTBOX_HTTP_PORT=0 OUTBOX_METRICS_LOG_INTERVAL_MS=0 OUTBOX_INSTANCE_ID=bench-latency LOG_LEVEL=warn \
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
    begin_measurement "$db"
    log "latency $system: $rate events/s for ${latency_seconds}s ($durability): load $(jq -r .load1 <<<"$load")"
    drive=$(DATABASE_URL="$url" "$driver" emit --system "$system" --rate "$rate" --seconds "$latency_seconds" \
        --connections "$latency_connections" --ack-file "$acks")
    local done_sql
    if [ "$system" = outbox ]; then
        done_sql="SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))"
    else
        done_sql="SELECT NOT EXISTS (SELECT 1 FROM graphile_worker._private_jobs)"
    fi
    DATABASE_URL="$url" "$driver" wait --interval-ms 100 --timeout-s 300 --sql "$done_sql" >/dev/null
    local sup_kb handler_kb=() c
    sup_kb=$(vmhwm_kb "$pid")
    for c in $(pgrep -P "$pid" || true); do handler_kb+=("$(vmhwm_kb "$c")"); done
    kill -TERM "$pid"
    wait "$pid" || true
    children=()
    # \copy takes its line as it is (no psql variables): the paths go in literally.
    stats=$(latency_stats_sql "$system" | sed -e "s|:'starts'|'$starts'|" -e "s|:'acks'|'$acks'|" |
        psql "$url" -X -q -At -v ON_ERROR_STOP=1)
    record "$(jq -nc --argjson stats "$stats" --argjson drive "$drive" --argjson load "$load" --arg load_end "$(loadavg)" \
        --arg system "$system" --argjson rate "$rate" --argjson secs "$latency_seconds" --argjson w "$latency_workers" \
        --arg sup "$sup_kb" --arg hand "${handler_kb[*]}" --arg dur "$durability" --argjson batch "$batch" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        {kind: "latency", system: (if $system == "outbox" then "outbox-worker" else "graphile-worker" end),
         rate: $rate, seconds: $secs,
         setup: (if $system == "outbox" then "1 instance, \($w) handler processes, batch \($batch), OUTBOX_ON_COMPLETE=keep"
                 else "1 process, concurrentJobs 24, localQueue.size 500, completeJobBatchDelay 0" end),
         driver: $drive, rate_achieved: ($drive.achieved_rate >= 0.95 * $rate)} + $stats +
        {peak_rss_mib: (if $system == "outbox"
                        then {supervisor: [$sup | kb2mib], handler_processes: [$hand | splits(" ") | select(. != "") | kb2mib]}
                        else {node_processes: [$sup | kb2mib]} end),
         load_at_start: $load, load_at_end: $load_end,
         command: "BENCH_DURABILITY=\($dur) BENCH_PARTS=\"\($system) latency\" BENCH_RATES=\($rate) bash bench/run.sh"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"start p50/p95/p99/max \(.commit_to_start_ms.p50)/\(.commit_to_start_ms.p95)/\(.commit_to_start_ms.p99)/\(.commit_to_start_ms.max) ms; completed p50/p99 \(.commit_to_completed_ms.p50)/\(.commit_to_completed_ms.p99) ms"')"
    drop_db "$db"
}

# ---- key latency (SPEC 2a) -------------------------------------------------------------------------

# Percentiles of one key's hand-off, from the start file (replaces :'starts'). Commit times come
# from PostgreSQL (track_commit_timestamp): of the "EventLog" row (the event's write, never
# updated) and of the "Outbox" row (in keep mode, last written by the event's completion).
key_latency_stats_sql() {
    cat <<'EOF'
CREATE TEMP TABLE starts (id text, start_us bigint);
\copy starts FROM :'starts' WITH (FORMAT text, DELIMITER ' ')
WITH s AS (SELECT id, min(start_us) AS start_us, count(*) AS n FROM starts GROUP BY id),
ev AS (SELECT o."id", o."orderingKey" AS k, o."orderingSeq" AS seq,
              extract(epoch FROM pg_xact_commit_timestamp(e.xmin)) * 1e6 AS write_us,
              extract(epoch FROM pg_xact_commit_timestamp(o.xmin)) * 1e6 AS done_us,
              extract(epoch FROM o."processedAt") * 1e6 AS processed_us
         FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId"
        WHERE o."eventType" = 'bench.keylatency'),
j AS (SELECT ev.*, s.start_us, s.n,
             lag(done_us) OVER w AS prev_done_us, lag(processed_us) OVER w AS prev_processed_us
        FROM ev JOIN s ON s.id = ev."id"
      WINDOW w AS (PARTITION BY k ORDER BY write_us, seq)),
l AS (SELECT (start_us - prev_done_us) / 1000.0 AS handoff_ms,
             (start_us - prev_processed_us) / 1000.0 AS handoff_from_processed_at_ms,
             (start_us - greatest(write_us, prev_done_us)) / 1000.0 AS due_to_start_ms,
             (start_us - write_us) / 1000.0 AS commit_to_start_ms,
             write_us < prev_done_us AS waited, start_us, n
        FROM j WHERE prev_done_us IS NOT NULL)
SELECT json_build_object(
  'events', (SELECT count(*) FROM ev), 'events_measured', count(*),
  'delivered_more_than_once', count(*) FILTER (WHERE n > 1),
  'commit_times_missing', (SELECT count(*) FROM ev WHERE write_us IS NULL OR done_us IS NULL),
  'events_that_waited_for_the_previous', count(*) FILTER (WHERE waited),
  'started_before_the_previous_completed', count(*) FILTER (WHERE handoff_ms < 0),
  'key_events_per_s', round(count(*) / nullif((max(start_us) - min(start_us)) / 1e6, 0)),
  'handoff_ms', json_build_object(
      'p50', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY handoff_ms) FILTER (WHERE waited))::numeric, 3),
      'p99', round((percentile_cont(0.99) WITHIN GROUP (ORDER BY handoff_ms) FILTER (WHERE waited))::numeric, 3),
      'max', round((max(handoff_ms) FILTER (WHERE waited))::numeric, 3)),
  'handoff_from_processed_at_ms', json_build_object(
      'p50', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY handoff_from_processed_at_ms) FILTER (WHERE waited))::numeric, 3),
      'p99', round((percentile_cont(0.99) WITHIN GROUP (ORDER BY handoff_from_processed_at_ms) FILTER (WHERE waited))::numeric, 3)),
  'due_to_start_ms', json_build_object(
      'p50', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY due_to_start_ms))::numeric, 3),
      'p99', round((percentile_cont(0.99) WITHIN GROUP (ORDER BY due_to_start_ms))::numeric, 3),
      'max', round(max(due_to_start_ms)::numeric, 3)),
  'commit_to_start_ms', json_build_object(
      'p50', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY commit_to_start_ms))::numeric, 3),
      'p99', round((percentile_cont(0.99) WITHIN GROUP (ORDER BY commit_to_start_ms))::numeric, 3),
      'max', round(max(commit_to_start_ms)::numeric, 3)))
FROM l;
EOF
}

key_latency_run() {
    local db="keylat_outbox" pid url load starts drive stats logf seconds
    starts="$work/starts-$durability-key"
    logf="$work/keylatency-$durability.log"
    rm -f "$starts"
    new_db "$db" outbox_empty
    url=$(db_url "$db")
    DATABASE_URL="$url" OUTBOX_WORKERS="$latency_workers" OUTBOX_BATCH_SIZE="$batch" OUTBOX_ON_COMPLETE=keep \
        OUTBOX_HTTP_PORT=0 OUTBOX_METRICS_LOG_INTERVAL_MS=0 OUTBOX_INSTANCE_ID=bench-keylatency LOG_LEVEL=warn \
        BENCH_START_FILE="$starts" "$app" run 2>>"$logf" &
    pid=$!
    children+=($pid)
    for _ in $(seq 1 100); do
        [ "$(pgrep -c -P "$pid" || true)" -ge "$latency_workers" ] && break
        sleep 0.1
    done
    sleep 1
    begin_measurement "$db"
    seconds=$(awk -v n="$key_events" -v r="$key_rate" 'BEGIN { print n / r }')
    log "key latency: $key_events events of one ordering key at $key_rate/s ($durability): load $(jq -r .load1 <<<"$load")"
    drive=$(DATABASE_URL="$url" "$driver" emit --system outbox --rate "$key_rate" --seconds "$seconds" \
        --connections 4 --ordering-keys 1 --type bench.keylatency)
    DATABASE_URL="$url" "$driver" wait --interval-ms 100 --timeout-s 600 \
        --sql "SELECT NOT EXISTS (SELECT 1 FROM \"Outbox\" WHERE \"status\" IN ('PENDING', 'PROCESSING'))" >/dev/null
    local sup_kb handler_kb=() c
    sup_kb=$(vmhwm_kb "$pid")
    for c in $(pgrep -P "$pid" || true); do handler_kb+=("$(vmhwm_kb "$c")"); done
    kill -TERM "$pid"
    wait "$pid" || true
    children=()
    # \copy takes its line as it is (no psql variables): the path goes in literally.
    stats=$(key_latency_stats_sql | sed -e "s|:'starts'|'$starts'|" | psql "$url" -X -q -At -v ON_ERROR_STOP=1)
    record "$(jq -nc --argjson stats "$stats" --argjson drive "$drive" --argjson load "$load" --arg load_end "$(loadavg)" \
        --argjson rate "$key_rate" --argjson n "$key_events" --argjson w "$latency_workers" --argjson batch "$batch" \
        --arg sup "$sup_kb" --arg hand "${handler_kb[*]}" --arg dur "$durability" '
        def kb2mib: (tonumber / 1024 * 10 | round / 10);
        {kind: "key_latency", system: "outbox-worker", ordering_keys: 1, rate: $rate, events_written: $n,
         setup: "1 instance, \($w) handler processes, batch \($batch), OUTBOX_ON_COMPLETE=keep; driver: 4 connections",
         driver: $drive} + $stats +
        {peak_rss_mib: {supervisor: [$sup | kb2mib], handler_processes: [$hand | splits(" ") | select(. != "") | kb2mib]},
         load_at_start: $load, load_at_end: $load_end,
         command: "BENCH_DURABILITY=\($dur) BENCH_PARTS=\"outbox keylatency\" BENCH_KEY_EVENTS=\($n) BENCH_KEY_RATE=\($rate) bash bench/run.sh"}')"
    log "  -> $(tail -n 1 "$records" | jq -r '"hand-off p50/p99 \(.handoff_ms.p50)/\(.handoff_ms.p99) ms over \(.events_that_waited_for_the_previous) events; due-to-start p50/p99 \(.due_to_start_ms.p50)/\(.due_to_start_ms.p99) ms; \(.key_events_per_s) events/s for the key"')"
    drop_db "$db"
}

# ---- run ---------------------------------------------------------------------------------------

started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_at_begin=$(loadavg)
set_durability "$headline"
prepare_outbox_templates
if want ceiling; then
    for completion in $completion_list; do
        write_ceiling_script "$completion" >/dev/null
    done
fi
if $have_graphile && { want burndown || want latency; }; then
    prepare_graphile_templates
fi

for dur in $durabilities; do
    set_durability "$dur"
    if want burndown; then
        # Pair by pair: each outbox-worker run is followed by a graphile-worker run of the same
        # instances, so that the two systems share whatever the machine is doing at the time.
        for rep in $(seq 1 "$repeat"); do
            for inst in $instances_list; do
                for w in $workers_list; do
                    for completion in $completion_list; do
                        if want outbox; then
                            for ordering in $ordering_list; do
                                outbox_burndown "$inst" "$w" "$completion" "$rep" "$ordering"
                            done
                        fi
                        if $have_graphile; then graphile_burndown "$inst" "$rep"; fi
                    done
                done
            done
        done
    fi
    if want ceiling; then
        for rep in $(seq 1 "$repeat"); do
            for mode in $ceiling_protocols; do
                for c in $ceiling_clients; do
                    for completion in $completion_list; do
                        ceiling "$mode" "$c" "$completion" "$rep"
                    done
                done
            done
        done
    fi
    if want latency; then
        for rate in $rates; do
            if want outbox; then latency_run outbox "$rate"; fi
            if $have_graphile; then latency_run graphile "$rate"; fi
        done
    fi
    if want keylatency; then
        key_latency_run
    fi
    if want brokers; then
        # Series by series: a no-op burn-down, then one per broker, BENCH_REPEAT times, so that
        # the brokers and the no-op runs they are compared with share what the machine is doing.
        for rep in $(seq 1 "$repeat"); do
            for inst in $instances_list; do
                for w in $workers_list; do
                    outbox_burndown "$inst" "$w" keep "$rep" none noop
                    for b in $brokers_list; do
                        outbox_burndown "$inst" "$w" keep "$rep" none "$b"
                    done
                done
            done
        done
    fi
done
stop_brokers

# ---- results -----------------------------------------------------------------------------------

# The cluster's settings other than durability (which every record carries as measured).
pg_settings=$(qpg "SELECT json_object_agg(name, setting || COALESCE(' ' || unit, '')) FROM pg_settings
                   WHERE name IN ('server_version', 'shared_buffers', 'max_wal_size', 'checkpoint_timeout',
                                  'work_mem', 'wal_level', 'wal_sync_method', 'max_connections',
                                  'autovacuum', 'jit', 'track_commit_timestamp')")
machine=$(jq -nc --arg nproc "$(nproc)" --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
    --arg mem "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" --arg kernel "$(uname -r)" \
    --arg os "$(. /etc/os-release && echo "$PRETTY_NAME")" --arg node "$(node --version 2>/dev/null || echo none)" \
    --arg commit "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --arg dirty "$(git status --porcelain 2>/dev/null | grep -vc '^??' || true)" \
    --arg gxx "$(g++ -dumpfullversion)" --arg gw "$graphile_version" \
    '{nproc: ($nproc | tonumber), cpu_model: $cpu, memory: $mem, kernel: $kernel, os: $os, node: $node,
      graphile_worker: $gw, gxx: $gxx, git_commit: $commit, git_modified_files: ($dirty | tonumber)}')
config=$(jq -nc --arg d "$durabilities" --arg w "$workers_list" --arg i "$instances_list" --arg c "$completion_list" \
    --argjson batch "$batch" --argjson rep "$repeat" --arg cp "$ceiling_protocols" --arg cc "$ceiling_clients" \
    --arg rates "$rates" --argjson ls "$latency_seconds" --argjson lw "$latency_workers" \
    --argjson lc "$latency_connections" --arg parts "$parts" --arg ord "$ordering_list" \
    --argjson ke "$key_events" --argjson kr "$key_rate" --arg brokers "$brokers_list" '
    def words: [splits(" +") | select(. != "")];
    {BENCH_DURABILITY: ($d | words), BENCH_WORKERS: ($w | words), BENCH_INSTANCES: ($i | words),
     BENCH_COMPLETION: ($c | words), BENCH_BATCH: $batch, BENCH_REPEAT: $rep,
     BENCH_CEILING_PROTOCOLS: ($cp | words), BENCH_CEILING_CLIENTS: ($cc | words), BENCH_RATES: ($rates | words),
     BENCH_LATENCY_SECONDS: $ls, BENCH_LATENCY_WORKERS: $lw, BENCH_LATENCY_CONNECTIONS: $lc, BENCH_PARTS: ($parts | words),
     BENCH_ORDERING: ($ord | words), BENCH_KEY_EVENTS: $ke, BENCH_KEY_RATE: $kr, BENCH_BROKERS: ($brokers | words)}')
out="$results_dir/$(date -u +%Y%m%dT%H%M%SZ).json"
jq -s --argjson machine "$machine" --argjson pg "$pg_settings" --argjson config "$config" --arg started "$started_at" \
    --arg finished "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg load_begin "$load_at_begin" --arg load_end "$(loadavg)" \
    --arg build "$build_dir" --argjson events "$events" --argjson maxload "$max_load" --arg headline "$headline" '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[(length / 2 | floor)]
                       else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def maxn: map(select(. != null)) | max;
    . as $r |
    ($config.BENCH_DURABILITY | map(. as $d | $r | map(select(.durability.setting == $d)) as $rd |
      ($rd | map(select(.kind == "ceiling")) | group_by([.completion != "keep", .completion, .protocol, .clients])
          | map({completion: .[0].completion, statements: .[0].statements, protocol: .[0].protocol,
                 clients: .[0].clients, runs: length,
                 events_per_s: (map(.events_per_s) | median), runs_events_per_s: map(.events_per_s | round)})) as $ceil |
      # The ceiling of a completion mode: the best median with prepared statements, as the service.
      ($ceil | map(select(.protocol == "prepared")) | group_by(.completion)
          | map({key: .[0].completion, value: (map(.events_per_s) | max)}) | from_entries) as $ceil_best |
      ($rd | map(select(.kind == "burndown" and .part == null)) as $b |
       ($b | map(select(.system == "graphile-worker")) | group_by(.instances)
           | map({key: (.[0].instances | tostring), value: (map(.events_per_s) | median)}) | from_entries) as $gw |
       ($b | map(select(.system == "outbox-worker" and .ordering_keys == null))
           | group_by([.completion, .instances, .handler_processes_per_instance])
           | map({key: "\(.[0].completion) \(.[0].instances) \(.[0].handler_processes_per_instance)",
                  value: (map(.events_per_s) | median)}) | from_entries) as $unordered |
       # Rows: outbox-worker keep, delete, then graphile-worker; unordered before ordered, more
       # keys first; by instances and processes within.
       $b | group_by([.system != "outbox-worker", .completion != "keep", .completion,
                      (if .ordering_keys == null then 0 else 1e12 - .ordering_keys end), .instances,
                      .handler_processes_per_instance])
          | map({system: (.[0].system + (if .[0].completion then " " + .[0].completion else "" end)
                          + (if .[0].ordering_keys then ", \(.[0].ordering_keys) keys" else "" end)),
                 completion: .[0].completion, ordering_keys: .[0].ordering_keys, instances: .[0].instances,
                 handler_processes_per_instance: .[0].handler_processes_per_instance,
                 runs: length, events_per_s: (map(.events_per_s) | median),
                 runs_events_per_s: map(.events_per_s | round),
                 steady_events_per_s: (map(.steady_events_per_s) | if any(. == null) then null else median end),
                 events_per_transaction: (map(.events_per_transaction) | median),
                 cpu_us_per_event: (if .[0].system == "outbox-worker"
                     then {supervisor: (map(.cpu_us_per_event.supervisor) | median),
                           handler_processes: (map(.cpu_us_per_event.handler_processes) | median),
                           postgres: (map(.cpu_us_per_event.postgres) | if any(. == null) then null else median end)}
                     else {node_processes: (map(.cpu_us_per_event.node_processes) | median)} end),
                 peak_rss_mib: (if .[0].system == "outbox-worker"
                     then {supervisor: (map(.peak_rss_mib.supervisor[]) | max),
                           handler_process: (map(.peak_rss_mib.handler_processes[]) | max)}
                     else {node_process: (map(.peak_rss_mib.node_processes[]) | max)} end)}
                | . + {graphile_events_per_s: $gw[.instances | tostring]}
                | . + {ratio_to_unordered: (if .ordering_keys
                       then .events_per_s / $unordered["\(.completion) \(.instances) \(.handler_processes_per_instance)"]
                       else null end)}
                | . + {ratio_to_graphile: (if .graphile_events_per_s then .events_per_s / .graphile_events_per_s else null end)}
                | . + {fraction_of_ceiling: (if .completion and $ceil_best[.completion]
                                             then .events_per_s / $ceil_best[.completion] else null end)})
      ) as $bd |
      ($rd | map(select(.kind == "latency"))) as $lat |
      ($rd | map(select(.kind == "key_latency"))) as $keylat |
      ([$bd[] | select(.ordering_keys == 10000) | .ratio_to_unordered] | map(select(. != null))
          | if length == 0 then null else min end) as $ord_ratio |
      ($rd | map(select(.system == "outbox-worker" and .part == null
                        and (.kind == "burndown" or .kind == "latency" or .kind == "key_latency")))) as $ob |
      # Part 5: the no-op burn-downs of the brokers series are their baseline (median against
      # median, same instances and processes).
      ($rd | map(select(.kind == "burndown" and .part == "brokers"))) as $br |
      ($br | map(select(.sink == "noop")) | group_by([.instances, .handler_processes_per_instance])
           | map({key: "\(.[0].instances) \(.[0].handler_processes_per_instance)", value: (map(.events_per_s) | median)})
           | from_entries) as $noop |
      ($br | group_by(. as $x | [(["noop"] + $config.BENCH_BROKERS | index($x.sink)), $x.instances,
                                 $x.handler_processes_per_instance])
           | map({sink: .[0].sink, server: .[0].broker.server, instances: .[0].instances,
                  handler_processes_per_instance: .[0].handler_processes_per_instance, runs: length,
                  events_per_s: (map(.events_per_s) | median), runs_events_per_s: map(.events_per_s | round),
                  steady_events_per_s: (map(.steady_events_per_s) | if any(. == null) then null else median end),
                  events_per_transaction: (map(.events_per_transaction) | median),
                  cpu_us_per_event: {supervisor: (map(.cpu_us_per_event.supervisor) | median),
                                     handler_processes: (map(.cpu_us_per_event.handler_processes) | median),
                                     postgres: (map(.cpu_us_per_event.postgres) | if any(. == null) then null else median end),
                                     broker_server: (if .[0].broker then map(.broker.server_cpu_us_per_event) | median else null end)},
                  peak_rss_mib: {supervisor: (map(.peak_rss_mib.supervisor[]) | max),
                                 handler_process: (map(.peak_rss_mib.handler_processes[]) | max)},
                  every_event_completed: all(.completed == .events and .not_completed == 0),
                  retried: (map(.retried) | add),
                  broker_holds_every_event: (if .[0].broker then all(.broker.holds_every_event) else null end),
                  messages_held: (if .[0].broker then map(.broker.messages_held) else null end),
                  load1_at_start: map(.load_at_start.load1)}
                | . + {noop_events_per_s: $noop["\(.instances) \(.handler_processes_per_instance)"]}
                | . + {fraction_of_noop: (if .noop_events_per_s then .events_per_s / .noop_events_per_s else null end)})) as $brk |
      ([$brk[] | select(.sink != "noop") | .peak_rss_mib.handler_process] | maxn) as $brk_hand |
      def fraction_target($sink): [$brk[] | select(.sink == $sink) | .fraction_of_noop | select(. != null)]
          | if length == 0 then null else min >= 0.5 end;
      ([$ob[] | .peak_rss_mib.supervisor[]] | max) as $sup |
      ([$ob[] | .peak_rss_mib.handler_processes[]] | max) as $hand |
      ([$lat[] | select(.system == "outbox-worker" and .rate == 1000 and .rate_achieved) | .commit_to_start_ms.p99]
          | maxn) as $p99 |
      ([$bd[] | select(.completion == "keep" and .ordering_keys == null) | .ratio_to_graphile] | maxn) as $keep_ratio |
      ([$bd[] | select(.completion == "delete" and .ordering_keys == null) | .ratio_to_graphile] | maxn) as $delete_ratio |
      {durability: $d, settings: ($rd | map(.durability) | unique),
       burndown: $bd,
       ceiling: $ceil,
       ceiling_events_per_s: $ceil_best,
       latency: ($lat | map({system, rate, achieved_rate: .driver.achieved_rate, rate_achieved,
                             commit_to_start_ms, commit_to_completed_ms, started, events,
                             delivered_more_than_once, peak_rss_mib})),
       key_latency: ($keylat | map({rate, events_written, achieved_rate: .driver.achieved_rate, events,
                                    events_measured, events_that_waited_for_the_previous,
                                    started_before_the_previous_completed, key_events_per_s,
                                    handoff_ms, handoff_from_processed_at_ms, due_to_start_ms,
                                    commit_to_start_ms, delivered_more_than_once, commit_times_missing})),
       min_ratio_ordered_10000_keys_to_unordered: $ord_ratio,
       brokers: $brk,
       max_supervisor_rss_mib: $sup, max_handler_process_rss_mib: $hand,
       max_broker_handler_process_rss_mib: $brk_hand,
       p99_commit_to_start_ms_at_1000: $p99,
       targets: {
         keep_at_least_1_0x_graphile: (if $keep_ratio then $keep_ratio >= 1.0 else null end),
         delete_at_least_1_3x_graphile: (if $delete_ratio then $delete_ratio >= 1.3 else null end),
         p99_start_at_most_5ms_at_1000: (if $p99 then $p99 <= 5 else null end),
         ordered_10000_keys_at_least_0_8x_unordered: (if $ord_ratio then $ord_ratio >= 0.8 else null end),
         supervisor_under_20mib: (if $sup then $sup < 20 else null end),
         handler_under_10mib: (if $hand then $hand < 10 else null end),
         nats_at_least_0_5x_noop: fraction_target("nats"),
         kafka_at_least_0_5x_noop: fraction_target("kafka"),
         broker_handler_process_under_30mib: (if $brk_hand then $brk_hand < 30 else null end)}})) as $by |
    {started: $started, finished: $finished, events: $events, build_dir: $build, config: $config,
     machine: $machine,
     postgresql: ($pg + {cluster: "tests/run_with_postgres.sh (private); durability per record and per summary"}),
     load_gate: {max_load1: $maxload, load_at_begin: $load_begin, load_at_end: $load_end},
     summary: {headline_durability: $headline, by_durability: $by},
     records: $r}' "$records" >"$out"
for completion in $completion_list; do
    if [ -f "$work/ceiling-$completion.sql" ]; then
        cp "$work/ceiling-$completion.sql" "${out%.json}.ceiling-$completion.sql"
    fi
done

echo
echo "results: $out"
jq -r '
  def num: if . == null then "-" elif type == "number" then (round | tostring
      | if length > 3 then .[:length - 3] + "," + .[length - 3:] else . end) else tostring end;
  def ratio: if . == null then "-"
             else (. * 100 | round) as $c | "\($c / 100 | floor).\($c % 100 | tostring | if length < 2 then "0" + . else . end)x" end;
  def lpad($n): tostring | (if length < $n then ([range(0; $n - length)] | map(" ") | join("")) else "" end) + .;
  def rpad($n): tostring | . + (if length < $n then ([range(0; $n - length)] | map(" ") | join("")) else "" end);
  .events as $events | .summary.headline_durability as $headline |
  .summary.by_durability[] |
  "",
  "== \(.durability) durability\(if .durability == $headline then " (headline)" else "" end): \(.settings | map("fsync \(.fsync), synchronous_commit \(.synchronous_commit), full_page_writes \(.full_page_writes)") | join("; "))",
  (if (.burndown | length) > 0 then
    "burn-down of \($events) no-op events, median of runs:",
    "  \("system" | rpad(36)) \("instances" | rpad(14)) \("events/s" | lpad(9))  \("vs unordered" | lpad(12))  \("vs graphile" | lpad(11))  \("steady" | lpad(7))  \("of ceiling" | lpad(10))  \("CPU µs/event" | rpad(26))  runs",
    (.burndown[] |
      "  \(.system | rpad(36)) \((if .handler_processes_per_instance then "\(.instances) x \(.handler_processes_per_instance) proc" else "\(.instances) process" end) | rpad(14)) \(.events_per_s | num | lpad(9))  \(.ratio_to_unordered | ratio | lpad(12))  \(.ratio_to_graphile | ratio | lpad(11))  \(.steady_events_per_s | num | lpad(7))  \(.fraction_of_ceiling | if . == null then "-" else "\(. * 100 | round)%" end | lpad(10))  \((if .cpu_us_per_event.supervisor != null then "sup \(.cpu_us_per_event.supervisor), handlers \(.cpu_us_per_event.handler_processes)" else "node \(.cpu_us_per_event.node_processes)" end) | rpad(26))  \(.runs_events_per_s | map(num) | join(" "))")
   else empty end),
  (if (.ceiling | length) > 0 then
    "ceiling (the service statements under pgbench), events/s, median of runs:",
    (.ceiling[] | "  \(.completion) (\(.statements | join(" + "))), \(.protocol), \(.clients) client(s): \(.events_per_s | num)  (runs \(.runs_events_per_s | map(num) | join(" ")))")
   else empty end),
  (.latency[] | "latency \(.system) \(.rate)/s (achieved \(.achieved_rate)\(if .rate_achieved then "" else ", FELL SHORT: not counted" end)): commit-to-start p50/p95/p99/max \(.commit_to_start_ms.p50)/\(.commit_to_start_ms.p95)/\(.commit_to_start_ms.p99)/\(.commit_to_start_ms.max) ms; commit-to-completed p50/p99 \(.commit_to_completed_ms.p50)/\(.commit_to_completed_ms.p99) ms"),
  (.key_latency[] | "key latency (\(.events_written) events of one ordering key at \(.rate)/s, achieved \(.achieved_rate)): hand-off p50/p99/max \(.handoff_ms.p50)/\(.handoff_ms.p99)/\(.handoff_ms.max) ms over \(.events_that_waited_for_the_previous) events that waited; due-to-start p50/p99 \(.due_to_start_ms.p50)/\(.due_to_start_ms.p99) ms; commit-to-start p50/p99 \(.commit_to_start_ms.p50)/\(.commit_to_start_ms.p99) ms; \(.key_events_per_s) events/s for the key"),
  (if (.brokers | length) > 0 then
    "brokers: burn-down of \($events) events to each broker (outbox-worker, keep), median of runs, against the no-op burn-downs of the same series:",
    "  \("sink" | rpad(6)) \("instances" | rpad(14)) \("events/s" | lpad(9))  \("of no-op" | lpad(8))  \("CPU µs/event" | rpad(54))  \("peak RSS MiB" | rpad(24))  \("all done" | rpad(8))  \("held" | rpad(5))  runs",
    (.brokers[] |
      "  \(.sink | rpad(6)) \("\(.instances) x \(.handler_processes_per_instance) proc" | rpad(14)) \(.events_per_s | num | lpad(9))  \(.fraction_of_noop | if . == null then "-" else "\(. * 100 | round)%" end | lpad(8))  \("sup \(.cpu_us_per_event.supervisor), handlers \(.cpu_us_per_event.handler_processes), pg \(.cpu_us_per_event.postgres // "-")\(if .cpu_us_per_event.broker_server != null then ", server \(.cpu_us_per_event.broker_server)" else "" end)" | rpad(54))  \("sup \(.peak_rss_mib.supervisor), handler \(.peak_rss_mib.handler_process)" | rpad(24))  \(.every_event_completed | tostring | rpad(8))  \(.broker_holds_every_event // "-" | tostring | rpad(5))  \(.runs_events_per_s | map(num) | join(" "))")
   else empty end),
  "peak RSS (outbox-worker): supervisor \(.max_supervisor_rss_mib // "-") MiB, handler process \(.max_handler_process_rss_mib // "-") MiB\(if .max_broker_handler_process_rss_mib then "; with a broker connection \(.max_broker_handler_process_rss_mib) MiB" else "" end)",
  "targets: \(.targets | to_entries | map("\(.key) \(if .value == null then "-" else .value end)") | join(", "))"' "$out"
rm -rf "$work"
