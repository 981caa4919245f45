// Ordering per key (SPEC 2a), black box: the example application's "example.ordered" handler
// records every attempt with its start and end (examples/app.cpp), and the tests compare that
// record with the order in which the writers' transactions committed, which they either arrange
// themselves or read from PostgreSQL's commit timestamps (ordering_support.h).
#include "tests/integration/ordering_support.h"

#include <atomic>
#include <filesystem>
#include <iostream>
#include <thread>

using namespace outbox::test;

namespace {

const std::string kType = "example.ordered";

std::string payload_of(const std::string& key, int j, const std::string& extra) {
    return R"({"key": ")" + key + R"(", "j": )" + std::to_string(j) +
           (extra.empty() ? "" : ", " + extra) + "}";
}

// Writes one event of ordering key `key` through outbox_write_event() on `conn`, inside whatever
// transaction it has open, and returns its Outbox id. For the test's own thread (REQUIREs).
std::string write_ordered(PGconn* conn, const std::string& event_key, const std::string& key,
                          int j = 0, const std::string& extra = "", int max_retries = 20,
                          const std::string& type = kType) {
    outbox::PgResult r = outbox::pg_exec_params(
        conn,
        "SELECT outbox_id FROM outbox_write_event($1, 'tenant-1', $2, $3::jsonb, NULL, NULL, "
        "NULL, $4::int, $5)",
        {event_key, type, payload_of(key, j, extra), std::to_string(max_retries), key});
    INFO(r.error());
    REQUIRE(r.ok());
    REQUIRE(r.rows() == 1);
    return r.value(0, 0);
}

// As an application that knows the columns and keeps its own clock: "EventLog" and "Outbox" rows
// inserted directly, "orderingKey" set, "createdAt" given.
std::string insert_ordered_with_created_at(PGconn* conn, const std::string& event_key,
                                           const std::string& key, const std::string& created_at) {
    outbox::PgResult r =
        outbox::pg_exec_params(conn, R"(
        WITH l AS (
            INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType", "payload",
                                    "createdAt")
            VALUES ('evl_' || md5($1), $1, 'tenant-1', $2, $3::jsonb, $5::timestamptz)
            RETURNING "id")
        INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload",
                              "maxRetries", "orderingKey", "createdAt", "updatedAt")
        SELECT 'obx_' || md5($1), l."id", 'tenant-1', $2, $3::jsonb, 20, $4, $5::timestamptz,
               now()
          FROM l
        RETURNING "id")",
                               {event_key, kType, payload_of(key, 0, ""), key, created_at});
    INFO(r.error());
    REQUIRE(r.ok());
    REQUIRE(r.rows() == 1);
    return r.value(0, 0);
}

void exec_on(PGconn* conn, const std::string& sql) {
    outbox::PgResult r = outbox::pg_exec(conn, sql);
    INFO(sql << ": " << r.error());
    REQUIRE(r.ok());
}

// The "ok" attempts of each key's events, by start time: the order the handler saw them in.
std::map<std::string, std::vector<std::string>>
delivered_by_key(const std::vector<Attempt>& attempts,
                 const std::map<std::string, std::string>& key_of) {
    std::vector<Attempt> ok;
    for (const auto& a : attempts) {
        if (a.outcome == "ok" && key_of.count(a.id) != 0) {
            ok.push_back(a);
        }
    }
    std::sort(ok.begin(), ok.end(),
              [](const Attempt& a, const Attempt& b) { return a.start_ns < b.start_ns; });
    std::map<std::string, std::vector<std::string>> out;
    for (const auto& a : ok) {
        out[key_of.at(a.id)].push_back(a.id);
    }
    return out;
}

std::string join(const std::vector<std::string>& ids) {
    std::string out;
    for (const auto& id : ids) {
        out += (out.empty() ? "" : " ") + id;
    }
    return out;
}

// The most attempts of any keys running at the same moment, from the record.
long max_concurrent_attempts(const std::vector<Attempt>& attempts) {
    std::vector<std::pair<int64_t, int>> edges;
    for (const auto& a : attempts) {
        edges.emplace_back(a.start_ns, +1);
        edges.emplace_back(a.end_ns, -1);
    }
    std::sort(edges.begin(), edges.end()); // an end before a start at the same instant
    long now = 0, most = 0;
    for (const auto& [t, d] : edges) {
        now += d;
        most = std::max(most, now);
    }
    return most;
}

