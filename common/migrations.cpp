#include "common/migrations.h"

#include <charconv>

#include "common/pg.h"

#include <spdlog/spdlog.h>

namespace outbox {

namespace {

// Arbitrary but fixed: every instance of every version of outbox-worker serialises on this key.
constexpr const char* kMigrationLockKey = "4242061700";

constexpr const char* kVersionTableDdl = R"sql(
CREATE TABLE IF NOT EXISTS outbox_worker_schema (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
))sql";

} // namespace

int latest_migration_version() {
    int latest = 0;
    for (const auto& m : embedded_migrations()) {
        latest = std::max(latest, m.version);
    }
    return latest;
}

int schema_version(PGconn* conn, std::string& error) {
    PgResult exists = pg_exec(conn, "SELECT to_regclass('outbox_worker_schema') IS NOT NULL");
    if (!exists.ok()) {
        error = exists.error();
        return -1;
    }
    if (exists.value(0, 0) != "t") {
        return -1;
    }
    PgResult res = pg_exec(conn, "SELECT COALESCE(max(version), 0) FROM outbox_worker_schema");
    if (!res.ok()) {
        error = res.error();
        return -1;
    }
    int version = -1;
    std::string_view text = res.view(0, 0);
    if (std::from_chars(text.data(), text.data() + text.size(), version).ec != std::errc()) {
        error = "the schema version is not a number: " + res.value(0, 0);
        return -1;
    }
    return version;
}

MigrateOutcome migrate(PGconn* conn) {
    MigrateOutcome out;
    // A session lock rather than a transaction lock: it spans the per-migration transactions.
    PgResult lock =
        pg_exec(conn, std::string("SELECT pg_advisory_lock(") + kMigrationLockKey + ")");
    if (!lock.ok()) {
        out.error = "could not take the migration lock: " + lock.error();
        return out;
    }
    auto unlock = [&] {
        PgResult r =
            pg_exec(conn, std::string("SELECT pg_advisory_unlock(") + kMigrationLockKey + ")");
        (void)r;
    };

    PgResult ddl = pg_exec(conn, kVersionTableDdl);
    if (!ddl.ok()) {
        out.error = "could not create outbox_worker_schema: " + ddl.error();
        unlock();
        return out;
    }
    std::string error;
    int current = schema_version(conn, error);
    if (!error.empty()) {
        out.error = error;
        unlock();
        return out;
    }

    for (const auto& m : embedded_migrations()) {
        if (m.version <= current) {
            continue;
        }
        spdlog::info("applying migration {}", m.name);
        PgResult begin = pg_exec(conn, "BEGIN");
        PgResult body = begin.ok() ? pg_exec(conn, m.sql) : std::move(begin);
        if (body.ok()) {
            body = pg_exec_params(
                conn, "INSERT INTO outbox_worker_schema (version, name) VALUES ($1, $2)",
                {std::to_string(m.version), m.name});
        }
        if (body.ok()) {
            body = pg_exec(conn, "COMMIT");
        }
        if (!body.ok()) {
            out.error = std::string("migration ") + m.name + " failed: " + body.error();
            PgResult rollback = pg_exec(conn, "ROLLBACK");
            (void)rollback;
            unlock();
            out.version = current;
            return out;
        }
        out.applied.emplace_back(m.name);
        current = m.version;
    }
    unlock();
    out.ok = true;
    out.version = current;
    return out;
}

} // namespace outbox
