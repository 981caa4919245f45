// Migrations against a real PostgreSQL (SPEC 1): the whole schema on an empty database,
// idempotence, concurrent migrators, and an existing Calibr database whose application keeps
// writing unchanged.
#include "common/migrations.h"
#include "tests/support/pg_fixture.h"
#include "tests/support/process.h"

#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <thread>

using outbox::test::TestDatabase;

namespace {

struct ColumnExpectation {
    const char* name;
    const char* type; // information_schema data_type, or the enum's name for USER-DEFINED
    bool nullable;
    const char* default_contains; // nullptr: no default at all; "": any default
};

struct Column {
    std::string type;
    bool nullable = false;
    std::string default_value; // empty: none
    std::string precision;     // datetime_precision
};

std::map<std::string, Column> columns_of(const TestDatabase& db, const std::string& table) {
    outbox::PgResult res = db.exec(
        "SELECT column_name, CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END,"
        "       is_nullable, COALESCE(column_default, ''), COALESCE(datetime_precision::text, '')"
        "  FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = '" +
        table + "'");
    std::map<std::string, Column> out;
    for (int row = 0; row < res.rows(); ++row) {
        out[res.value(row, 0)] = {res.value(row, 1), res.value(row, 2) == "YES", res.value(row, 3),
                                  res.value(row, 4)};
    }
    return out;
}

void check_columns(const TestDatabase& db, const std::string& table,
                   const std::vector<ColumnExpectation>& expected) {
    auto actual = columns_of(db, table);
    for (const auto& e : expected) {
        INFO(table << "." << e.name);
        auto it = actual.find(e.name);
        REQUIRE(it != actual.end());
        CHECK(it->second.type == e.type);
        CHECK(it->second.nullable == e.nullable);
        if (e.default_contains == nullptr) {
            CHECK(it->second.default_value.empty());
        } else {
            CHECK(it->second.default_value.find(e.default_contains) != std::string::npos);
        }
        if (std::string(e.type) == "timestamp with time zone") {
            CHECK(it->second.precision == "6");
        }
    }
}

struct Index {
    std::string name;
    bool unique = false;
    std::string columns; // "a,b" in index order
};

std::vector<Index> indexes_of(const TestDatabase& db, const std::string& table) {
    outbox::PgResult res =
        db.exec("SELECT i.relname, x.indisunique,"
                "       (SELECT string_agg(a.attname, ',' ORDER BY k.ord)"
                "          FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)"
                "          JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum)"
                "  FROM pg_index x"
                "  JOIN pg_class i ON i.oid = x.indexrelid"
                " WHERE x.indrelid = '\"" +
                table + "\"'::regclass AND x.indpred IS NULL");
    std::vector<Index> out;
    for (int row = 0; row < res.rows(); ++row) {
        out.push_back({res.value(row, 0), res.value(row, 1) == "t", res.value(row, 2)});
    }
    return out;
}

// Exactly one full (not partial) index on these columns, in this order.
void check_index(const TestDatabase& db, const std::string& table, const std::string& columns,
                 bool unique = false) {
    int found = 0;
    for (const auto& index : indexes_of(db, table)) {
        if (index.columns == columns && index.unique == unique) {
            ++found;
        }
    }
    INFO(table << " (" << columns << ")" << (unique ? " unique" : ""));
    CHECK(found == 1);
}

void check_calibr_schema(const TestDatabase& db) {
    CHECK(db.scalar("SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)"
                    "  FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
                    " WHERE t.typname = 'OutboxStatus'") == "PENDING,PROCESSING,COMPLETED,FAILED");

    check_columns(db, "EventLog",
                  {{"id", "text", false, nullptr},
                   {"eventKey", "text", false, nullptr},
                   {"tenantId", "text", false, nullptr},
                   {"projectId", "text", true, nullptr},
                   {"eventType", "text", false, nullptr},
                   {"payload", "jsonb", false, nullptr},
                   {"metadata", "jsonb", true, nullptr},
                   {"correlationId", "text", true, nullptr},
                   {"createdAt", "timestamp with time zone", false, ""},
                   {"version", "integer", false, "1"}});
    check_columns(db, "Outbox",
                  {{"id", "text", false, nullptr},
                   {"eventLogId", "text", false, nullptr},
                   {"tenantId", "text", false, nullptr},
                   {"eventType", "text", false, nullptr},
                   {"payload", "jsonb", false, nullptr},
                   {"status", "OutboxStatus", false, "'PENDING'"},
                   {"retryCount", "integer", false, "0"},
                   {"maxRetries", "integer", false, "5"},
                   {"nextRetryAt", "timestamp with time zone", true, nullptr},
                   {"lastError", "text", true, nullptr},
                   {"processedAt", "timestamp with time zone", true, nullptr},
                   {"createdAt", "timestamp with time zone", false, ""},
                   {"updatedAt", "timestamp with time zone", false, nullptr}});
    check_columns(db, "DlqEventLog",
                  {{"id", "text", false, nullptr},
                   {"originalId", "text", false, nullptr},
                   {"eventKey", "text", false, nullptr},
                   {"tenantId", "text", false, nullptr},
                   {"projectId", "text", true, nullptr},
                   {"eventType", "text", false, nullptr},
                   {"payload", "jsonb", false, nullptr},
                   {"metadata", "jsonb", true, nullptr},
                   {"failureReason", "text", false, nullptr},
                   {"retryCount", "integer", false, nullptr},
                   {"failedAt", "timestamp with time zone", false, ""}});

    for (const char* table : {"EventLog", "Outbox", "DlqEventLog"}) {
        check_index(db, table, "id", true); // the primary key
        CHECK(db.count("SELECT count(*) FROM information_schema.table_constraints"
                       " WHERE table_name = '" +
                       std::string(table) + "' AND constraint_type = 'PRIMARY KEY'") == 1);
    }
    // "eventLogId" is deliberately not a foreign key: the application never declared one.
    CHECK(db.count("SELECT count(*) FROM information_schema.table_constraints"
                   " WHERE table_name IN ('EventLog', 'Outbox', 'DlqEventLog')"
                   "   AND constraint_type = 'FOREIGN KEY'") == 0);

    CHECK(db.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = "
                    "'EventLog_eventKey_tenantId_unique'")
              .find("UNIQUE INDEX \"EventLog_eventKey_tenantId_unique\" ON public.\"EventLog\" "
                    "USING btree (\"eventKey\", \"tenantId\")") != std::string::npos);
    check_index(db, "EventLog", "eventKey,tenantId", true);
    check_index(db, "EventLog", "tenantId,eventType,createdAt");
    check_index(db, "EventLog", "correlationId");
    check_index(db, "EventLog", "createdAt");
    check_index(db, "Outbox", "status,nextRetryAt");
    check_index(db, "Outbox", "tenantId,status");
    check_index(db, "Outbox", "createdAt");
    check_index(db, "DlqEventLog", "tenantId,eventType");
    check_index(db, "DlqEventLog", "failedAt");
}