// The events a supervisor's log says it released on draining ("released N claimed events that
// had not started"), summed over its lines.
long released_in_log(const std::string& log) {
    long total = 0;
    const std::string marker = "released ";
    for (size_t at = log.find(marker); at != std::string::npos; at = log.find(marker, at + 1)) {
        total += std::strtol(log.c_str() + at + marker.size(), nullptr, 10);
    }
    return total;
}

} // namespace

TEST_CASE("ordering: commit order decides, not createdAt", "[ordering]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("ordering-commit-order.txt");
    EnvMap env{{"EXAMPLE_RECORD_FILE", record}, {"EXAMPLE_HOLD_MS", "30"}};

    auto a = db.connect(), b = db.connect(), c = db.connect(), d = db.connect();
    std::map<std::string, std::vector<std::string>> expected; // per key, in commit order
    std::map<std::string, std::string> key_of;
    long writers_that_waited_for_a_key_lock = 0;
    // Five events of `key`, each committed after the one before, none of them in the order of
    // "createdAt": createdAt order is #2, #3, #1, #5, #4.
    auto write_key = [&](const std::string& key) {
        auto commit = [&](const std::string& id) {
            expected[key].push_back(id);
            key_of[id] = key;
        };
        exec_on(a.get(), "BEGIN");
        exec_on(a.get(), "SELECT now()"); // A's "createdAt" is its transaction's start, now
        std::string e1 = write_ordered(b.get(), key + "-1", key);
        commit(e1); // autocommit
        std::string e2 =
            insert_ordered_with_created_at(c.get(), key + "-2", key, "2000-01-01 00:00:00+00");
        commit(e2);
        std::string e3 = write_ordered(a.get(), key + "-3", key);
        exec_on(a.get(), "COMMIT");
        commit(e3);
        // B starts first; D writes the key and holds its transaction; B's write of the same key
        // waits for D's commit (the key's lock) and commits after it.
        exec_on(b.get(), "BEGIN");
        exec_on(b.get(), "SELECT now()");
        exec_on(d.get(), "BEGIN");
        std::string e4 = write_ordered(d.get(), key + "-4", key);
        outbox::PgResult b_result;
        std::atomic<bool> b_returned{false};
        std::thread b_writer([&] {
            b_result = outbox::pg_exec_params(
                b.get(),
                "SELECT outbox_id FROM outbox_write_event($1, 'tenant-1', $2, $3::jsonb, NULL, "
                "NULL, NULL, 20, $4)",
                {key + "-5", kType, payload_of(key, 0, ""), key});
            b_returned = true;
        });
        const std::string b_pid = std::to_string(PQbackendPID(b.get()));
        bool waited = wait_until(
            [&] {
                return b_returned || db.count("SELECT count(*) FROM pg_stat_activity WHERE pid = " +
                                              b_pid + " AND wait_event_type = 'Lock'") == 1;
            },
            10s);
        REQUIRE(waited);
        writers_that_waited_for_a_key_lock += b_returned ? 0 : 1;
        exec_on(d.get(), "COMMIT");
        commit(e4);
        b_writer.join();
        INFO(b_result.error());
        REQUIRE(b_result.ok());
        exec_on(b.get(), "COMMIT");
        commit(b_result.value(0, 0));
    };

    // Written before any instance runs, so that the claim sees every event of a key at once, and
    // then while two instances run, so that events arrive behind running heads.
    for (int k = 0; k < 4; ++k) {
        write_key("before-" + std::to_string(k));
    }
    Service one(db, env, OUTBOX_EXAMPLE_APP), two(db, env, OUTBOX_EXAMPLE_APP);
    REQUIRE(one.wait_ready());
    REQUIRE(two.wait_ready());
    for (int k = 0; k < 4; ++k) {
        write_key("live-" + std::to_string(k));
    }
    INFO(one.log() << two.log());
    REQUIRE(wait_for_count(db, kCompleted, 40));

    // The test discriminates: ordering by "createdAt" would give another order for every key.
    for (const auto& [key, ids] : expected) {
        outbox::PgResult r = db.exec(R"(SELECT "id" FROM "Outbox" WHERE "orderingKey" = ')" + key +
                                     R"(' ORDER BY "createdAt", "id")");
        std::vector<std::string> by_created_at;
        for (int i = 0; i < r.rows(); ++i) {
            by_created_at.push_back(r.value(i, 0));
        }
        CHECK(by_created_at != ids);
    }
    std::vector<Attempt> attempts = read_attempts(record);
    CHECK(attempts.size() == 40); // one attempt each: nothing failed
    auto delivered = delivered_by_key(attempts, key_of);
    for (const auto& [key, ids] : expected) {
        INFO("key " << key);
        CHECK(join(delivered[key]) == join(ids));
    }
    // PostgreSQL's commit timestamps say the same, and no two attempts of a key overlapped.
    CommitOrder order = read_commit_order(db);
    for (const auto& [key, ids] : expected) {
        CHECK(join(order.ids_by_key[key]) == join(ids));
    }
    KeyOrderReport report = check_key_order(order, attempts);
    INFO(describe(report));
    CHECK(report.order_violations == 0);
    CHECK(report.overlaps_unexplained == 0);
    std::cout << "ordering (commit order): " << writers_that_waited_for_a_key_lock
              << " of 8 writers waited for another's key lock; " << describe(report) << std::flush;

    stop_cleanly(one, db);
    stop_cleanly(two, db);
}

