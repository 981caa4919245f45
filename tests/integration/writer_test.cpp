// Writing events (SPEC 2, "Writing events"): the SQL function outbox_write_event() inside the
// caller's transaction, and outbox::EventWriter over it, with idempotent duplicates.
#include "common/pg.h"
#include "tests/support/pg_fixture.h"
#include <outbox/outbox.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <set>
#include <thread>

using outbox::EventWriter;
using outbox::NewEvent;
using outbox::WriteError;
using outbox::WrittenEvent;
using outbox::test::TestDatabase;

namespace {

long event_logs(const TestDatabase& db) {
    return db.count(R"(SELECT count(*) FROM "EventLog")");
}
long outbox_rows(const TestDatabase& db) {
    return db.count(R"(SELECT count(*) FROM "Outbox")");
}

void exec_ok(PGconn* conn, const char* sql) {
    outbox::PgResult res = outbox::pg_exec(conn, sql);
    INFO(sql << ": " << res.error());
    REQUIRE(res.ok());
}

NewEvent event(std::string key, std::string tenant = "t1") {
    NewEvent e;
    e.eventKey = std::move(key);
    e.tenantId = std::move(tenant);
    e.eventType = "order.created";
    e.payload = R"({"n": 1})";
    return e;
}

} // namespace

TEST_CASE("writer SQL: outbox_write_event joins the caller's transaction", "[writer]") {
    TestDatabase db;
    db.migrate();
    outbox::PgConn conn = db.connect();
    const char* write = "SELECT event_log_id, outbox_id, duplicate FROM outbox_write_event("
                        "'k1', 't1', 'order.created', '{\"n\": 1}'::jsonb, 'p1',"
                        " '{\"m\": true}'::jsonb, 'c1', 7)";

    SECTION("rolled back: nothing is written") {
        exec_ok(conn.get(), "BEGIN");
        exec_ok(conn.get(), write);
        exec_ok(conn.get(), "ROLLBACK");
        CHECK(event_logs(db) == 0);
        CHECK(outbox_rows(db) == 0);
    }
    SECTION("committed: one EventLog row and one Outbox row") {
        exec_ok(conn.get(), "BEGIN");
        outbox::PgResult res = outbox::pg_exec(conn.get(), write);
        REQUIRE(res.ok());
        // Invisible to others until the caller commits.
        CHECK(event_logs(db) == 0);
        exec_ok(conn.get(), "COMMIT");
        REQUIRE(res.rows() == 1);
        CHECK(res.value(0, 2) == "f");
        CHECK(event_logs(db) == 1);
        CHECK(outbox_rows(db) == 1);
        outbox::PgResult row = db.exec(
            R"(SELECT e."id", o."id", e."eventKey", e."tenantId", e."projectId", e."eventType",
                      e."payload"::text, e."metadata"::text, e."correlationId", o."tenantId",
                      o."eventType", o."payload"::text, o."status", o."retryCount", o."maxRetries",
                      o."nextRetryAt" IS NULL, o."updatedAt" IS NOT NULL, e."version"
                 FROM "EventLog" e JOIN "Outbox" o ON o."eventLogId" = e."id")");
        REQUIRE(row.rows() == 1);
        CHECK(row.value(0, 0) == res.value(0, 0));
        CHECK(row.value(0, 1) == res.value(0, 1));
        CHECK(row.value(0, 2) == "k1");
        CHECK(row.value(0, 3) == "t1");
        CHECK(row.value(0, 4) == "p1");
        CHECK(row.value(0, 5) == "order.created");
        CHECK(row.value(0, 6) == R"({"n": 1})");
        CHECK(row.value(0, 7) == R"({"m": true})");
        CHECK(row.value(0, 8) == "c1");
        CHECK(row.value(0, 9) == "t1");
        CHECK(row.value(0, 10) == "order.created");
        CHECK(row.value(0, 11) == R"({"n": 1})");
        CHECK(row.value(0, 12) == "PENDING");
        CHECK(row.value(0, 13) == "0");
        CHECK(row.value(0, 14) == "7");
        CHECK(row.value(0, 15) == "t");
        CHECK(row.value(0, 16) == "t");
        CHECK(row.value(0, 17) == "1");
    }
}