void check_versions_once(const TestDatabase& db) {
    CHECK(db.count("SELECT count(*) FROM outbox_worker_schema") ==
          static_cast<long>(outbox::embedded_migrations().size()));
    CHECK(db.count("SELECT count(DISTINCT version) FROM outbox_worker_schema") ==
          static_cast<long>(outbox::embedded_migrations().size()));
    CHECK(db.count("SELECT max(version) FROM outbox_worker_schema") ==
          outbox::latest_migration_version());
}

// Rows as the application writes them through Prisma: cuid-like text ids, "updatedAt" set by the
// client, none of the columns outbox-worker adds.
void insert_like_the_application(const TestDatabase& db, const std::string& suffix) {
    db.exec(
        R"(INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "projectId", "eventType", "payload", "metadata", "correlationId")
               VALUES ('clx0evl)" +
        suffix + R"(', 'order-)" + suffix + R"(', 'tenant-1', 'proj-1', 'shopify.order.created',
                       '{"orderId": ")" +
        suffix + R"(", "total": 12.5}', '{"source": "app"}', 'corr-)" + suffix + R"(')
    )");
    db.exec(
        R"(INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "updatedAt")
               VALUES ('clx0obx)" +
        suffix + R"(', 'clx0evl)" + suffix + R"(', 'tenant-1', 'shopify.order.created',
                       '{"orderId": ")" +
        suffix + R"(", "total": 12.5}', now())
    )");
    db.exec(
        R"(INSERT INTO "DlqEventLog" ("id", "originalId", "eventKey", "tenantId", "eventType", "payload", "failureReason", "retryCount")
               VALUES ('clx0dlq)" +
        suffix + R"(', 'clx0obxold', 'order-old)" + suffix +
        R"(', 'tenant-1', 'shopify.order.created',
                       '{}', 'downstream said no', 5)
    )");
}

} // namespace