TEST_CASE("ordering: one event of a key at a time across instances, keys in parallel",
          "[ordering]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("ordering-one-at-a-time.txt");
    EnvMap env{{"EXAMPLE_RECORD_FILE", record},
               {"EXAMPLE_HOLD_MS", "10"},
               {"OUTBOX_WORKERS", "3"},
               {"OUTBOX_BATCH_SIZE", "10"}};
    const int keys = 12, rounds = 25;
    // Each round one transaction with one event of every key, the keys in a rotating order, on
    // alternating connections.
    auto a = db.connect(), b = db.connect();
    auto write_round = [&](int round) {
        PGconn* conn = round % 2 == 0 ? a.get() : b.get();
        exec_on(conn, "BEGIN");
        for (int i = 0; i < keys; ++i) {
            int k = (i + round) % keys;
            write_ordered(conn, "r" + std::to_string(round) + "-k" + std::to_string(k),
                          "k" + std::to_string(k), i);
        }
        exec_on(conn, "COMMIT");
    };
    for (int round = 0; round < 10; ++round) {
        write_round(round);
    }
    Service one(db, env, OUTBOX_EXAMPLE_APP), two(db, env, OUTBOX_EXAMPLE_APP),
        three(db, env, OUTBOX_EXAMPLE_APP);
    for (int round = 10; round < rounds; ++round) {
        write_round(round);
    }
    INFO(one.log() << two.log() << three.log());
    REQUIRE(wait_for_count(db, kCompleted, keys * rounds));

    std::vector<Attempt> attempts = read_attempts(record);
    CHECK(attempts.size() == static_cast<size_t>(keys * rounds));
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" > 0)") == 0);
    CommitOrder order = read_commit_order(db);
    KeyOrderReport report = check_key_order(order, attempts);
    INFO(describe(report));
    CHECK(report.order_violations == 0);
    CHECK(report.overlaps_unexplained == 0);
    // The same key's events went to different instances, and different keys ran at once: the
    // one-at-a-time above is not an accident of a single process doing everything.
    std::map<std::string, std::set<pid_t>> instances_of_key;
    for (const auto& at : attempts) {
        instances_of_key[order.by_id.at(at.id).key].insert(at.instance_pid);
    }
    long keys_on_several_instances =
        std::count_if(instances_of_key.begin(), instances_of_key.end(),
                      [](const auto& entry) { return entry.second.size() > 1; });
    long parallel = max_concurrent_attempts(attempts);
    std::cout << "ordering (one at a time): " << keys_on_several_instances << " of " << keys
              << " keys ran on more than one instance; at most " << parallel
              << " attempts at once; " << describe(report) << std::flush;
    CHECK(keys_on_several_instances > 0);
    CHECK(parallel > 1);

    stop_cleanly(one, db);
    stop_cleanly(two, db);
    stop_cleanly(three, db);
}

