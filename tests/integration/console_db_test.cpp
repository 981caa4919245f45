// The console's database side (migration 005, supervisor/queries.h, supervisor/console_query.h):
// the plans of every statement form the console sends use indexes on a table big enough for the
// planner to mean it; the batch function of the dead-letter actions; the claim passing over
// paused types.
#include "common/pg.h"
#include "supervisor/console_query.h"
#include "supervisor/queries.h"
#include "tests/integration/engine_support.h"

#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <vector>

using namespace outbox;
using namespace outbox::test;

namespace {

// 50,000 events over 20 types, 50 tenants and every status, a tenth of them ordered, with their
// EventLog rows; 20,000 dead letters; some blocked keys; then ANALYZE. With fewer rows the planner
// rightly prefers reading a small table whole, which says nothing about a production table.
void fill_large_tables(const TestDatabase& db) {
    db.exec(R"(
INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType", "payload", "createdAt")
SELECT 'evl_' || g, 'key-' || g, 'tenant-' || (g % 50), 'type-' || (g % 20), '{}'::jsonb,
       now() - (g || ' seconds')::interval
  FROM generate_series(1, 50000) g;
INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "status",
                      "createdAt", "updatedAt", "nextRetryAt", "processedAt", "leaseOwner",
                      "leaseExpiresAt", "orderingKey")
SELECT 'obx_' || g, 'evl_' || g, 'tenant-' || (g % 50), 'type-' || (g % 20), '{}'::jsonb,
       (CASE WHEN g % 100 = 0 THEN 'PENDING' WHEN g % 100 = 1 THEN 'FAILED'
             WHEN g % 500 = 2 THEN 'PROCESSING' ELSE 'COMPLETED' END)::"OutboxStatus",
       now() - (g || ' seconds')::interval, now(), NULL,
       CASE WHEN g % 100 > 1 THEN now() END,
       CASE WHEN g % 500 = 2 THEN 'host-' || (g % 3) END,
       CASE WHEN g % 500 = 2 THEN now() + interval '30 seconds' END,
       CASE WHEN g % 10 = 0 THEN 'ok-' || (g % 700) END
  FROM generate_series(1, 50000) g;
INSERT INTO "DlqEventLog" ("id", "originalId", "eventKey", "tenantId", "eventType", "payload",
                           "failureReason", "retryCount", "failedAt")
SELECT 'dlq_' || g, 'obx_' || g, 'key-' || g, 'tenant-' || (g % 50), 'type-' || (g % 20),
       '{}'::jsonb, 'boom ' || (g % 7) || E'\nstack', 5, now() - (g || ' seconds')::interval
  FROM generate_series(1, 20000) g;
INSERT INTO outbox_worker_ordering_head (key, done_seq, blocked_since)
SELECT 'ok-' || g, 0, CASE WHEN g % 10 = 0 THEN now() - (g || ' seconds')::interval END
  FROM generate_series(0, 699) g
ON CONFLICT (key) DO UPDATE SET blocked_since = EXCLUDED.blocked_since;
INSERT INTO outbox_worker_paused ("eventType", "pausedBy") VALUES ('type-3', 'test');
ANALYZE;
)");
}

// The EXPLAIN of a statement as the service's sessions plan it (custom plans, parameters known).
std::string explain(PGconn* conn, const std::string& sql,
                    const std::vector<std::optional<std::string>>& params) {
    PgResult res = pg_exec_params(conn, ("EXPLAIN (FORMAT JSON) " + sql).c_str(), params);
    INFO(sql);
    REQUIRE(res.ok());
    return res.value(0, 0);
}

void check_no_seq_scan(const std::string& plan, const std::string& what) {
    INFO(what << "\n" << plan);
    for (const char* table : {"\"Outbox\"", "\"EventLog\"", "\"DlqEventLog\""}) {
        // A sequential scan shows as "Node Type": "Seq Scan" followed by its "Relation Name".
        size_t at = 0;
        while ((at = plan.find("\"Seq Scan\"", at)) != std::string::npos) {
            size_t relation = plan.find("\"Relation Name\"", at);
            size_t next_node = plan.find("\"Node Type\"", at + 1);
            bool this_node = relation != std::string::npos &&
                             (next_node == std::string::npos || relation < next_node);
            if (this_node) {
                size_t value = plan.find(':', relation);
                std::string name = plan.substr(value + 1, plan.find(',', value) - value - 1);
                std::string bare = std::string(table).substr(1, std::string(table).size() - 2);
                CHECK(name.find("\"" + bare + "\"") == std::string::npos);
            }
            at += 10;
        }
    }
}

