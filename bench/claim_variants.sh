#!/usr/bin/env bash
# How much of the database's work per event is the handler's JSON (docs/PERFORMANCE.md, "Ceiling").
#
#   BUILD_DIR=/tmp/build-bench bash bench/claim_variants.sh [CEILING_SQL]
#
# Takes the pgbench script of the ceiling (default: the newest bench/results/*.ceiling-keep.sql,
# written by bench/run.sh from supervisor/queries.h, or a *.ceiling.sql of runs before the
# completion modes) and runs it, alternating, three times in three forms on fresh copies of a
# 100,000-event database, 2 clients, prepared statements planned per call as the service runs them:
#   full    the claim as the service sends it (joins "EventLog"; where it builds the handler's
#           JSON in PostgreSQL, raw shows what that costs; where it returns plain columns, full
#           and raw are the same statement)
#   raw     the same join, the columns returned as they are, for a client to format
#   nojson  the claim returning only its own columns (no join, no JSON): what the lease alone costs
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${OUTBOX_TEST_PG:-}" ]; then
    exec tests/run_with_postgres.sh bash "$0" "$@"
fi
build_dir="${BUILD_DIR:-build}"
full="${1:-$(ls -t bench/results/*.ceiling-keep.sql bench/results/*.ceiling.sql 2>/dev/null | head -n 1 || true)}"
[ -n "$full" ] || { echo "claim_variants: no ceiling script in bench/results: run bench/run.sh first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base="${OUTBOX_TEST_PG%/*}"
export PGOPTIONS="-c client_min_messages=warning"
q() { psql "$base/$1" -X -q -At -v ON_ERROR_STOP=1 -c "$2"; }

cp "$full" "$work/full.sql"
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
s = open(f"{work}/full.sql").read()
start = s.index('RETURNING o."id"')
end = s.index(')\nSELECT COALESCE(array_agg(id)')
nojson = (s[:start]
          + 'RETURNING o."id", o."retryCount", o."maxRetries", o."eventType", 0::bigint, \'{}\'::text\n'
          + s[end:]).replace('  LEFT JOIN "EventLog" e ON e."id" = due."eventLogId"\n', '')
raw = s[:start] + '''RETURNING o."id", o."retryCount", o."maxRetries", o."eventType",
          (extract(epoch FROM o."createdAt") * 1000)::bigint,
          o."eventLogId", e."eventKey", COALESCE(e."tenantId", o."tenantId") AS tenant_x,
          e."projectId", COALESCE(e."eventType", o."eventType") AS type_x,
          COALESCE(e."payload", o."payload") AS payload_x, e."metadata", e."correlationId",
          (extract(epoch FROM COALESCE(e."createdAt", o."createdAt")) * 1000000)::bigint
''' + s[end:]
open(f"{work}/nojson.sql", "w").write(nojson)
open(f"{work}/raw.sql", "w").write(raw)
PY

q postgres "DROP DATABASE IF EXISTS claim_variants_tmpl WITH (FORCE)" >/dev/null
q postgres "CREATE DATABASE claim_variants_tmpl" >/dev/null
DATABASE_URL="$base/claim_variants_tmpl" "$build_dir/outbox-worker" migrate >/dev/null 2>&1
DATABASE_URL="$base/claim_variants_tmpl" "$build_dir/outbox-worker" emit --type bench.noop \
    --count 100000 >/dev/null
q claim_variants_tmpl 'VACUUM ANALYZE "Outbox"' >/dev/null
echo "script: $full"
for rep in 1 2 3; do
    for v in full raw nojson; do
        q postgres "DROP DATABASE IF EXISTS claim_variants WITH (FORCE)" >/dev/null
        q postgres "CREATE DATABASE claim_variants TEMPLATE claim_variants_tmpl" >/dev/null
        out=$(PGOPTIONS="$PGOPTIONS -c plan_cache_mode=force_custom_plan" \
            pgbench -n -M prepared -c 2 -j 2 -t 500 -f "$work/$v.sql" -D owner=variants -D batch=100 \
            -D patterns='{bench.%}' -D lease_ms=30000 "$base/claim_variants" 2>&1) || {
            echo "$out" >&2
            exit 1
        }
        tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
        echo "run $rep  $v: $(awk -v t="$tps" 'BEGIN { printf "%.0f", t * 100 }') events/s"
    done
done
q postgres "DROP DATABASE claim_variants WITH (FORCE)" >/dev/null
q postgres "DROP DATABASE claim_variants_tmpl WITH (FORCE)" >/dev/null
