// The relay's statements (supervisor/relay_store.h) against a real PostgreSQL: claiming, fencing
// by the claim's token, telling an outcome recorded before from a lost lease, dead letters in the
// same transaction, and both completion modes. The relay itself is tested with fakes
// (tests/unit/relay_test.cpp); this is the other half: what the statements do to the rows.
#include "supervisor/db_connection.h"
#include "supervisor/relay_store.h"
#include "tests/integration/engine_support.h"

#include <uv.h>

using namespace outbox;
using namespace outbox::test;

namespace {

struct StoreHarness {
    uv_loop_t loop{};
    std::optional<DbConnection> claim_db, result_db;
    std::optional<std::string> patterns; // every type
    std::optional<PgRelayStore> store;
    int connected = 0;

    StoreHarness(const TestDatabase& db, OnComplete mode) {
        uv_loop_init(&loop);
        DbConnection::Callbacks callbacks;
        callbacks.on_connected = [this] {
            ++connected;
        };
        claim_db.emplace(&loop, db.conninfo(), "claim", "", callbacks);
        result_db.emplace(&loop, db.conninfo(), "results", "", callbacks);
        claim_db->start();
        result_db->start();
        REQUIRE(run([this] { return connected == 2; }));
        store.emplace(PgRelayStore::Options{"test-instance", 30000, mode}, *claim_db, *result_db,
                      patterns);
    }
    ~StoreHarness() {
        int closed = 0;
        claim_db->close([&closed] { ++closed; });
        result_db->close([&closed] { ++closed; });
        run([&closed] { return closed == 2; });
        store.reset();
        claim_db.reset();
        result_db.reset();
        uv_run(&loop, UV_RUN_NOWAIT);
        uv_loop_close(&loop);
    }

    bool run(const std::function<bool()>& done) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!done()) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            uv_run(&loop, UV_RUN_ONCE);
        }
        return true;
    }

    ClaimBatch claim_batch(int limit, int64_t token) {
        std::optional<ClaimBatch> got;
        store->claim(limit, token, [&](StoreStatus s, ClaimBatch batch) {
            INFO(s.error);
            REQUIRE(s.ok);
            got = std::move(batch);
        });
        REQUIRE(run([&] { return got.has_value(); }));
        return std::move(*got);
    }
    std::vector<ClaimedEvent> claim(int limit, int64_t token) {
        return claim_batch(limit, token).events;
    }

    // Records `rows` and returns what was not applied: (input index, recorded before).
    std::vector<std::pair<size_t, bool>> record(const std::vector<OutcomeRow>& rows) {
        std::optional<std::vector<std::pair<size_t, bool>>> got;
        store->record(rows, [&](StoreStatus s, std::vector<std::pair<size_t, bool>> not_applied) {
            INFO(s.error);
            REQUIRE(s.ok);
            got = std::move(not_applied);
        });
        REQUIRE(run([&] { return got.has_value(); }));
        return *got;
    }
};

std::vector<OutcomeRow> successes(const std::vector<ClaimedEvent>& events, int64_t token) {
    std::vector<OutcomeRow> rows;
    for (const auto& e : events) {
        rows.push_back({&e.id, token, OutcomeKind::success, nullptr, 0});
    }
    return rows;
}

} // namespace

TEST_CASE("relay store: successes are recorded once, fenced by the claim's token", "[store]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "store.ok", 5);
    StoreHarness h(db, OnComplete::keep);
    auto events = h.claim(10, 41);
    REQUIRE(events.size() == 5);
    CHECK(db.count(kProcessing) == 5);
    CHECK(events[0].retry_count == 0);
    CHECK(events[0].max_retries == 5);
    CHECK(events[0].event_type == "store.ok");

    // A stale claim's token (another claim of the same rows) changes nothing.
    auto stale = successes(events, 40);
    auto lost = h.record(stale);
    CHECK(lost.size() == 5);
    for (auto [i, already] : lost) {
        CHECK_FALSE(already);
    }
    CHECK(db.count(kProcessing) == 5);

    auto rows = successes(events, 41);
    CHECK(h.record(rows).empty());
    CHECK(db.count(kCompleted) == 5);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "processedAt" IS NULL)") == 0);
    // The same outcomes again (the answer to the first statement was lost): recorded before.
    auto again = h.record(rows);
    REQUIRE(again.size() == 5);
    for (auto [i, already] : again) {
        CHECK(already);
    }
}