TEST_CASE("writer SQL: a repeated (eventKey, tenantId) is a duplicate", "[writer]") {
    TestDatabase db;
    db.migrate();
    outbox::PgResult first = db.exec(
        "SELECT event_log_id, outbox_id, duplicate FROM outbox_write_event('k1', 't1', 'a', '{}')");
    outbox::PgResult second = db.exec(
        "SELECT event_log_id, outbox_id, duplicate FROM outbox_write_event('k1', 't1', 'b', "
        "'{\"other\": 1}')");
    CHECK(first.value(0, 2) == "f");
    CHECK(second.value(0, 2) == "t");
    CHECK(second.value(0, 0) == first.value(0, 0));
    CHECK(second.value(0, 1) == first.value(0, 1));
    CHECK(event_logs(db) == 1);
    CHECK(outbox_rows(db) == 1);
    // The first write wins: the duplicate changed nothing.
    CHECK(db.scalar(R"(SELECT "eventType" FROM "Outbox")") == "a");

    // The same key for another tenant is another event.
    outbox::PgResult other =
        db.exec("SELECT duplicate FROM outbox_write_event('k1', 't2', 'a', '{}')");
    CHECK(other.value(0, 0) == "f");
    CHECK(outbox_rows(db) == 2);
}

TEST_CASE("writer: EventWriter::write in the caller's transaction, duplicates", "[writer]") {
    TestDatabase db;
    db.migrate();
    outbox::PgConn conn = db.connect();
    EventWriter writer(conn.get());

    exec_ok(conn.get(), "BEGIN");
    WrittenEvent discarded = writer.write(event("k1"));
    CHECK_FALSE(discarded.duplicate);
    exec_ok(conn.get(), "ROLLBACK");
    CHECK(event_logs(db) == 0);
    CHECK(outbox_rows(db) == 0);

    NewEvent full = event("k1");
    full.projectId = "p9";
    full.metadata = R"({"source": "test"})";
    full.correlationId = "corr-9";
    full.maxRetries = 3;
    exec_ok(conn.get(), "BEGIN");
    WrittenEvent written = writer.write(full);
    exec_ok(conn.get(), "COMMIT");
    CHECK_FALSE(written.duplicate);
    CHECK_FALSE(written.eventLogId.empty());
    CHECK_FALSE(written.outboxId.empty());
    CHECK(written.outboxId != written.eventLogId);
    CHECK(event_logs(db) == 1);
    CHECK(outbox_rows(db) == 1);
    CHECK(
        db.scalar(
            R"(SELECT "projectId" || ' ' || "metadata"::text || ' ' || "correlationId" FROM "EventLog")") ==
        R"(p9 {"source": "test"} corr-9)");
    CHECK(db.scalar(R"(SELECT "maxRetries" FROM "Outbox")") == "3");
    CHECK(db.scalar(R"(SELECT "eventLogId" FROM "Outbox")") == written.eventLogId);

    // Outside any transaction the statement is its own.
    WrittenEvent again = writer.write(event("k1"));
    CHECK(again.duplicate);
    CHECK(again.eventLogId == written.eventLogId);
    CHECK(again.outboxId == written.outboxId);
    CHECK(outbox_rows(db) == 1);

    // Unset optional fields are NULL, and maxRetries falls back to the column default.
    WrittenEvent plain = writer.write(event("k2"));
    CHECK(
        db.scalar(
            R"(SELECT ("projectId" IS NULL AND "metadata" IS NULL AND "correlationId" IS NULL)::text FROM "EventLog" WHERE "id" = ')" +
            plain.eventLogId + "'") == "true");
    CHECK(db.scalar(R"(SELECT "maxRetries" FROM "Outbox" WHERE "id" = ')" + plain.outboxId + "'") ==
          "5");
}

TEST_CASE("writer: write_batch keeps the input order and reports duplicates in a batch",
          "[writer]") {
    TestDatabase db;
    db.migrate();
    outbox::PgConn conn = db.connect();
    EventWriter writer(conn.get());
    WrittenEvent existing = writer.write(event("old"));

    std::vector<NewEvent> batch;
    for (const char* key : {"k-c", "k-a", "old", "k-b", "k-a", "k-\"quoted\", {braces} \\ back"}) {
        batch.push_back(event(key));
    }
    batch[1].payload = R"({"text": "with \"quotes\", commas, {braces} and \\ backslashes"})";
    batch[3].metadata = R"(["m"])";
    batch[3].projectId = "p";
    batch[3].maxRetries = 9;
    std::vector<WrittenEvent> results = writer.write_batch(batch);
    REQUIRE(results.size() == batch.size());

    CHECK_FALSE(results[0].duplicate);
    CHECK_FALSE(results[1].duplicate);
    CHECK(results[2].duplicate); // written before the batch
    CHECK(results[2].outboxId == existing.outboxId);
    CHECK(results[2].eventLogId == existing.eventLogId);
    CHECK_FALSE(results[3].duplicate);
    CHECK(results[4].duplicate); // "k-a" again, within the batch
    CHECK(results[4].outboxId == results[1].outboxId);
    CHECK(results[4].eventLogId == results[1].eventLogId);
    CHECK_FALSE(results[5].duplicate);

    // Each result belongs to its input: the ids lead back to the event's own key.
    for (size_t i = 0; i < batch.size(); ++i) {
        INFO(i);
        CHECK(
            db.scalar(
                R"(SELECT e."eventKey" FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId" WHERE o."id" = ')" +
                results[i].outboxId + "'") == batch[i].eventKey);
    }
    CHECK(db.scalar(R"(SELECT "payload"->>'text' FROM "EventLog" WHERE "eventKey" = 'k-a')") ==
          R"(with "quotes", commas, {braces} and \ backslashes)");
    CHECK(
        db.scalar(
            R"(SELECT "metadata"::text || "projectId" FROM "EventLog" WHERE "eventKey" = 'k-b')") ==
        R"(["m"]p)");
    CHECK(db.scalar(R"(SELECT "maxRetries" FROM "Outbox" WHERE "id" = ')" + results[3].outboxId +
                    "'") == "9");
    CHECK(event_logs(db) == 5);
    CHECK(outbox_rows(db) == 5);

    CHECK(writer.write_batch({}).empty());
}

