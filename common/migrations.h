// Versioned schema migrations (SPEC section 1). The SQL lives in sql/migrations/NNN_name.sql and is
// embedded at build time. `outbox-worker migrate` applies the missing ones in order, each in its
// own transaction, under a session advisory lock so that instances migrating at once take turns.
#pragma once

#include <libpq-fe.h>

#include <string>
#include <vector>

namespace outbox {

struct Migration {
    int version;
    const char* name;
    const char* sql;
};

const std::vector<Migration>& embedded_migrations();
int latest_migration_version();

struct MigrateOutcome {
    bool ok = false;
    std::string error;                // what failed, with the migration's name
    std::vector<std::string> applied; // names of the migrations applied by this call
    int version = 0;                  // schema version afterwards
};

// Blocking; for the command line, never for the supervisor's loop.
[[nodiscard]] MigrateOutcome migrate(PGconn* conn);

// The service's schema version in the database: -1 when the version table does not exist.
// `error` is set when the query itself fails.
[[nodiscard]] int schema_version(PGconn* conn, std::string& error);

} // namespace outbox
