// Small libpq tool for bench/run.sh. Built by it with
//   g++ -std=c++20 -O2 bench/latency_driver.cpp -o latency_driver -I$(pg_config --includedir) -lpq
//   -lpthread
//
// latency_driver emit --system outbox|graphile --rate R --seconds S [--connections K] [--ack-file
// F] [--ordering-keys N] [--type T]
//     Commits R events per second for S seconds, open loop: event i is due at start + i/R and is
//     sent as soon as it is due (never earlier), each as its own single-statement transaction
//     (autocommit): outbox_write_event(...) for outbox, graphile_worker.add_job(...) for
//     graphile-worker. K connections (threads) share the schedule round-robin, each with at most
//     one statement in flight, so a slow commit on one does not hold back the others. With
//     --ack-file, writes "<id> <wall clock µs when the commit was acknowledged>" per event. With
//     --ordering-keys (outbox only), event i carries the ordering key "key-<i mod N>" (SPEC 2a;
//     writers of one key then wait for each other's commits) and the type --type (default
//     bench.latency). Prints one JSON line: events, achieved rate, and how late the sends were
//     against the schedule.
//
// latency_driver wait --sql QUERY [--interval-ms N] [--timeout-s N]
//     Runs QUERY (one boolean) on one connection every N ms (default 25) until it returns true,
//     then prints the wall clock in seconds (to the µs). Exit 1 on timeout or error.
//
// DATABASE_URL names the database.
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int64_t wall_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "latency_driver: %s\n", msg.c_str());
    std::exit(1);
}

PGconn* connect() {
    const char* url = std::getenv("DATABASE_URL");
    if (url == nullptr || *url == '\0') {
        die("DATABASE_URL is not set");
    }
    PGconn* c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        die(std::string("cannot connect: ") + PQerrorMessage(c));
    }
    return c;
}

const char* arg_value(int argc, char** argv, const char* name, const char* fallback) {
    for (int i = 2; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], name) == 0) {
            return argv[i + 1];
        }
    }
    return fallback;
}

int cmd_wait(int argc, char** argv) {
    const char* sql = arg_value(argc, argv, "--sql", nullptr);
    if (sql == nullptr) {
        die("wait: --sql is required");
    }
    long interval_ms = std::atol(arg_value(argc, argv, "--interval-ms", "25"));
    double timeout_s = std::atof(arg_value(argc, argv, "--timeout-s", "1800"));
    PGconn* c = connect();
    auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
    for (;;) {
        PGresult* r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
            die(std::string("wait: query failed: ") + PQerrorMessage(c));
        }
        bool done = std::strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (done) {
            int64_t t = wall_us();
            std::printf("%lld.%06lld\n", static_cast<long long>(t / 1000000),
                        static_cast<long long>(t % 1000000));
            PQfinish(c);
            return 0;
        }
        if (Clock::now() > deadline) {
            std::fprintf(stderr, "latency_driver: wait: timed out after %.0f s\n", timeout_s);
            PQfinish(c);
            return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
    }
}