TEST_CASE("ordering: a failing head blocks its key and no other", "[ordering]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("ordering-blocked.txt");
    std::string gate = temp_path("ordering-gate");
    std::ofstream(gate) << "the head of key blocked fails while this file exists\n";
    EnvMap env{{"EXAMPLE_RECORD_FILE", record},
               {"EXAMPLE_HOLD_MS", "5"},
               {"OUTBOX_INITIAL_DELAY_MS", "100"},
               {"OUTBOX_MAX_DELAY_MS", "400"}};

    // The blocked key's head first (oldest commit and oldest "createdAt"), ten events behind it,
    // then 20 other keys with ten events each.
    auto conn = db.connect();
    std::string head = write_ordered(conn.get(), "blocked-head", "blocked", 0,
                                     R"("failWhileExists": ")" + gate + R"(")", 1000);
    std::vector<std::string> behind;
    for (int i = 1; i <= 10; ++i) {
        behind.push_back(write_ordered(conn.get(), "blocked-" + std::to_string(i), "blocked"));
    }
    exec_on(conn.get(), "BEGIN");
    for (int i = 0; i < 10; ++i) {
        for (int k = 0; k < 20; ++k) {
            write_ordered(conn.get(), "other-" + std::to_string(k) + "-" + std::to_string(i),
                          "other-" + std::to_string(k), i * 20 + k);
        }
    }
    exec_on(conn.get(), "COMMIT");

    Service one(db, env, OUTBOX_EXAMPLE_APP), two(db, env, OUTBOX_EXAMPLE_APP);
    INFO(one.log() << two.log());
    // Every other key is done while the head is still failing and being retried.
    REQUIRE(wait_for_count(
        db,
        R"(SELECT count(*) FROM "Outbox" WHERE "orderingKey" <> 'blocked' AND status = 'COMPLETED')",
        200));
    // The head is waiting for its next retry, or running it at this very moment.
    const std::string head_status =
        db.scalar(R"(SELECT status FROM "Outbox" WHERE "id" = ')" + head + "'");
    CHECK((head_status == "PENDING" || head_status == "PROCESSING"));
    long head_failures =
        db.count(R"(SELECT "retryCount" FROM "Outbox" WHERE "id" = ')" + head + "'");
    CHECK(head_failures >= 1);
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "orderingKey" = 'blocked' AND status <> 'PENDING'
                  AND "id" <> ')" +
            head + "'") == 0);
    // The key is reported as blocked, with its head and the ten events waiting.
    outbox::PgResult blocked = db.exec(
        "SELECT ordering_key, head_id, head_status, waiting FROM outbox_worker_blocked_keys");
    REQUIRE(blocked.rows() == 1);
    CHECK(blocked.value(0, 0) == "blocked");
    CHECK(blocked.value(0, 1) == head);
    CHECK((blocked.value(0, 2) == "PENDING" || blocked.value(0, 2) == "PROCESSING"));
    CHECK(blocked.value(0, 3) == "10");

    // The cause goes away: the head succeeds at its next retry and the rest follow in order.
    std::filesystem::remove(gate);
    REQUIRE(wait_for_count(db, kCompleted, 211));
    CHECK(db.count("SELECT count(*) FROM outbox_worker_blocked_keys") == 0);
    std::vector<Attempt> attempts = read_attempts(record);
    std::map<std::string, std::string> key_of{{head, "blocked"}};
    for (const auto& id : behind) {
        key_of[id] = "blocked";
    }
    std::vector<std::string> expected{head};
    expected.insert(expected.end(), behind.begin(), behind.end());
    CHECK(join(delivered_by_key(attempts, key_of)["blocked"]) == join(expected));
    KeyOrderReport report = check_key_order(read_commit_order(db), attempts);
    INFO(describe(report));
    CHECK(report.order_violations == 0);
    CHECK(report.overlaps_unexplained == 0);
    std::cout << "ordering (blocked key): the head failed " << head_failures
              << " times while 200 events of 20 other keys completed; " << describe(report)
              << std::flush;

    stop_cleanly(one, db);
    stop_cleanly(two, db);
}

