// Helpers for the engine's black-box tests: a running `outbox-worker run` (or the example
// application) against a TestDatabase, events written through the SQL writer, and waits on
// database conditions with deadlines.
#pragma once

#include "tests/support/pg_fixture.h"
#include "tests/support/process.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>

namespace outbox::test {

using namespace std::chrono_literals;
using EnvMap = std::map<std::string, std::optional<std::string>>;

inline std::string temp_path(const std::string& name) {
    static std::string dir = [] {
        char tmpl[] = "/tmp/outbox-engine-XXXXXX";
        const char* d = mkdtemp(tmpl);
        REQUIRE(d != nullptr);
        return std::string(d);
    }();
    static int n = 0;
    return dir + "/" + std::to_string(++n) + "-" + name;
}

inline SpawnOptions command(std::vector<std::string> args, EnvMap env = {}) {
    SpawnOptions o;
    o.args = std::move(args);
    o.env = std::move(env);
    return o;
}

inline std::string write_handlers_file(const std::string& json) {
    std::string path = temp_path("handlers.json");
    std::ofstream(path) << json;
    return path;
}

// A service process with test-friendly defaults: no HTTP endpoint, two handler processes, short
// leases and delays. `extra` overrides any of them.
class Service {
  public:
    Service(const TestDatabase& db, EnvMap extra, const std::string& binary = OUTBOX_BINARY)
        : process_(binary, options(db, std::move(extra))) {}

    static SpawnOptions options(const TestDatabase& db, EnvMap extra) {
        SpawnOptions o;
        o.args = {"run"};
        o.env = {{"DATABASE_URL", db.url()},
                 {"OUTBOX_HTTP_PORT", "0"},
                 {"OUTBOX_WORKERS", "2"},
                 {"OUTBOX_INITIAL_DELAY_MS", "100"},
                 {"OUTBOX_MAX_DELAY_MS", "1000"},
                 {"OUTBOX_BACKOFF_JITTER", "0"},
                 {"OUTBOX_LEASE_MS", "5000"},
                 {"OUTBOX_POLL_INTERVAL_MS", "1000"},
                 {"OUTBOX_SHUTDOWN_TIMEOUT_MS", "10000"},
                 {"OUTBOX_METRICS_LOG_INTERVAL_MS", "0"},
                 {"LOG_LEVEL", "info"},
                 {"JOURNAL_STREAM", std::nullopt},
                 {"NOTIFY_SOCKET", std::nullopt}};
        for (auto& [k, v] : extra) {
            o.env[k] = v;
        }
        return o;
    }

    ChildProcess& process() { return process_; }
    std::string log() const { return process_.stderr_text(); }

    bool wait_ready(std::chrono::milliseconds timeout = 20s) {
        return wait_until(
                   [&] {
                       return log().find("ready:") != std::string::npos || !process_.is_running();
                   },
                   timeout) &&
               process_.is_running();
    }

    // SIGTERM, then the exit status (or nullopt if it did not stop within the timeout).
    std::optional<ExitStatus> stop(std::chrono::milliseconds timeout = 40s) {
        process_.send_signal(SIGTERM);
        return process_.wait_exit(timeout);
    }

  private:
    ChildProcess process_;
};

// Writes `n` events of `type` through the SQL writer in one statement.
inline void write_events(const TestDatabase& db, const std::string& type, int n,
                         int max_retries = 5, const std::string& key_prefix = "k",
                         const std::string& payload = "{\"n\": 1}") {
    db.exec("SELECT w.* FROM generate_series(1, " + std::to_string(n) +
            ") g, LATERAL outbox_write_event('" + key_prefix + "-" + type +
            "-' || g, 'tenant-1', '" + type + "', '" + payload + "'::jsonb, NULL, NULL, NULL, " +
            std::to_string(max_retries) + ") w");
}

inline long count_status(const TestDatabase& db, const std::string& status,
                         const std::string& type = "") {
    std::string sql = "SELECT count(*) FROM \"Outbox\" WHERE status = '" + status + "'";
    if (!type.empty()) {
        sql += " AND \"eventType\" = '" + type + "'";
    }
    return db.count(sql);
}

inline bool wait_for_count(const TestDatabase& db, const std::string& sql, long expected,
                           std::chrono::milliseconds timeout = 60s) {
    return wait_until([&] { return db.count(sql) == expected; }, timeout, 50ms);
}

inline const std::string kCompleted = R"(SELECT count(*) FROM "Outbox" WHERE status = 'COMPLETED')";
inline const std::string kProcessing =
    R"(SELECT count(*) FROM "Outbox" WHERE status = 'PROCESSING')";

// SIGTERM, then exit 0 and nothing left PROCESSING: how every engine test ends.
inline void stop_cleanly(Service& service, const TestDatabase& db) {
    auto status = service.stop();
    REQUIRE(status.has_value());
    INFO(service.log());
    CHECK(status->exited_with(0));
    CHECK(db.count(kProcessing) == 0);
}

// Lines "<outbox id> <pid>" written by the example application's record_delivery().
struct Deliveries {
    std::multiset<std::string> ids;
    std::set<std::string> pids;
};

inline Deliveries read_deliveries(const std::string& path) {
    Deliveries d;
    std::ifstream in(path);
    std::string id, pid;
    while (in >> id >> pid) {
        d.ids.insert(id);
        d.pids.insert(pid);
    }
    return d;
}

} // namespace outbox::test