int cmd_emit(int argc, char** argv) {
    std::string system = arg_value(argc, argv, "--system", "outbox");
    double rate = std::atof(arg_value(argc, argv, "--rate", "100"));
    double seconds = std::atof(arg_value(argc, argv, "--seconds", "30"));
    int connections = std::max(1, std::atoi(arg_value(argc, argv, "--connections", "2")));
    const char* ack_path = arg_value(argc, argv, "--ack-file", nullptr);
    const long ordering_keys = std::atol(arg_value(argc, argv, "--ordering-keys", "0"));
    const std::string type = arg_value(argc, argv, "--type", "bench.latency");
    if (rate <= 0 || seconds <= 0) {
        die("emit: --rate and --seconds must be positive");
    }
    const char* sql = nullptr;
    int nparams = 0;
    if (system == "outbox" && ordering_keys > 0) {
        sql = "SELECT outbox_id FROM outbox_write_event($1, 'bench-tenant', $3, '{}'::jsonb, "
              "NULL, NULL, NULL, NULL, $2)";
        nparams = 3;
    } else if (system == "outbox") {
        sql = "SELECT outbox_id FROM outbox_write_event($1, 'bench-tenant', 'bench.latency', "
              "'{}'::jsonb)";
        nparams = 1;
    } else if (system == "graphile") {
        sql = "SELECT (graphile_worker.add_job('noop', '{}'::json)).id";
    } else {
        die("emit: --system is outbox or graphile");
    }
    const long total = std::lround(rate * seconds);
    const std::string key_prefix = "lat-" + std::to_string(wall_us()) + "-";

    std::vector<PGconn*> conns;
    for (int k = 0; k < connections; ++k) {
        PGconn* c = connect();
        PGresult* r = PQprepare(c, "ev", sql, nparams, nullptr);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            die(std::string("emit: prepare failed: ") + PQerrorMessage(c));
        }
        PQclear(r);
        conns.push_back(c);
    }

    std::vector<int64_t> lateness_us(static_cast<size_t>(total), 0);
    std::vector<std::string> ack_lines(static_cast<size_t>(total));
    std::atomic<bool> failed{false};
    // Start a little in the future so that every thread is waiting when the schedule begins.
    const auto t0 = Clock::now() + std::chrono::milliseconds(50);
    const double period_ns = 1e9 / rate;
    std::vector<std::thread> threads;
    for (int k = 0; k < connections; ++k) {
        threads.emplace_back([&, k] {
            PGconn* c = conns[static_cast<size_t>(k)];
            for (long i = k; i < total && !failed; i += connections) {
                auto due = t0 + std::chrono::nanoseconds(
                                    static_cast<long long>(static_cast<double>(i) * period_ns));
                std::this_thread::sleep_until(due);
                auto sent = Clock::now();
                lateness_us[static_cast<size_t>(i)] =
                    std::chrono::duration_cast<std::chrono::microseconds>(sent - due).count();
                std::string key = key_prefix + std::to_string(i);
                std::string ordering_key =
                    ordering_keys > 0 ? "key-" + std::to_string(i % ordering_keys) : "";
                const char* values[3] = {key.c_str(), ordering_key.c_str(), type.c_str()};
                PGresult* r = PQexecPrepared(c, "ev", nparams, nparams ? values : nullptr, nullptr,
                                             nullptr, 0);
                int64_t ack = wall_us();
                if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
                    std::fprintf(stderr, "latency_driver: emit failed: %s", PQerrorMessage(c));
                    failed = true;
                } else if (ack_path != nullptr) {
                    ack_lines[static_cast<size_t>(i)] =
                        std::string(PQgetvalue(r, 0, 0)) + " " + std::to_string(ack);
                }
                PQclear(r);
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    for (PGconn* c : conns) {
        PQfinish(c);
    }
    if (failed) {
        return 1;
    }
    if (ack_path != nullptr) {
        FILE* f = std::fopen(ack_path, "w");
        if (f == nullptr) {
            die(std::string("cannot write ") + ack_path);
        }
        for (const auto& line : ack_lines) {
            std::fprintf(f, "%s\n", line.c_str());
        }
        std::fclose(f);
    }
    std::vector<int64_t> sorted = lateness_us;
    std::sort(sorted.begin(), sorted.end());
    auto pct = [&](double p) {
        return sorted.empty()
                   ? 0
                   : sorted[std::min(sorted.size() - 1,
                                     static_cast<size_t>(p * static_cast<double>(sorted.size())))];
    };
    std::printf(
        "{\"events\": %ld, \"seconds\": %.3f, \"achieved_rate\": %.1f, \"connections\": %d, "
        "\"send_lateness_us\": {\"p50\": %lld, \"p99\": %lld, \"max\": %lld}}\n",
        total, elapsed, static_cast<double>(total) / elapsed, connections,
        static_cast<long long>(pct(0.5)), static_cast<long long>(pct(0.99)),
        static_cast<long long>(sorted.empty() ? 0 : sorted.back()));
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    if (argc >= 2 && std::strcmp(argv[1], "emit") == 0) {
        return cmd_emit(argc, argv);
    }
    if (argc >= 2 && std::strcmp(argv[1], "wait") == 0) {
        return cmd_wait(argc, argv);
    }
    std::fprintf(stderr, "usage: latency_driver emit --system outbox|graphile --rate R --seconds S "
                         "[--connections K] [--ack-file F] [--ordering-keys N] [--type T]\n"
                         "       latency_driver wait --sql QUERY [--interval-ms N] [--timeout-s "
                         "N]\n");
    return 64;
}
