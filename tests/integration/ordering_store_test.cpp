// Ordering per key (SPEC 2a) at the level of the relay's statements, against a real PostgreSQL:
// concurrent writers whose transactions overlap, and concurrent claimers that take, retry,
// release and complete events with the supervisor's own SQL (supervisor/queries.h). Whatever the
// interleaving, a key never has two events claimed at once, and its events are delivered in the
// order of the numbers the insert trigger gave them, numbers drawn for rows that were never
// inserted (holes) included. The whole service under fire (instances
// killed, PostgreSQL restarted, commit order checked against commit timestamps) is the chaos
// test's ordered phase; this one isolates the SQL, where the locking argument of migration 004
// lives, and runs thousands of claims in a few seconds.
#include "supervisor/claimed_event.h"
#include "supervisor/queries.h"
#include "tests/support/pg_fixture.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

using namespace outbox;
using namespace outbox::test;

namespace {

// Catch2's assertions are not thread-safe: the threads below report failures by throwing, and
// run_thread turns what they throw into a line of the ledger for the test's own thread to check.
PgResult exec_ok(PGconn* conn, const char* sql,
                 const std::vector<std::optional<std::string>>& p = {}) {
    PgResult r = pg_exec_params(conn, sql, p);
    if (!r.ok()) {
        throw std::runtime_error(r.error());
    }
    return r;
}

long to_long(std::string_view text) {
    long value = 0;
    std::from_chars(text.data(), text.data() + text.size(), value);
    return value;
}

// What the claimers have seen, checked under one mutex.
struct Ledger {
    std::mutex mutex;
    std::map<std::string, std::string> in_flight; // key -> event id
    std::map<std::string, long> delivered;        // key -> highest number completed
    std::vector<std::string> violations;
    std::vector<std::string> errors;
    long completed = 0; // attempts that ended their event: completed, or dead-lettered

    template <typename Body>
    std::thread run_thread(Body body) {
        return std::thread([this, body] {
            try {
                body();
            } catch (const std::exception& e) {
                std::lock_guard lock(mutex);
                errors.push_back(e.what());
            }
        });
    }