console::ParamLookup lookup(std::map<std::string, std::string> values) {
    return [values = std::move(values)](std::string_view name) -> std::optional<std::string> {
        auto it = values.find(std::string(name));
        if (it == values.end() || it->second.empty()) {
            return std::nullopt;
        }
        return it->second;
    };
}

} // namespace

TEST_CASE("console: every statement form the console sends avoids sequential scans",
          "[console][explain]") {
    TestDatabase db;
    db.migrate();
    fill_large_tables(db);
    // The index an operator creates for search by event key (migration 005's header): the event
    // key forms below are checked with it, as the console sends them only when it exists.
    db.exec(R"(CREATE INDEX "Outbox_worker_eventLogId_idx" ON "Outbox" ("eventLogId");
               ANALYZE "Outbox")");
    PgConn conn = db.connect();
    PgResult setting = pg_exec(conn.get(), "SET plan_cache_mode = force_custom_plan");
    REQUIRE(setting.ok());

    std::string cursor_time =
        db.scalar(R"(SELECT to_char("createdAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                       FROM "Outbox" WHERE "id" = 'obx_1000')");
    std::string cursor = console::encode_cursor({cursor_time, "obx_1000"});

    std::vector<std::map<std::string, std::string>> event_forms = {
        {},
        {{"id", "obx_77"}},
        {{"status", "PENDING"}},
        {{"status", "PROCESSING"}},
        {{"status", "COMPLETED"}},
        {{"status", "FAILED"}},
        {{"type", "type-4"}},
        {{"type", "no-such-type"}},
        {{"tenant", "tenant-7"}},
        {{"tenant", "no-such-tenant"}},
        {{"eventKey", "key-123"}},
        {{"eventKey", "no-such-key"}},
        {{"orderingKey", "ok-10"}},
        {{"from", "2020-01-01"}},
        {{"to", "2020-01-01"}},
        {{"from", "2020-01-01"}, {"to", "2030-01-01T00:00:00Z"}},
        {{"after", cursor}},
        {{"type", "type-4"}, {"status", "FAILED"}, {"after", cursor}, {"limit", "200"}},
        {{"tenant", "tenant-7"}, {"type", "type-7"}, {"from", "2020-01-01"}},
    };
    for (const auto& form : event_forms) {
        console::ListRequest list = console::events_list_request(lookup(form));
        REQUIRE(list.query);
        check_no_seq_scan(explain(conn.get(), list.query->sql, list.query->params),
                          "events " + list.query->sql);
    }
    check_no_seq_scan(explain(conn.get(), sql::kConsoleEventDetail, {"obx_5"}), "event detail");

    std::string dlq_time =
        db.scalar(R"(SELECT to_char("failedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                       FROM "DlqEventLog" WHERE "id" = 'dlq_500')");
    std::string dlq_cursor = console::encode_cursor({dlq_time, "dlq_500"});
    std::vector<std::map<std::string, std::string>> dlq_forms = {
        {},
        {{"type", "type-2"}},
        {{"type", "no-such-type"}},
        {{"tenant", "tenant-3"}},
        {{"tenant", "no-such-tenant"}},
        {{"type", "type-2"}, {"tenant", "tenant-2"}},
        {{"reason", "boom 3"}},
        {{"reason", "no such reason"}},
        {{"after", dlq_cursor}},
        {{"type", "type-2"}, {"reason", "boom"}, {"after", dlq_cursor}, {"limit", "1"}},
    };
    for (const auto& form : dlq_forms) {
        console::ListRequest list = console::dlq_list_request(lookup(form));
        REQUIRE(list.query);
        check_no_seq_scan(explain(conn.get(), list.query->sql, list.query->params),
                          "dlq " + list.query->sql);
    }
    check_no_seq_scan(explain(conn.get(), sql::kConsoleDlqDetail, {"dlq_5"}), "dlq detail");
    check_no_seq_scan(explain(conn.get(), sql::kConsoleDlqApply,
                              {"retry", pg_text_array(std::vector<std::string>{"dlq_1", "dlq_2"})}),
                      "dlq apply by ids");
    std::string now = db.scalar(sql::kConsoleNow);
    for (std::vector<std::optional<std::string>> params :
         {std::vector<std::optional<std::string>>{"purge", now, std::nullopt, std::nullopt,
                                                  std::nullopt, std::nullopt, std::nullopt},
          {"retry", now, "type-2", std::nullopt, std::nullopt, dlq_time, "dlq_500"},
          {"skip", now, std::nullopt, "tenant-2", "boom", std::nullopt, std::nullopt},
          {"purge", now, "no-such-type", "no-such-tenant", "no such reason", std::nullopt,
           std::nullopt}}) {
        check_no_seq_scan(explain(conn.get(), sql::kConsoleDlqApplyBatch, params),
                          "dlq apply batch");
    }

    console::ListRequest keys = console::blocked_keys_request(lookup({}));
    REQUIRE(keys.query);
    check_no_seq_scan(explain(conn.get(), keys.query->sql, keys.query->params), "blocked keys");
    std::string key_time = db.scalar(
        R"(SELECT to_char(blocked_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
             FROM outbox_worker_ordering_head WHERE key = 'ok-100')");
    keys = console::blocked_keys_request(
        lookup({{"after", console::encode_cursor({key_time, "ok-100"})}}));
    REQUIRE(keys.query);
    check_no_seq_scan(explain(conn.get(), keys.query->sql, keys.query->params),
                      "blocked keys after a cursor");

    check_no_seq_scan(explain(conn.get(), sql::kConsolePaused, {}), "paused");
    check_no_seq_scan(explain(conn.get(), sql::kConsolePause, {"t", "127.0.0.1"}), "pause");
    check_no_seq_scan(explain(conn.get(), sql::kConsoleResume, {"t"}), "resume");
    // The janitor's read of the instances holding leases, every five seconds.
    check_no_seq_scan(explain(conn.get(), sql::kConsoleLeasesAndPaused, {}), "leases and paused");
    // And the claim, with its new test of the paused types.
    check_no_seq_scan(explain(conn.get(), sql::kClaim, {"me", "100", std::nullopt, "1", "30000"}),
                      "claim");
}