TEST_CASE("migrate: an empty database gets the whole schema of SPEC 1", "[migrate]") {
    TestDatabase db;
    outbox::PgConn conn = db.connect();
    std::string error;
    CHECK(outbox::schema_version(conn.get(), error) == -1);
    CHECK(error.empty());

    outbox::MigrateOutcome outcome = outbox::migrate(conn.get());
    INFO(outcome.error);
    REQUIRE(outcome.ok);
    CHECK(outcome.applied.size() == outbox::embedded_migrations().size());
    CHECK(outcome.version == outbox::latest_migration_version());
    CHECK(outbox::schema_version(conn.get(), error) == outbox::latest_migration_version());

    check_calibr_schema(db);
    check_versions_once(db);
    CHECK(db.count("SELECT count(*) FROM pg_proc WHERE proname IN "
                   "('outbox_write_event', 'outbox_retry_dlq')") == 2);
}

TEST_CASE("migrate: a second run applies nothing and changes nothing", "[migrate]") {
    TestDatabase db;
    db.migrate();
    std::string tables_before = db.scalar(
        "SELECT string_agg(relname || ':' || relfilenode, ',' ORDER BY relname) FROM pg_class"
        " WHERE relname IN ('EventLog', 'Outbox', 'DlqEventLog')");

    outbox::PgConn conn = db.connect();
    outbox::MigrateOutcome again = outbox::migrate(conn.get());
    INFO(again.error);
    REQUIRE(again.ok);
    CHECK(again.applied.empty());
    CHECK(again.version == outbox::latest_migration_version());
    check_versions_once(db);
    CHECK(db.scalar("SELECT string_agg(relname || ':' || relfilenode, ',' ORDER BY relname) FROM "
                    "pg_class WHERE relname IN ('EventLog', 'Outbox', 'DlqEventLog')") ==
          tables_before);
}

TEST_CASE("migrate: two migrators at once both succeed and apply each version once", "[migrate]") {
    TestDatabase db;
    constexpr int kMigrators = 4;
    std::vector<outbox::MigrateOutcome> outcomes(kMigrators);
    std::vector<outbox::PgConn> connections;
    for (int i = 0; i < kMigrators; ++i) {
        connections.push_back(db.connect());
    }
    {
        std::vector<std::thread> threads;
        for (int i = 0; i < kMigrators; ++i) {
            threads.emplace_back([&, i] { outcomes[i] = outbox::migrate(connections[i].get()); });
        }
        for (auto& t : threads) {
            t.join();
        }
    }
    size_t applied = 0;
    for (const auto& o : outcomes) {
        INFO(o.error);
        CHECK(o.ok);
        CHECK(o.version == outbox::latest_migration_version());
        applied += o.applied.size();
    }
    // Whoever got the lock first did all the work; the others found nothing left to do.
    CHECK(applied == outbox::embedded_migrations().size());
    check_versions_once(db);
    check_calibr_schema(db);
}

TEST_CASE("migrate: two `outbox-worker migrate` processes at once", "[migrate][cli]") {
    TestDatabase db;
    outbox::test::SpawnOptions options;
    options.args = {"migrate"};
    options.env = {{"DATABASE_URL", db.url()}};
    options.inherit_environment = false;
    outbox::test::ChildProcess first(OUTBOX_BINARY, options);
    outbox::test::ChildProcess second(OUTBOX_BINARY, options);
    auto a = first.wait_exit(std::chrono::seconds(60));
    auto b = second.wait_exit(std::chrono::seconds(60));
    INFO(first.describe());
    INFO(second.describe());
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->exited_with(0));
    CHECK(b->exited_with(0));
    std::string out = first.stdout_text() + second.stdout_text();
    for (const auto& m : outbox::embedded_migrations()) {
        // Each migration is reported as applied by exactly one of them.
        std::string line = std::string("applied ") + m.name + "\n";
        size_t first_at = out.find(line);
        CHECK(first_at != std::string::npos);
        CHECK(out.find(line, first_at + 1) == std::string::npos);
    }
    check_versions_once(db);
}