    void claimed(const std::string& key, long seq, const std::string& id) {
        std::lock_guard lock(mutex);
        auto [it, fresh] = in_flight.emplace(key, id);
        if (!fresh) {
            violations.push_back("key " + key + ": " + id + " claimed while " + it->second +
                                 " was in flight");
        }
        // Numbers drawn for rows that were never inserted are holes: the next event's number is
        // higher than the last delivered, never lower or equal.
        long last = delivered[key];
        if (seq <= last) {
            violations.push_back("key " + key + ": claimed number " + std::to_string(seq) +
                                 " after " + std::to_string(last) + " was delivered");
        }
    }
    // Called BEFORE the statement that ends the attempt is sent: once it commits, another
    // claimer may take the key's next event at once.
    void ended(const std::string& key, long seq, bool success) {
        std::lock_guard lock(mutex);
        in_flight.erase(key);
        if (success) {
            delivered[key] = seq;
            ++completed;
        }
    }
};

void run_scenario(bool delete_mode) {
    TestDatabase db;
    db.migrate();
    constexpr int kKeys = 12;
    constexpr int kWriters = 4;
    constexpr int kTransactionsPerWriter = 60;
    constexpr int kClaimers = 4;
    std::atomic<int> writers_left{kWriters};
    std::atomic<long> written{0};
    Ledger ledger;

    std::vector<std::thread> threads;
    for (int w = 0; w < kWriters; ++w) {
        PgConn conn = db.connect();
        threads.push_back(ledger.run_thread([&, w,
                                             conn = std::make_shared<PgConn>(std::move(conn))] {
            // However this writer ends, the claimers must learn that it has.
            struct Done {
                std::atomic<int>& left;
                ~Done() { --left; }
            } done{writers_left};
            std::mt19937 rng(1000 + w);
            for (int t = 0; t < kTransactionsPerWriter; ++t) {
                exec_ok(conn->get(), "BEGIN");
                int events = 1 + static_cast<int>(rng() % 3);
                // Keys in ascending order within a transaction, as the README advises, so that
                // writers of several keys cannot deadlock on the keys' locks.
                std::vector<int> keys;
                for (int e = 0; e < events; ++e) {
                    keys.push_back(static_cast<int>(rng() % kKeys));
                }
                std::sort(keys.begin(), keys.end());
                for (int k : keys) {
                    std::string n = std::to_string(written.fetch_add(1));
                    exec_ok(conn->get(),
                            "SELECT outbox_write_event($1, 't', 'ordered.test', '{}', "
                            "p_ordering_key => $2)",
                            {"ev-" + n, "key-" + std::to_string(k)});
                }
                if (rng() % 6 == 0) {
                    // An application re-inserting an existing row idempotently: the insert
                    // trigger draws a number for a row that is never inserted, a hole. (In
                    // delete mode the row may be gone by then: the insert then writes a new
                    // event, which is counted.)
                    written +=
                        exec_ok(conn->get(),
                                R"(INSERT INTO "Outbox" (id, "eventLogId", "tenantId", "eventType",
                                                     payload, "updatedAt", "orderingKey")
                               SELECT id, "eventLogId", "tenantId", "eventType", payload, now(),
                                      "orderingKey"
                                 FROM "Outbox" WHERE "orderingKey" = $1 LIMIT 1
                               ON CONFLICT (id) DO NOTHING RETURNING id)",
                                {"key-" + std::to_string(keys.front())})
                            .rows();
                }
                // Hold the transaction open a little so that writers of one key overlap.
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
                exec_ok(conn->get(), "COMMIT");
            }
        }));
    }
    std::atomic<long> next_token{1};
    std::atomic<long> parked_seen{0};
    for (int c = 0; c < kClaimers; ++c) {
        PgConn conn = db.connect();
        threads.push_back(ledger.run_thread([&, c,
                                             conn = std::make_shared<PgConn>(std::move(conn))] {
            // Under the skip policy a dead letter releases its key like a success.
            exec_ok(conn->get(), "SET outbox_worker.on_dead_letter = 'skip'");
            std::mt19937 rng(2000 + c);
            int idle_rounds = 0;
            while (true) {
                long token = next_token.fetch_add(1);
                PgResult claim =
                    exec_ok(conn->get(), sql::kClaim,
                            {"claimer-" + std::to_string(c), std::to_string(1 + rng() % 8),
                             std::nullopt, std::to_string(token), "60000"});
                std::vector<std::string> ids;
                for (int r = 0; r < claim.rows(); ++r) {
                    if (claim.value(r, kClaimColumns) == "f") {
                        ++parked_seen;
                    } else {
                        ids.push_back(claim.value(r, 0));
                    }
                }
                if (ids.empty()) {
                    if (writers_left == 0 && ++idle_rounds > 50) {
                        break;
                    }
                    std::this_thread::sleep_for(std::chrono::milliseconds(1));
                    continue;
                }
                idle_rounds = 0;
                PgResult rows = exec_ok(conn->get(),
                                        R"(SELECT "id", "orderingKey", "orderingSeq" FROM "Outbox"
                                            WHERE "id" = ANY ($1::text[]))",
                                        {pg_text_array(ids)});
                if (rows.rows() != static_cast<int>(ids.size())) {
                    throw std::runtime_error("claimed events not found");
                }
                for (int r = 0; r < rows.rows(); ++r) {
                    ledger.claimed(rows.value(r, 1), to_long(rows.view(r, 2)), rows.value(r, 0));
                }
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
                for (int r = 0; r < rows.rows(); ++r) {
                    const std::string id = rows.value(r, 0);
                    const std::string key = rows.value(r, 1);
                    const long seq = to_long(rows.view(r, 2));
                    const std::string tok = std::to_string(token);
                    switch (rng() % 12) {
                    case 2: // dead-lettered: the key moves on (policy skip)
                        ledger.ended(key, seq, true);
                        exec_ok(conn->get(), sql::kRecordResults,
                                {pg_text_array(std::vector<std::string>{id}),
                                 pg_text_array(std::vector<std::string>{tok}), "{2}", "{poison}",
                                 "{0}", "{NULL}"});
                        break;
                    case 0:
                    case 1: // a failed attempt: back to PENDING, due at once
                        ledger.ended(key, seq, false);
                        exec_ok(conn->get(), sql::kRecordResults,
                                {pg_text_array(std::vector<std::string>{id}),
                                 pg_text_array(std::vector<std::string>{tok}), "{1}", "{boom}",
                                 "{0}", "{NULL}"});
                        break;
                    case 3: // released unstarted (draining)
                        ledger.ended(key, seq, false);
                        exec_ok(conn->get(), sql::kRelease,
                                {pg_text_array(std::vector<std::string>{id}),
                                 pg_text_array(std::vector<std::string>{tok})});
                        break;
                    default:
                        ledger.ended(key, seq, true);
                        exec_ok(conn->get(),
                                delete_mode ? sql::kDeleteSuccesses : sql::kRecordSuccesses,
                                {pg_text_array(std::vector<std::string>{id}),
                                 pg_text_array(std::vector<std::string>{tok})});
                    }
                }
            }
        }));
    }
    for (auto& t : threads) {
        t.join();
    }
    INFO("first error: " << (ledger.errors.empty() ? "" : ledger.errors.front()));
    CHECK(ledger.errors.empty());
    INFO("first violations: " << (ledger.violations.empty() ? "" : ledger.violations.front()));
    CHECK(ledger.violations.empty());
    CHECK(ledger.completed == written.load());
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox"
                       WHERE "status" NOT IN ('COMPLETED', 'FAILED'))") == 0);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "status" = 'FAILED')") ==
          db.count(R"(SELECT count(*) FROM "DlqEventLog" WHERE "orderingKey" IS NOT NULL)"));
    // Every key delivered up to its last number, and no event left parked.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "orderingParked")") == 0);
    // The scenario must have made holes and parked events, or it proved nothing about them.
    CHECK(db.count(R"(SELECT (SELECT sum(last_seq) FROM outbox_worker_ordering_seq)
                           - (SELECT count(*) FROM "Outbox" WHERE "orderingKey" IS NOT NULL))") >
          0);
    CHECK(parked_seen.load() > 0);
}

} // namespace

TEST_CASE("ordering: concurrent writers and claimers keep one event per key in flight, in order",
          "[ordering][store]") {
    SECTION("keep") {
        run_scenario(false);
    }
    SECTION("delete") {
        run_scenario(true);
    }
}
