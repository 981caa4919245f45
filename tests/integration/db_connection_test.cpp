// DbConnection against a real PostgreSQL: prepared statements survive what a long-lived session
// meets in production (a table altered underneath, statements discarded, a lost connection).

#include "supervisor/db_connection.h"
#include "tests/support/pg_fixture.h"

#include <catch2/catch.hpp>
#include <uv.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

using outbox::DbConnection;
using outbox::QueryResult;
using outbox::test::TestDatabase;

namespace {

// Runs the loop until `done` or a 20 s deadline; false on the deadline.
bool run_until(uv_loop_t* loop, const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        uv_run(loop, UV_RUN_ONCE);
    }
    return true;
}

struct Harness {
    uv_loop_t loop{};
    std::optional<DbConnection> db;
    bool connected = false;
    std::string lost_reason;

    explicit Harness(const std::string& conninfo, const std::string& session_settings = "") {
        uv_loop_init(&loop);
        DbConnection::Callbacks callbacks;
        callbacks.on_connected = [this] {
            connected = true;
        };
        callbacks.on_lost = [this](const std::string& why) {
            lost_reason = why;
        };
        db.emplace(&loop, conninfo, "test", "", callbacks);
        db->set_session_settings(session_settings);
        db->start();
        REQUIRE(run_until(&loop, [this] { return connected; }));
    }
    ~Harness() {
        bool closed = false;
        db->close([&closed] { closed = true; });
        run_until(&loop, [&closed] { return closed; });
        db.reset();
        uv_run(&loop, UV_RUN_NOWAIT);
        uv_loop_close(&loop);
    }

    QueryResult prepared(const char* name, const char* sql,
                         std::vector<std::optional<std::string>> params = {}) {
        std::optional<QueryResult> out;
        db->query_prepared(name, sql, std::move(params),
                           [&out](QueryResult&& r) { out = std::move(r); });
        REQUIRE(run_until(&loop, [&out] { return out.has_value(); }));
        return std::move(*out);
    }
    QueryResult plain(const std::string& sql) {
        std::optional<QueryResult> out;
        db->query(sql, {}, [&out](QueryResult&& r) { out = std::move(r); });
        REQUIRE(run_until(&loop, [&out] { return out.has_value(); }));
        return std::move(*out);
    }
};

constexpr const char* kSelectAll = "SELECT * FROM t WHERE id = $1::int";

// A database with table t, a connection to it, and kSelectAll prepared and run once on it.
struct PreparedTable {
    TestDatabase db;
    std::optional<Harness> h;

    PreparedTable() {
        db.exec("CREATE TABLE t (id int PRIMARY KEY, v text); "
                "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
        h.emplace(db.conninfo());
        REQUIRE(select(1).ok());
    }
    QueryResult select(int id) { return h->prepared("t_select", kSelectAll, {std::to_string(id)}); }
};

} // namespace

TEST_CASE("prepared statements are prepared once and run with their parameters", "[db]") {
    PreparedTable t;
    for (int i = 0; i < 3; ++i) {
        QueryResult r = t.select(1 + i % 2);
        REQUIRE(r.ok());
        REQUIRE(r.result.rows() == 1);
        CHECK(r.result.value(0, 1) == (i % 2 == 0 ? "a" : "b"));
    }
    QueryResult count = t.h->plain("SELECT count(*) FROM pg_prepared_statements");
    REQUIRE(count.ok());
    CHECK(count.result.value(0, 0) == "1");
    QueryResult mode = t.h->plain("SHOW plan_cache_mode");
    REQUIRE(mode.ok());
    CHECK(mode.result.value(0, 0) == "force_custom_plan");
}

TEST_CASE("a prepared statement whose table changed is prepared again", "[db]") {
    PreparedTable t;
    t.db.exec("ALTER TABLE t ADD COLUMN w text DEFAULT 'new'");
    // The statement's result type changed under it: PostgreSQL refuses to run it again in this
    // session, once; the connection then prepares it under a new name and it sees the new column.
    QueryResult first = t.select(1);
    REQUIRE_FALSE(first.ok());
    CHECK(first.error().find("cached plan must not change result type") != std::string::npos);
    QueryResult second = t.select(1);
    REQUIRE(second.ok());
    REQUIRE(second.result.columns() == 3);
    CHECK(second.result.value(0, 2) == "new");
    QueryResult third = t.select(2);
    REQUIRE(third.ok());
    CHECK(third.result.value(0, 1) == "b");
}

TEST_CASE("a prepared statement discarded from the session is prepared again", "[db]") {
    PreparedTable t;
    REQUIRE(t.h->plain("DEALLOCATE ALL").ok());
    QueryResult gone = t.select(1);
    REQUIRE_FALSE(gone.ok());
    CHECK(gone.error().find("does not exist") != std::string::npos);
    QueryResult again = t.select(1);
    REQUIRE(again.ok());
    CHECK(again.result.value(0, 1) == "a");
}

TEST_CASE("prepared statements are prepared again after a reconnect", "[db]") {
    PreparedTable t;
    Harness& h = *t.h;
    QueryResult pid = h.plain("SELECT pg_backend_pid()");
    REQUIRE(pid.ok());
    h.connected = false;
    t.db.exec("SELECT pg_terminate_backend(" + pid.result.value(0, 0) + ")");
    // The next query finds the session gone (lost, or failed with the server's FATAL error), or,
    // if the reconnect won the race, runs on the new one; either way the connection comes back
    // and the statement runs there.
    QueryResult during = t.select(1);
    if (!during.ok()) {
        CHECK((during.lost || during.error().find("terminating connection") != std::string::npos));
    }
    REQUIRE(run_until(&h.loop, [&h] { return h.connected; }));
    // The reason logged is the server's, not the closed descriptor's.
    CHECK(h.lost_reason.find("terminating connection") != std::string::npos);
    CHECK(h.lost_reason.find("bad file descriptor") == std::string::npos);
    QueryResult after = t.select(1);
    REQUIRE(after.ok());
    CHECK(after.result.value(0, 1) == "a");
}

TEST_CASE("session settings apply to every session, also after a reconnect", "[db]") {
    TestDatabase db;
    // "local" is neither the server's default (on) nor the test cluster's (off).
    Harness h(db.conninfo(), "SET synchronous_commit = local");
    QueryResult first = h.plain("SHOW synchronous_commit");
    REQUIRE(first.ok());
    CHECK(first.result.value(0, 0) == "local");
    QueryResult pid = h.plain("SELECT pg_backend_pid()");
    REQUIRE(pid.ok());
    h.connected = false;
    db.exec("SELECT pg_terminate_backend(" + pid.result.value(0, 0) + ")");
    h.plain("SELECT 1"); // finds the session gone
    REQUIRE(run_until(&h.loop, [&h] { return h.connected; }));
    QueryResult after = h.plain("SHOW synchronous_commit");
    REQUIRE(after.ok());
    CHECK(after.result.value(0, 0) == "local");
    // Without settings, the server's.
    Harness plain(db.conninfo());
    QueryResult server = plain.plain("SHOW synchronous_commit");
    REQUIRE(server.ok());
    CHECK(server.result.value(0, 0) != "local");
}