TEST_CASE("migrate: an existing Calibr database keeps its data and its application keeps working",
          "[migrate]") {
    TestDatabase db;
    db.create_calibr_tables_like_the_application();
    insert_like_the_application(db, "a1");
    insert_like_the_application(db, "a2");
    const std::string rows_before = db.scalar(R"(SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
                       SELECT row("id", "eventKey", "tenantId", "projectId", "eventType", "payload", "metadata", "correlationId", "createdAt", "version")::text AS x FROM "EventLog"
                       UNION ALL SELECT row("id", "eventLogId", "tenantId", "eventType", "payload", "status", "retryCount", "maxRetries", "nextRetryAt", "lastError", "processedAt", "createdAt", "updatedAt")::text FROM "Outbox"
                       UNION ALL SELECT row("id", "originalId", "eventKey", "tenantId", "projectId", "eventType", "payload", "metadata", "failureReason", "retryCount", "failedAt")::text FROM "DlqEventLog") t)");
    const std::string storage_before = db.scalar(
        "SELECT string_agg(relname || ':' || relfilenode, ',' ORDER BY relname) FROM pg_class"
        " WHERE relname IN ('EventLog', 'Outbox', 'DlqEventLog')");
    const long app_indexes_before = db.count(
        "SELECT count(*) FROM pg_indexes WHERE tablename IN ('EventLog', 'Outbox', 'DlqEventLog')");

    db.migrate();

    // Additive only: the same rows, the same storage (no table rewrite), the application's
    // indexes kept and none duplicated, the application's own bookkeeping untouched.
    CHECK(db.scalar(R"(SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
                       SELECT row("id", "eventKey", "tenantId", "projectId", "eventType", "payload", "metadata", "correlationId", "createdAt", "version")::text AS x FROM "EventLog"
                       UNION ALL SELECT row("id", "eventLogId", "tenantId", "eventType", "payload", "status", "retryCount", "maxRetries", "nextRetryAt", "lastError", "processedAt", "createdAt", "updatedAt")::text FROM "Outbox"
                       UNION ALL SELECT row("id", "originalId", "eventKey", "tenantId", "projectId", "eventType", "payload", "metadata", "failureReason", "retryCount", "failedAt")::text FROM "DlqEventLog") t)") ==
          rows_before);
    CHECK(db.scalar("SELECT string_agg(relname || ':' || relfilenode, ',' ORDER BY relname) FROM "
                    "pg_class WHERE relname IN ('EventLog', 'Outbox', 'DlqEventLog')") ==
          storage_before);
    CHECK(db.count("SELECT count(*) FROM pg_indexes WHERE tablename IN ('EventLog', 'Outbox', "
                   "'DlqEventLog') AND indexname NOT LIKE '%worker%'") == app_indexes_before);
    CHECK(db.count("SELECT count(*) FROM \"_prisma_migrations\"") == 1);
    check_calibr_schema(db);
    check_versions_once(db);

    // The application, unaware of the new columns, keeps inserting exactly as before.
    insert_like_the_application(db, "b1");
    CHECK(db.count(R"(SELECT count(*) FROM "EventLog")") == 3);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 3);
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 3);
    outbox::PgResult row = db.exec(
        R"(SELECT "status", "retryCount", "maxRetries", "nextRetryAt" IS NULL, "lastError" IS NULL,
                  "processedAt" IS NULL, "createdAt" <= now(), "updatedAt" <= now()
             FROM "Outbox" WHERE "id" = 'clx0obxb1')");
    REQUIRE(row.rows() == 1);
    CHECK(row.value(0, 0) == "PENDING");
    CHECK(row.value(0, 1) == "0");
    CHECK(row.value(0, 2) == "5");
    for (int col = 3; col < 8; ++col) {
        CHECK(row.value(0, col) == "t");
    }
    // The pre-existing rows are due like any other.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "status" = 'PENDING'
                       AND ("nextRetryAt" IS NULL OR "nextRetryAt" <= now()))") == 3);

    // And the service's writer works on the application's tables.
    std::string written = db.scalar(
        "SELECT outbox_id FROM outbox_write_event('order-c1', 'tenant-1', 'shopify.order.created',"
        " '{}'::jsonb)");
    CHECK_FALSE(written.empty());
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 4);
}
