#!/usr/bin/env bash
# `make demo`: the service at work on a throw-away PostgreSQL.
#
# Starts a private cluster (tests/run_with_postgres.sh), migrates an empty database, emits a mix of
# sample events, and runs `outbox-worker run` with examples/handlers.json: a `log` subscriber for
# orders and an `exec` subscriber for payments that fails now and then, so retries and the
# dead-letter queue show. A second terminal can watch http://127.0.0.1:3001/metrics meanwhile.
# Ctrl-C stops the service (it drains), prints what happened, and removes the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec tests/run_with_postgres.sh bash "$0" "$@"
fi

bin="${BUILD_DIR:-build}/outbox-worker"
db="outbox_demo"
psql "$OUTBOX_TEST_PG" -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null 2>&1
export DATABASE_URL="${OUTBOX_TEST_PG%/*}/$db"
export OUTBOX_HANDLERS="$PWD/examples/handlers.json"
export OUTBOX_WORKERS="${OUTBOX_WORKERS:-2}"
export OUTBOX_INITIAL_DELAY_MS=500 OUTBOX_MAX_DELAY_MS=4000 OUTBOX_MAX_RETRIES=3
export OUTBOX_METRICS_LOG_INTERVAL_MS=5000 OUTBOX_HTTP_PORT="${OUTBOX_HTTP_PORT:-3001}"

"$bin" migrate
echo "== emitting sample events"
"$bin" emit --type order.created --tenant acme --count 200 >/dev/null
"$bin" emit --type payment.captured --tenant acme --count 40 >/dev/null
"$bin" emit --type order.shipped --tenant globex --payload '{"orderId": "o-17", "carrier": "dhl"}'
"$bin" emit --type audit.unrouted --tenant acme --payload '{"note": "no subscriber: stays PENDING"}'

echo "== running the service (Ctrl-C to stop; metrics on http://127.0.0.1:$OUTBOX_HTTP_PORT/metrics)"
service_pid=""
stop() { [ -n "$service_pid" ] && kill -TERM "$service_pid" 2>/dev/null || true; }
trap stop INT TERM
"$bin" run &
service_pid=$!
# Without a terminal (CI, a pipe) the demo stops by itself once the work has settled.
if [ ! -t 0 ] || [ -n "${DEMO_SECONDS:-}" ]; then
    ( sleep "${DEMO_SECONDS:-20}"; kill -TERM "$service_pid" 2>/dev/null ) &
fi
wait "$service_pid" || true
trap - INT TERM

echo
echo "== what happened"
"$bin" stats
"$bin" dlq list --limit 5