TEST_CASE("console: outbox_worker_dlq_apply reports each id and isolates failures", "[console]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "a", 3, 1);
    // Dead-letter all three by hand, as a failed last attempt would.
    db.exec(R"(
INSERT INTO "DlqEventLog" ("id", "originalId", "eventKey", "tenantId", "eventType", "payload",
                           "failureReason", "retryCount")
SELECT 'dlq_' || o."id", o."id", e."eventKey", o."tenantId", o."eventType", o."payload", 'boom', 1
  FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId";
UPDATE "Outbox" SET "status" = 'FAILED', "updatedAt" = now();
)");
    std::vector<std::string> ids;
    PgResult rows = db.exec(R"(SELECT "id" FROM "DlqEventLog" ORDER BY "id")");
    for (int i = 0; i < rows.rows(); ++i) {
        ids.push_back(rows.value(i, 0));
    }
    REQUIRE(ids.size() == 3);
    // The third entry's EventLog row disappears: its retry must fail alone.
    db.exec(R"(DELETE FROM "EventLog" WHERE "eventKey" = (SELECT "eventKey" FROM "DlqEventLog"
                 WHERE "id" = ')" +
            ids[2] + R"(');
               DELETE FROM "Outbox" WHERE "id" = (SELECT "originalId"
                 FROM "DlqEventLog" WHERE "id" = ')" +
            ids[2] + "')");

    PgConn conn = db.connect();
    PgResult r = pg_exec_params(
        conn.get(), sql::kConsoleDlqApply,
        {"retry", pg_text_array(std::vector<std::string>{ids[0], "nope", ids[2], ids[1]})});
    REQUIRE(r.ok());
    REQUIRE(r.rows() == 4);
    CHECK(r.value(0, 1) == "done");
    CHECK(r.value(0, 2).rfind("obx_", 0) == 0);
    CHECK(r.value(1, 0) == "nope");
    CHECK(r.value(1, 1) == "unknown");
    CHECK(r.value(2, 1) == "failed");
    CHECK(r.value(2, 2).find("no EventLog row") != std::string::npos);
    CHECK(r.value(3, 1) == "done");
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "status" = 'PENDING')") == 2);
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 1);

    PgResult purge =
        pg_exec_params(conn.get(), sql::kConsoleDlqApply,
                       {"purge", pg_text_array(std::vector<std::string>{ids[2], ids[2]})});
    REQUIRE(purge.ok());
    CHECK(purge.value(0, 1) == "done");
    CHECK(purge.value(1, 1) == "unknown");
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 0);

    PgResult bad = pg_exec_params(conn.get(), sql::kConsoleDlqApply,
                                  {"explode", pg_text_array(std::vector<std::string>{ids[0]})});
    CHECK_FALSE(bad.ok());
}

