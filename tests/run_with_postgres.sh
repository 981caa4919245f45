#!/usr/bin/env bash
# Runs a command against a private, throw-away PostgreSQL cluster.
#
#   tests/run_with_postgres.sh ctest --test-dir build --output-on-failure
#   tests/run_with_postgres.sh --shell        # an interactive shell with the cluster running
#
# The cluster lives in a fresh temporary directory, listens on a free TCP port of 127.0.0.1 and on
# a Unix socket inside that directory, and by default runs with fsync off: it exists only for the
# tests, and with track_commit_timestamp on (the ordering tests read commit times). The command
# gets OUTBOX_TEST_PG, a URI for the role outbox_test (a superuser with a password, so that tests
# can check that passwords are masked and that authentication really uses them). The cluster is
# stopped and its directory removed whatever happens: success, failure, Ctrl-C or SIGTERM.
#
# Environment:
#   PG_BINDIR       where initdb, pg_ctl and psql are looked for (default: the newest installed).
#   PG_DURABILITY   relaxed (default) or production, the cluster's durability at start:
#                     relaxed     fsync, synchronous_commit and full_page_writes off: fast, and a
#                                 crash may lose the last commits or corrupt the data (the tests
#                                 do not care; a clean restart, as in the restart tests, loses
#                                 nothing);
#                     production  the three on, as PostgreSQL ships them.
#                   The command gets it back as OUTBOX_TEST_PG_DURABILITY. All three settings take
#                   effect on a reload, so a command may switch within one cluster (bench/run.sh
#                   does):  ALTER SYSTEM SET fsync = on; ALTER SYSTEM SET full_page_writes = on;
#                   ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf(); CHECKPOINT;
#                   then check with SHOW in a new session. The CHECKPOINT after turning fsync on
#                   flushes what was written without it.
set -euo pipefail

readonly test_role=outbox_test
readonly test_password=secret-pw

usage() {
    echo "usage: $0 COMMAND [ARG...] | --shell" >&2
    exit 64
}

[ $# -ge 1 ] || usage
shell_mode=false
if [ "$1" = "--shell" ]; then
    shell_mode=true
elif [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
    usage
fi

find_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return
    fi
    # Debian keeps the server binaries out of PATH, one directory per major version; take the
    # newest one installed.
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
        return
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return
    fi
    echo "run_with_postgres: cannot find initdb; install postgresql (make deps) or set PG_BINDIR" >&2
    exit 1
}

bindir=$(find_bindir)

durability="${PG_DURABILITY:-relaxed}"
case "$durability" in
relaxed) durable=off ;;
production) durable=on ;;
*)
    echo "run_with_postgres: PG_DURABILITY=$durability: expected relaxed or production" >&2
    exit 64
    ;;
esac

# PostgreSQL refuses to run as root, so as root the cluster belongs to the postgres user.
pg_user=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    pg_user=postgres
    if ! id postgres >/dev/null 2>&1; then
        echo "run_with_postgres: running as root but there is no postgres user (install postgresql)" >&2
        exit 1
    fi
fi

as_pg() {
    if [ "$(id -u)" -ne 0 ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$pg_user" -- "$@"
    else
        su "$pg_user" -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/outbox-pg.XXXXXX")
data="$tmp/data"
sock="$tmp/sock"
log="$tmp/postgres.log"
mkdir -p "$sock"
if [ "$(id -u)" -eq 0 ]; then
    chown -R "$pg_user:" "$tmp"
fi

child=
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        # The command runs in its own process group (set -m below): end all of it.
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [ -f "$data/postmaster.pid" ]; then
        # Immediate mode: the cluster is thrown away, so there is nothing to flush.
        if ! as_pg "$bindir/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1; then
            pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$tmp"
    exit "$status"
}
on_signal() {
    echo "run_with_postgres: interrupted, stopping the test cluster" >&2
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

as_pg "$bindir/initdb" -D "$data" -U postgres -E UTF8 --locale=C --no-sync \
    --auth-local=trust --auth-host=scram-sha-256 >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2
    echo "run_with_postgres: initdb failed" >&2
    exit 1
}

cat >>"$data/postgresql.conf" <<EOF

# Settings of the private test cluster (tests/run_with_postgres.sh).
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 200
# PG_DURABILITY=$durability
fsync = $durable
synchronous_commit = $durable
full_page_writes = $durable
shared_buffers = 128MB
max_wal_size = 1GB
checkpoint_timeout = 30min
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
# The ordering tests take each event's commit time (pg_xact_commit_timestamp) as evidence of
# commit order independent of the service's own sequence; the setting needs a server start.
track_commit_timestamp = on
EOF

# Another process may take the port between free_port and the server's bind, so a failed start is
# retried on another port.
port=
for attempt in 1 2 3 4 5; do
    candidate=$(free_port)
    if as_pg "$bindir/pg_ctl" -D "$data" -l "$log" -o "-p $candidate" -w -t 60 start >/dev/null 2>&1; then
        port=$candidate
        break
    fi
    echo "run_with_postgres: start on port $candidate failed (attempt $attempt)" >&2
done
if [ -z "$port" ]; then
    cat "$log" >&2 || true
    echo "run_with_postgres: could not start PostgreSQL" >&2
    exit 1
fi

as_pg "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE $test_role LOGIN SUPERUSER PASSWORD '$test_password'" >/dev/null

export OUTBOX_TEST_PG="postgresql://$test_role:$test_password@127.0.0.1:$port/postgres"
export OUTBOX_TEST_PG_LOG="$log"
export OUTBOX_TEST_PG_DURABILITY="$durability"
# A command that restarts the cluster on the same port (fast shutdown: every connection is cut),
# for the tests that check the service rides out a database restart.
{
    echo '#!/usr/bin/env bash'
    echo "pg_user=$pg_user"
    declare -f as_pg
    printf 'as_pg %q -D %q -l %q -o %q -w -t 60 -m fast restart >/dev/null\n' \
        "$bindir/pg_ctl" "$data" "$log" "-p $port"
} >"$tmp/restart-postgres"
chmod 755 "$tmp/restart-postgres"
export OUTBOX_TEST_PG_RESTART="$tmp/restart-postgres"

if $shell_mode; then
    echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $NF}') on 127.0.0.1:$port (data in $data, durability $durability)"
    echo "OUTBOX_TEST_PG=$OUTBOX_TEST_PG"
    echo "psql \"\$OUTBOX_TEST_PG\" connects; exit the shell to stop the cluster."
    "${SHELL:-/bin/bash}" -i || true
    exit 0
fi

# The command runs in the background of a job-controlled shell, so that it has its own process
# group (cleanup ends all of it) and does not ignore SIGINT, as background commands of a shell
# without job control do; `wait` returns as soon as a signal arrives, so the traps run at once.
set -m
"$@" &
child=$!
set +m
status=0
wait "$child" || status=$?
child=
exit "$status"