TEST_CASE("writer: concurrent writers of one key write exactly one event", "[writer]") {
    TestDatabase db;
    db.migrate();
    constexpr int kWriters = 8;
    std::vector<outbox::PgConn> connections;
    for (int i = 0; i < kWriters; ++i) {
        connections.push_back(db.connect());
    }
    std::vector<WrittenEvent> results(kWriters);
    std::vector<std::string> errors(kWriters);
    std::atomic<int> ready{0};
    {
        std::vector<std::thread> threads;
        for (int i = 0; i < kWriters; ++i) {
            threads.emplace_back([&, i] {
                EventWriter writer(connections[i].get());
                // Each writer holds its insert in an open transaction for a moment, so that the
                // others really meet it on the unique index rather than after its commit.
                outbox::PgResult begin = outbox::pg_exec(connections[i].get(), "BEGIN");
                ready.fetch_add(1);
                while (ready.load() < kWriters) {
                    std::this_thread::yield();
                }
                try {
                    results[i] = writer.write(event("same-key"));
                    outbox::PgResult sleep =
                        outbox::pg_exec(connections[i].get(), "SELECT pg_sleep(0.05)");
                    outbox::PgResult commit = outbox::pg_exec(connections[i].get(), "COMMIT");
                    if (!commit.ok()) {
                        errors[i] = commit.error();
                    }
                } catch (const WriteError& e) {
                    errors[i] = e.what();
                }
            });
        }
        for (auto& t : threads) {
            t.join();
        }
    }
    int originals = 0;
    std::set<std::string> outbox_ids;
    for (int i = 0; i < kWriters; ++i) {
        INFO(errors[i]);
        CHECK(errors[i].empty());
        originals += results[i].duplicate ? 0 : 1;
        outbox_ids.insert(results[i].outboxId);
    }
    CHECK(originals == 1);
    CHECK(outbox_ids.size() == 1);
    CHECK(event_logs(db) == 1);
    CHECK(outbox_rows(db) == 1);
}

TEST_CASE("writer: invalid input is a WriteError and writes nothing", "[writer]") {
    TestDatabase db;
    db.migrate();
    outbox::PgConn conn = db.connect();
    EventWriter writer(conn.get());

    NewEvent bad_payload = event("k1");
    bad_payload.payload = "{not json";
    CHECK_THROWS_WITH(writer.write(bad_payload),
                      Catch::Contains("payload is not valid JSON") && Catch::Contains("k1"));

    NewEvent bad_metadata = event("k2");
    bad_metadata.metadata = "[1,";
    CHECK_THROWS_WITH(writer.write(bad_metadata), Catch::Contains("metadata is not valid JSON"));

    std::vector<NewEvent> batch = {event("b1"), event("b2"), event("b3")};
    batch[2].payload = "{\"a\": }";
    CHECK_THROWS_WITH(writer.write_batch(batch), Catch::Contains("event 2") &&
                                                     Catch::Contains("b3") &&
                                                     Catch::Contains("payload is not valid JSON"));

    // Bytes that are not UTF-8 inside a JSON string: PostgreSQL refuses them, the writer says so.
    NewEvent bad_utf8 = event("k4");
    bad_utf8.payload = "{\"name\": \"caf\xe9\"}";
    CHECK_THROWS_WITH(writer.write(bad_utf8), Catch::Contains("UTF8") || Catch::Contains("UTF-8"));

    NewEvent bad_retries = event("k3");
    bad_retries.maxRetries = 0;
    CHECK_THROWS_AS(writer.write(bad_retries), WriteError);
    CHECK_THROWS_WITH(writer.write(bad_retries), Catch::Contains("maxRetries"));

    std::vector<NewEvent> batch_with_bad_retries = {event("r1"), event("r2")};
    batch_with_bad_retries[1].maxRetries = -1;
    CHECK_THROWS_AS(writer.write_batch(batch_with_bad_retries), WriteError);

    CHECK(event_logs(db) == 0);
    CHECK(outbox_rows(db) == 0);
}
