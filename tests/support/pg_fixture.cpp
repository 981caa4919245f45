#include "tests/support/pg_fixture.h"

#include "common/migrations.h"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>

namespace outbox::test {

namespace {

std::string random_hex(size_t length) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (size_t i = 0; i < length; ++i) {
        out += digits[rng() % 16];
    }
    return out;
}

// Every option OUTBOX_TEST_PG sets explicitly, by libpq keyword.
std::map<std::string, std::string> parse_conninfo(const std::string& conninfo) {
    char* error = nullptr;
    PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &error);
    if (options == nullptr) {
        std::string why = error ? error : "out of memory";
        PQfreemem(error);
        FAIL("OUTBOX_TEST_PG cannot be parsed: " << why);
    }
    std::map<std::string, std::string> out;
    for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
        if (o->val != nullptr) {
            out[o->keyword] = o->val;
        }
    }
    PQconninfoFree(options);
    return out;
}

std::string quote_conninfo_value(const std::string& value) {
    std::string out = "'";
    for (char c : value) {
        if (c == '\'' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    return out + "'";
}

std::string percent_encode(const std::string& value) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : value) {
        if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string to_key_value(const std::map<std::string, std::string>& options) {
    std::string out;
    for (const auto& [key, value] : options) {
        if (!out.empty()) {
            out += ' ';
        }
        out += key + "=" + quote_conninfo_value(value);
    }
    return out;
}

std::string to_uri(std::map<std::string, std::string> options) {
    auto take = [&](const char* key) {
        auto it = options.find(key);
        if (it == options.end()) {
            return std::string();
        }
        std::string value = it->second;
        options.erase(it);
        return value;
    };
    std::string user = take("user");
    std::string password = take("password");
    std::string host = take("host");
    std::string port = take("port");
    std::string dbname = take("dbname");

    std::string uri = "postgresql://";
    if (!user.empty()) {
        uri += percent_encode(user);
        if (!password.empty()) {
            uri += ":" + percent_encode(password);
        }
        uri += "@";
    }
    // A host that is a socket directory (or anything not a plain name) goes into the query
    // string, where libpq accepts any value.
    bool plain_host = !host.empty() && host.find_first_of("/,") == std::string::npos;
    if (plain_host) {
        uri += host.find(':') != std::string::npos ? "[" + host + "]" : host;
        if (!port.empty()) {
            uri += ":" + port;
        }
    } else {
        if (!host.empty()) {
            options["host"] = host;
        }
        if (!port.empty()) {
            options["port"] = port;
        }
    }
    uri += "/" + percent_encode(dbname);
    char separator = '?';
    for (const auto& [key, value] : options) {
        uri += separator + key + "=" + percent_encode(value);
        separator = '&';
    }
    return uri;
}

PgConn connect_or_fail(const std::string& conninfo, const char* what) {
    std::string error;
    PgConn conn = pg_connect(conninfo, error);
    if (!conn) {
        FAIL("cannot connect to " << what << " (" << mask_conninfo(conninfo) << "): " << error);
    }
    return conn;
}

// The same DDL an application's Prisma migration runs for the Calibr event bus ("migration.sql"
// as `prisma migrate` writes it), plus Prisma's own bookkeeping table, which a real deployment
// also has. Deliberately not shared with sql/migrations.
constexpr const char* kCalibrApplicationDdl = R"sql(
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
);

-- CreateEnum
CREATE TYPE "OutboxStatus" AS ENUM ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED');

-- CreateTable
CREATE TABLE "EventLog" (
    "id" TEXT NOT NULL,
    "eventKey" TEXT NOT NULL,
    "tenantId" TEXT NOT NULL,
    "projectId" TEXT,
    "eventType" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "metadata" JSONB,
    "correlationId" TEXT,
    "createdAt" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "version" INTEGER NOT NULL DEFAULT 1,

    CONSTRAINT "EventLog_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Outbox" (
    "id" TEXT NOT NULL,
    "eventLogId" TEXT NOT NULL,
    "tenantId" TEXT NOT NULL,
    "eventType" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "status" "OutboxStatus" NOT NULL DEFAULT 'PENDING',
    "retryCount" INTEGER NOT NULL DEFAULT 0,
    "maxRetries" INTEGER NOT NULL DEFAULT 5,
    "nextRetryAt" TIMESTAMPTZ(6),
    "lastError" TEXT,
    "processedAt" TIMESTAMPTZ(6),
    "createdAt" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMPTZ(6) NOT NULL,

    CONSTRAINT "Outbox_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "DlqEventLog" (
    "id" TEXT NOT NULL,
    "originalId" TEXT NOT NULL,
    "eventKey" TEXT NOT NULL,
    "tenantId" TEXT NOT NULL,
    "projectId" TEXT,
    "eventType" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "metadata" JSONB,
    "failureReason" TEXT NOT NULL,
    "retryCount" INTEGER NOT NULL,
    "failedAt" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "DlqEventLog_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "EventLog_tenantId_eventType_createdAt_idx" ON "EventLog"("tenantId", "eventType", "createdAt");

-- CreateIndex
CREATE INDEX "EventLog_correlationId_idx" ON "EventLog"("correlationId");

-- CreateIndex
CREATE INDEX "EventLog_createdAt_idx" ON "EventLog"("createdAt");

-- CreateIndex
CREATE UNIQUE INDEX "EventLog_eventKey_tenantId_unique" ON "EventLog"("eventKey", "tenantId");

-- CreateIndex
CREATE INDEX "Outbox_status_nextRetryAt_idx" ON "Outbox"("status", "nextRetryAt");

-- CreateIndex
CREATE INDEX "Outbox_tenantId_status_idx" ON "Outbox"("tenantId", "status");

-- CreateIndex
CREATE INDEX "Outbox_createdAt_idx" ON "Outbox"("createdAt");

-- CreateIndex
CREATE INDEX "DlqEventLog_tenantId_eventType_idx" ON "DlqEventLog"("tenantId", "eventType");

-- CreateIndex
CREATE INDEX "DlqEventLog_failedAt_idx" ON "DlqEventLog"("failedAt");

INSERT INTO "_prisma_migrations" ("id", "checksum", "finished_at", "migration_name", "applied_steps_count")
VALUES ('00000000-0000-4000-8000-000000000001', repeat('0', 64), now(), '20240101000000_event_bus', 1);
)sql";

} // namespace

std::string admin_conninfo() {
    const char* value = std::getenv("OUTBOX_TEST_PG");
    if (value == nullptr || *value == '\0') {
        FAIL("OUTBOX_TEST_PG is not set: run the integration tests through "
             "tests/run_with_postgres.sh (make test does), which starts a private PostgreSQL");
    }
    return value;
}

TestDatabase::TestDatabase() {
    static std::atomic<int> counter{0};
    std::string admin = admin_conninfo();
    name_ = "outbox_t_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" +
            random_hex(8);

    PgConn conn = connect_or_fail(admin, "OUTBOX_TEST_PG");
    PgResult created = pg_exec(conn.get(), "CREATE DATABASE \"" + name_ + "\"");
    if (!created.ok()) {
        FAIL("CREATE DATABASE " << name_ << " failed: " << created.error());
    }

    std::map<std::string, std::string> options = parse_conninfo(admin);
    options["dbname"] = name_;
    if (auto it = options.find("password"); it != options.end()) {
        password_ = it->second;
    }
    conninfo_ = to_key_value(options);
    url_ = to_uri(options);
    conn_ = connect_or_fail(conninfo_, "the test database");
}

TestDatabase::~TestDatabase() {
    conn_.reset();
    // No REQUIRE here: a destructor must not throw, and a failed drop does not make the test's
    // outcome wrong. It is reported so that leaks are visible.
    std::string error;
    const char* admin = std::getenv("OUTBOX_TEST_PG");
    PgConn conn = pg_connect(admin ? admin : "", error);
    if (!conn) {
        std::fprintf(stderr, "warning: cannot drop test database %s: %s\n", name_.c_str(),
                     error.c_str());
        return;
    }
    PgResult dropped =
        pg_exec(conn.get(), "DROP DATABASE IF EXISTS \"" + name_ + "\" WITH (FORCE)");
    if (!dropped.ok()) {
        std::fprintf(stderr, "warning: DROP DATABASE %s failed: %s\n", name_.c_str(),
                     dropped.error().c_str());
    }
}

PgConn TestDatabase::connect() const {
    return connect_or_fail(conninfo_, "the test database");
}

void TestDatabase::migrate() const {
    PgConn conn = connect();
    MigrateOutcome outcome = outbox::migrate(conn.get());
    INFO("migrate: " << outcome.error);
    REQUIRE(outcome.ok);
}

PgResult TestDatabase::exec(const std::string& sql) const {
    PgResult result = pg_exec(conn_.get(), sql);
    if (!result.ok() && PQstatus(conn_.get()) == CONNECTION_BAD) {
        // The server was restarted under the test (a restart test does that on purpose): one
        // reconnect, then the statement again.
        PQreset(conn_.get());
        result = pg_exec(conn_.get(), sql);
    }
    if (!result.ok()) {
        FAIL("SQL failed: " << result.error() << "\n" << sql);
    }
    return result;
}

std::string TestDatabase::scalar(const std::string& sql) const {
    PgResult result = exec(sql);
    if (result.rows() != 1 || result.columns() < 1) {
        FAIL("expected one row, got " << result.rows() << ":\n" << sql);
    }
    return result.is_null(0, 0) ? std::string() : result.value(0, 0);
}

long TestDatabase::count(const std::string& sql) const {
    std::string text = scalar(sql);
    char* end = nullptr;
    long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || end == nullptr || *end != '\0') {
        FAIL("expected a number, got \"" << text << "\":\n" << sql);
    }
    return value;
}

void TestDatabase::create_calibr_tables_like_the_application() const {
    exec(kCalibrApplicationDdl);
}

} // namespace outbox::test