TEST_CASE("console: a paused type is not claimed, others are, and resuming releases it",
          "[console]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "paused.type", 5);
    write_events(db, "other.type", 5);
    db.exec(
        R"(INSERT INTO outbox_worker_paused ("eventType", "pausedBy") VALUES ('paused.type', 'test'))");
    PgConn conn = db.connect();
    PgResult claim =
        pg_exec_params(conn.get(), sql::kClaim, {"me", "100", std::nullopt, "1", "30000"});
    REQUIRE(claim.ok());
    CHECK(claim.rows() == 5);
    for (int i = 0; i < claim.rows(); ++i) {
        CHECK(claim.value(i, 3) == "other.type");
    }
    PgResult resume = pg_exec_params(conn.get(), sql::kConsoleResume, {"paused.type"});
    REQUIRE(resume.ok());
    CHECK(resume.value(0, 0) == "1");
    claim = pg_exec_params(conn.get(), sql::kClaim, {"me", "100", std::nullopt, "2", "30000"});
    REQUIRE(claim.ok());
    CHECK(claim.rows() == 5);
    CHECK(claim.value(0, 3) == "paused.type");
}

TEST_CASE("console: the claim walks its index for one batch whatever is paused",
          "[console][explain]") {
    // The case that went wrong: one event type, so the type's statistics say every row has it. The
    // paused test written as NOT EXISTS or "<> ALL (ARRAY(...))" was estimated to keep almost no
    // row, and the planner then read and sorted every PENDING row for each claim instead of taking
    // one batch from "Outbox_worker_claim_idx" (supervisor/queries.h, kClaim).
    TestDatabase db;
    db.migrate();
    db.exec(R"(
INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType", "payload")
SELECT 'evl_' || g, 'key-' || g, 'tenant', 'only.type', '{}'::jsonb
  FROM generate_series(1, 50000) g;
INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "updatedAt")
SELECT 'obx_' || g, 'evl_' || g, 'tenant', 'only.type', '{}'::jsonb, now()
  FROM generate_series(1, 50000) g;
ANALYZE;
)");
    PgConn conn = db.connect();
    REQUIRE(pg_exec(conn.get(), "SET plan_cache_mode = force_custom_plan").ok());
    auto check_claim_plan = [&](const char* what) {
        for (const std::optional<std::string>& patterns :
             {std::optional<std::string>(), std::optional<std::string>("{only.%}")}) {
            std::string plan =
                explain(conn.get(), sql::kClaim, {"me", "100", patterns, "1", "30000"});
            INFO(what << "\n" << plan);
            CHECK(plan.find("\"Outbox_worker_claim_idx\"") != std::string::npos);
            CHECK(plan.find("\"Sort\"") == std::string::npos);
            check_no_seq_scan(plan, what);
        }
    };
    check_claim_plan("nothing paused");
    db.exec(R"(INSERT INTO outbox_worker_paused ("eventType") VALUES ('other.type'); ANALYZE)");
    check_claim_plan("another type paused");
    db.exec(R"(INSERT INTO outbox_worker_paused ("eventType") VALUES ('only.type'); ANALYZE)");
    check_claim_plan("the only type paused");
}