TEST_CASE("ordering: a dead-lettered head blocks its key until it is skipped", "[ordering]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("ordering-dead-letter.txt");
    Service service(db, {{"EXAMPLE_RECORD_FILE", record}}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    auto conn = db.connect();

    // OUTBOX_ORDERING_ON_DEAD_LETTER is block by default: the head is rejected permanently, and
    // its key waits for an operator.
    std::string head = write_ordered(conn.get(), "dl-head", "dl", 0, "", 5, "example.permanent");
    std::vector<std::string> behind;
    for (int i = 1; i <= 3; ++i) {
        behind.push_back(write_ordered(conn.get(), "dl-" + std::to_string(i), "dl"));
    }
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1));
    // Events of another key written after the dead letter go through: once they are done, the
    // service has had every chance to run the blocked key's events, and must not have.
    std::vector<std::string> markers;
    for (int i = 0; i < 3; ++i) {
        markers.push_back(write_ordered(conn.get(), "marker-" + std::to_string(i), "marker"));
    }
    REQUIRE(wait_for_count(
        db,
        R"(SELECT count(*) FROM "Outbox" WHERE "orderingKey" = 'marker' AND status = 'COMPLETED')",
        3));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "orderingKey" = 'dl' AND status = 'PENDING')") ==
        3);
    outbox::PgResult blocked =
        db.exec("SELECT ordering_key, head_id, waiting FROM outbox_worker_blocked_keys");
    REQUIRE(blocked.rows() == 1);
    CHECK(blocked.value(0, 0) == "dl");
    CHECK(blocked.value(0, 1) == head);
    CHECK(blocked.value(0, 2) == "3");

    std::string dlq_id = db.scalar(R"(SELECT "id" FROM "DlqEventLog")");
    CHECK(db.scalar("SELECT outbox_skip_dlq('" + dlq_id + "')") == "t");
    REQUIRE(wait_for_count(
        db, R"(SELECT count(*) FROM "Outbox" WHERE "orderingKey" = 'dl' AND status = 'COMPLETED')",
        3));
    // The entry stays in the dead-letter queue; skipping it again releases nothing.
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 1);
    CHECK(db.scalar("SELECT outbox_skip_dlq('" + dlq_id + "')") == "f");
    CHECK(db.count("SELECT count(*) FROM outbox_worker_blocked_keys") == 0);
    std::map<std::string, std::string> key_of;
    for (const auto& id : behind) {
        key_of[id] = "dl";
    }
    CHECK(join(delivered_by_key(read_attempts(record), key_of)["dl"]) == join(behind));

    stop_cleanly(service, db);
}

TEST_CASE("ordering: draining releases claimed events without reordering their keys",
          "[ordering]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("ordering-drain.txt");
    std::string gate = temp_path("ordering-drain-gate");
    std::ofstream(gate) << "the head of key gated fails while this file exists\n";
    // Slow handlers and one handler process, so that the draining instance holds claimed events
    // that have not started (read ahead, beyond the 4 a handler process is sent at once) besides
    // the ones running and queued in the process.
    EnvMap env{{"EXAMPLE_RECORD_FILE", record},
               {"EXAMPLE_HOLD_MS", "150"},
               {"OUTBOX_WORKERS", "1"},
               {"OUTBOX_BATCH_SIZE", "20"},
               {"OUTBOX_INITIAL_DELAY_MS", "100"},
               {"OUTBOX_MAX_DELAY_MS", "300"}};
    auto conn = db.connect();
    // A key blocked by its failing head, and twelve keys of three events each.
    std::string gated_head = write_ordered(conn.get(), "gated-head", "gated", 0,
                                           R"("failWhileExists": ")" + gate + R"(")", 1000);
    for (int i = 1; i <= 3; ++i) {
        write_ordered(conn.get(), "gated-" + std::to_string(i), "gated");
    }
    for (int i = 0; i < 3; ++i) {
        for (int k = 0; k < 12; ++k) {
            write_ordered(conn.get(), "drain-" + std::to_string(k) + "-" + std::to_string(i),
                          "drain-" + std::to_string(k));
        }
    }
    const long total = 4 + 36;

    auto draining = std::make_unique<Service>(db, env, OUTBOX_EXAMPLE_APP);
    // Wait until it holds more than it runs, and the gated head has failed once.
    REQUIRE(wait_until(
        [&] {
            return db.count(kProcessing) > 4 &&
                   db.count(R"(SELECT "retryCount" FROM "Outbox" WHERE "id" = ')" + gated_head +
                            "'") >= 1;
        },
        30s));
    draining->process().send_signal(SIGTERM);
    // The other instance starts while the first drains, and takes over what it releases.
    Service taking_over(db, env, OUTBOX_EXAMPLE_APP);
    auto status = draining->process().wait_exit(40s);
    REQUIRE(status.has_value());
    std::string draining_log = draining->log();
    INFO(draining_log);
    CHECK(status->exited_with(0));
    long released = released_in_log(draining_log);
    CHECK(released > 0);

    std::filesystem::remove(gate);
    INFO(taking_over.log());
    REQUIRE(wait_for_count(db, kCompleted, total));
    // Released events were not charged: only the gated head failed.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" > 0)") == 1);
    std::vector<Attempt> attempts = read_attempts(record);
    KeyOrderReport report = check_key_order(read_commit_order(db), attempts);
    INFO(describe(report));
    CHECK(report.order_violations == 0);
    CHECK(report.overlaps_unexplained == 0);
    std::cout << "ordering (drain): the draining instance released " << released
              << " claimed events; " << describe(report) << std::flush;

    stop_cleanly(taking_over, db);
}