TEST_CASE("relay store: a lease swept back to PENDING is lost, not recorded before", "[store]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "store.swept", 2);
    StoreHarness h(db, OnComplete::keep);
    auto events = h.claim(10, 7);
    REQUIRE(events.size() == 2);
    // The sweep returns an expired row to due and leaves the claim's token on it.
    db.exec(R"(UPDATE "Outbox" SET status = 'PENDING', "retryCount" = 1,
                   "lastError" = 'lease expired (owner test-instance)', "updatedAt" = now())");
    std::string err = "boom";
    std::vector<OutcomeRow> rows{{&events[0].id, 7, OutcomeKind::success, nullptr, 0},
                                 {&events[1].id, 7, OutcomeKind::retry, &err, 100}};
    auto lost = h.record(rows);
    REQUIRE(lost.size() == 2);
    CHECK_FALSE(lost[0].second);
    CHECK_FALSE(lost[1].second);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'PENDING')") == 2);
}

TEST_CASE("relay store: retries and dead letters in one statement, with the DLQ row", "[store]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "store.mixed", 3, 5, "m", R"({"n": 42})");
    StoreHarness h(db, OnComplete::keep);
    auto events = h.claim(10, 9);
    REQUIRE(events.size() == 3);
    std::string retry_err = "upstream 503";
    std::string dead_err = "rejected for good";
    std::vector<OutcomeRow> rows{{&events[0].id, 9, OutcomeKind::success, nullptr, 0},
                                 {&events[1].id, 9, OutcomeKind::retry, &retry_err, 60000},
                                 {&events[2].id, 9, OutcomeKind::dead_letter, &dead_err, 0}};
    CHECK(h.record(rows).empty());
    CHECK(db.scalar(R"(SELECT status FROM "Outbox" WHERE id = ')" + events[0].id + "'") ==
          "COMPLETED");
    CHECK(db.scalar(R"(SELECT status || ' ' || "retryCount" || ' ' || "lastError" FROM "Outbox"
                        WHERE id = ')" +
                    events[1].id + "'") == "PENDING 1 upstream 503");
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE id = ')" + events[1].id +
                   R"(' AND "nextRetryAt" > now() + interval '50 seconds')") == 1);
    CHECK(db.scalar(R"(SELECT status FROM "Outbox" WHERE id = ')" + events[2].id + "'") ==
          "FAILED");
    CHECK(db.scalar(R"(SELECT "failureReason" || ' ' || "retryCount" || ' ' || (payload->>'n')
                        FROM "DlqEventLog" WHERE "originalId" = ')" +
                    events[2].id + "'") == "rejected for good 1 42");
    // Re-sent after a lost answer: every one was recorded before, and no second DLQ row.
    auto again = h.record(rows);
    REQUIRE(again.size() == 3);
    for (auto [i, already] : again) {
        CHECK(already);
    }
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 1);
}

TEST_CASE("relay store: OUTBOX_ON_COMPLETE=delete deletes successes, keeps failures", "[store]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "store.del", 4);
    StoreHarness h(db, OnComplete::remove);
    auto events = h.claim(10, 3);
    REQUIRE(events.size() == 4);
    // All successes: the short statement.
    std::vector<ClaimedEvent> first(events.begin(), events.begin() + 2);
    auto rows = successes(first, 3);
    CHECK(h.record(rows).empty());
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 2);
    auto again = h.record(rows);
    REQUIRE(again.size() == 2);
    CHECK(again[0].second);
    // Mixed: a success with a stale token (lost), a success and a dead letter.
    std::string err = "no";
    std::vector<OutcomeRow> mixed{{&events[2].id, 2, OutcomeKind::success, nullptr, 0},
                                  {&events[3].id, 3, OutcomeKind::dead_letter, &err, 0},
                                  {&events[2].id, 3, OutcomeKind::success, nullptr, 0}};
    auto lost = h.record(mixed);
    REQUIRE(lost.size() == 1);
    CHECK(lost[0].first == 0);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 1);
    CHECK(db.scalar(R"(SELECT status FROM "Outbox")") == "FAILED");
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 1);
    CHECK(db.count(R"(SELECT count(*) FROM "EventLog")") == 4);
}
