// The `outbox-worker` command line (SPEC 5), run as the real binary: help and usage errors,
// configuration errors, and every database command against a private database.
#include "common/json.h"
#include "tests/support/pg_fixture.h"
#include "tests/support/process.h"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

using outbox::test::ChildProcess;
using outbox::test::RunResult;
using outbox::test::SpawnOptions;
using outbox::test::TestDatabase;

namespace {

using Env = std::map<std::string, std::optional<std::string>>;

// Runs the binary with a clean environment plus `env`, so that nothing of the test's own
// environment (OUTBOX_TEST_PG, a developer's LOG_LEVEL) changes the outcome.
RunResult cli(std::vector<std::string> args, Env env = {},
              std::optional<std::string> stdin_text = std::nullopt) {
    SpawnOptions options;
    options.args = std::move(args);
    options.env = std::move(env);
    options.inherit_environment = false;
    options.stdin_text = std::move(stdin_text);
    return outbox::test::run_process(OUTBOX_BINARY, std::move(options), std::chrono::seconds(120));
}

Env db_env(const TestDatabase& db) {
    return {{"DATABASE_URL", db.url()}};
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        out.push_back(line);
    }
    return out;
}

std::string describe(const RunResult& r) {
    return r.status.describe() + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

#define REQUIRE_EXIT(result, code)                                                                 \
    do {                                                                                           \
        INFO(describe(result));                                                                    \
        REQUIRE((result).status.exited_with(code));                                                \
    } while (false)

long json_number(const outbox::Json& object, const char* key) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object.get(), key);
    INFO(key);
    REQUIRE(cJSON_IsNumber(item));
    return static_cast<long>(item->valuedouble);
}

// A DLQ entry as the engine writes it: the EventLog row, the FAILED Outbox row and the DLQ row.
void insert_dead_letter(const TestDatabase& db, const std::string& id, const std::string& type,
                        const std::string& failed_ago = "1 minute") {
    db.exec(
        R"(INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType", "payload")
               VALUES ('evl-)" +
        id + "', 'key-" + id + "', 'tenant-1', '" + type + R"(', '{"n": 1}');
               INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "status", "retryCount", "maxRetries", "lastError", "updatedAt")
               VALUES ('obx-)" +
        id + "', 'evl-" + id + "', 'tenant-1', '" + type +
        R"(', '{"n": 1}', 'FAILED', 3, 3, 'boom', now());
               INSERT INTO "DlqEventLog" ("id", "originalId", "eventKey", "tenantId", "eventType", "payload", "failureReason", "retryCount", "failedAt")
               VALUES (')" +
        id + "', 'obx-" + id + "', 'key-" + id + "', 'tenant-1', '" + type +
        R"(', '{"n": 1}', 'handler said: )" + id +
        R"( is broken beyond repair, and this reason goes on long enough to be cut in the table', 3, now() - interval ')" +
        failed_ago + "')");
}

// Accepts one connection on 127.0.0.1, reads the request head, answers with `response` and
// records the request line.
class OneShotHttpServer {
  public:
    explicit OneShotHttpServer(std::string response) : response_(std::move(response)) {
        fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(listen(fd_, 1) == 0);
        REQUIRE(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { serve(); });
    }
    ~OneShotHttpServer() {
        shutdown(fd_, SHUT_RDWR);
        close(fd_);
        thread_.join();
    }
    int port() const { return port_; }
    std::string request_line() {
        std::lock_guard<std::mutex> lock(mutex_);
        return request_line_;
    }

  private:
    void serve() {
        int client = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) {
            return;
        }
        std::string request;
        char buf[1024];
        while (request.find("\r\n\r\n") == std::string::npos) {
            ssize_t n = recv(client, buf, sizeof buf, 0);
            if (n <= 0) {
                break;
            }
            request.append(buf, static_cast<size_t>(n));
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            request_line_ = request.substr(0, request.find("\r\n"));
        }
        ssize_t sent = send(client, response_.data(), response_.size(), MSG_NOSIGNAL);
        (void)sent;
        close(client);
    }

    std::string response_;
    int fd_ = -1;
    int port_ = 0;
    std::thread thread_;
    std::mutex mutex_;
    std::string request_line_;
};

} // namespace

TEST_CASE("cli: --version and --help", "[cli]") {
    RunResult version = cli({"--version"});
    REQUIRE_EXIT(version, 0);
    CHECK(version.out.rfind("outbox-worker ", 0) == 0);
    CHECK(version.out.find('.') != std::string::npos);

    RunResult top = cli({"--help"});
    REQUIRE_EXIT(top, 0);
    for (const char* command :
         {"run", "migrate", "emit", "dlq", "ordering", "stats", "health", "check-config"}) {
        CHECK(top.out.find(std::string("  ") + command + " ") != std::string::npos);
    }
    // Help needs no configuration at all.
    for (const char* command :
         {"run", "migrate", "emit", "dlq", "ordering", "stats", "health", "check-config"}) {
        RunResult help = cli({command, "--help"});
        INFO(command);
        REQUIRE_EXIT(help, 0);
        CHECK(help.out.find(std::string("usage: outbox-worker ")) == 0);
        CHECK(help.out.find(command) != std::string::npos);
        CHECK(help.err.empty());
    }
    for (const char* action : {"list", "retry", "skip", "purge"}) {
        RunResult help = cli({"dlq", action, "--help"});
        REQUIRE_EXIT(help, 0);
        CHECK(help.out.find("outbox-worker dlq " + std::string(action)) != std::string::npos);
    }
    RunResult help_command = cli({"help", "emit"});
    REQUIRE_EXIT(help_command, 0);
    CHECK(help_command.out.find("usage: outbox-worker emit") == 0);
}

TEST_CASE("cli: usage errors exit 64 with the usage on stderr", "[cli]") {
    struct Case {
        std::vector<std::string> args;
        const char* message;
    };
    for (const auto& c : std::vector<Case>{
             {{"frobnicate"}, "unknown command \"frobnicate\""},
             {{"--bogus"}, "unknown option --bogus"},
             {{"emit", "--type", "a", "--bogus", "1"}, "unknown option --bogus"},
             {{"emit"}, "--type is required"},
             {{"emit", "--type"}, "--type needs a value"},
             {{"emit", "--type", "a", "--count", "0"}, "--count \"0\""},
             {{"emit", "--type", "a", "--count", "ten"}, "--count \"ten\""},
             {{"emit", "--type", "a", "--payload", "{nope"}, "--payload is not valid JSON"},
             {{"emit", "--type", "a", "--metadata", "[1,"}, "--metadata is not valid JSON"},
             {{"emit", "--type", "a", "--max-retries", "0"}, "--max-retries \"0\""},
             {{"stats", "--json=yes"}, "--json takes no value"},
             {{"stats", "extra"}, "unexpected argument \"extra\""},
             {{"migrate", "--force"}, "unknown option --force"},
             {{"run", "--fast"}, "unknown option --fast"},
             {{"dlq"}, "list, retry, skip or purge"},
             {{"dlq", "peek"}, "unknown action \"peek\""},
             {{"dlq", "retry"}, "either DLQ ids or --all"},
             {{"dlq", "retry", "d1", "--all"}, "either DLQ ids or --all"},
             {{"dlq", "retry", "d1", "--type", "x"}, "--type goes with --all"},
             {{"dlq", "purge"}, "either --older-than DURATION or --all"},
             {{"dlq", "purge", "--older-than", "7 days"}, "--older-than \"7 days\""},
             {{"dlq", "list", "--limit", "0"}, "--limit \"0\""},
         }) {
        std::string joined;
        for (const auto& a : c.args) {
            joined += a + " ";
        }
        INFO(joined);
        // A database that does not exist: a usage error must be found before connecting.
        RunResult r = cli(c.args, {{"DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none"}});
        REQUIRE_EXIT(r, 64);
        CHECK(r.err.find(c.message) != std::string::npos);
        CHECK(r.err.find("usage: outbox-worker") != std::string::npos);
        CHECK(r.out.empty());
    }
}

TEST_CASE("cli: configuration errors exit 78 with one line and no password", "[cli]") {
    TestDatabase db;
    REQUIRE_FALSE(db.password().empty());
    for (const char* command : {"run", "migrate", "emit", "stats", "dlq", "check-config"}) {
        std::vector<std::string> args = {command};
        if (std::string(command) == "emit") {
            args = {"emit", "--type", "a"};
        } else if (std::string(command) == "dlq") {
            args = {"dlq", "list"};
        }
        INFO(command);
        RunResult r = cli(args, {{"DATABASE_URL", db.url()}, {"OUTBOX_MAX_RETRIES", "lots"}});
        REQUIRE_EXIT(r, 78);
        CHECK(r.err == "outbox-worker: OUTBOX_MAX_RETRIES=\"lots\": not an integer; allowed: an "
                       "integer from 1 to 1000\n");
        CHECK(r.out.find(db.password()) == std::string::npos);
    }
    RunResult missing = cli({"stats"});
    REQUIRE_EXIT(missing, 78);
    CHECK(lines(missing.err).size() == 1);
    CHECK(missing.err.find("DATABASE_URL") != std::string::npos);

    RunResult bad_url = cli({"stats"}, {{"DATABASE_URL", db.url() + "?bogus=1"}});
    REQUIRE_EXIT(bad_url, 78);
    CHECK(lines(bad_url.err).size() == 1);
    CHECK(bad_url.err.find("DATABASE_URL") != std::string::npos);
    CHECK(bad_url.err.find("****") != std::string::npos);
    CHECK(bad_url.err.find(db.password()) == std::string::npos);

    RunResult bad_level = cli({"health"}, {{"LOG_LEVEL", "chatty"}});
    REQUIRE_EXIT(bad_level, 78);
    CHECK(bad_level.err.find("LOG_LEVEL=\"chatty\"") != std::string::npos);
}

TEST_CASE("cli: connection errors exit 1 with the URL masked", "[cli]") {
    TestDatabase db;
    std::string wrong = db.url();
    size_t at = wrong.find(db.password());
    REQUIRE(at != std::string::npos);
    wrong.replace(at, db.password().size(), "wrong-pw-4711");
    RunResult r = cli({"stats"}, {{"DATABASE_URL", wrong}});
    REQUIRE_EXIT(r, 1);
    CHECK(lines(r.err).size() == 1);
    CHECK(r.err.find("cannot connect to postgresql://outbox_test:****@") != std::string::npos);
    CHECK(r.err.find("password authentication failed") != std::string::npos);
    CHECK(r.err.find("wrong-pw-4711") == std::string::npos);
}

TEST_CASE("cli: commands on a database without the schema say to run migrate", "[cli]") {
    TestDatabase db;
    for (std::vector<std::string> args : {std::vector<std::string>{"stats"},
                                          {"emit", "--type", "a"},
                                          {"dlq", "list"},
                                          {"dlq", "retry", "x"},
                                          {"dlq", "purge", "--all"}}) {
        RunResult r = cli(args, db_env(db));
        INFO(args[0]);
        REQUIRE_EXIT(r, 1);
        CHECK(r.err.find("run `outbox-worker migrate`") != std::string::npos);
        CHECK(r.err.find(db.password()) == std::string::npos);
    }
    // Nothing was created behind the operator's back.
    CHECK(db.count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0);
}

TEST_CASE("cli: run on a database without the schema fails and says to run migrate", "[cli]") {
    TestDatabase db;
    // A valid handlers file, so that the missing schema is the only thing wrong.
    std::string handlers = std::filesystem::temp_directory_path() /
                           ("outbox-run-handlers-" + std::to_string(getpid()) + ".json");
    std::ofstream(handlers) << R"([{"eventTypes": ["*"], "log": true}])";
    SpawnOptions options;
    options.args = {"run"};
    options.env = {{"DATABASE_URL", db.url()},
                   {"OUTBOX_HANDLERS", handlers},
                   {"OUTBOX_HTTP_PORT", std::to_string(outbox::test::free_tcp_port())},
                   {"OUTBOX_WORKERS", "1"}};
    options.inherit_environment = false;
    ChildProcess worker(OUTBOX_BINARY, options);
    auto status = worker.wait_exit(std::chrono::seconds(30));
    std::filesystem::remove(handlers);
    INFO(worker.describe());
    REQUIRE(status);
    CHECK(status->exited());
    CHECK_FALSE(status->exited_with(0));
    CHECK(worker.stderr_text().find("migrate") != std::string::npos);
    CHECK(worker.stderr_text().find(db.password()) == std::string::npos);
}

TEST_CASE("cli: migrate reports what it applied", "[cli]") {
    TestDatabase db;
    RunResult first = cli({"migrate"}, db_env(db));
    REQUIRE_EXIT(first, 0);
    CHECK(first.out.find("applied 001_calibr_schema\n") != std::string::npos);
    CHECK(first.out.find("schema version ") != std::string::npos);
    RunResult second = cli({"migrate"}, db_env(db));
    REQUIRE_EXIT(second, 0);
    CHECK(second.out.find("applied") == std::string::npos);
    CHECK(second.out.find("up to date") != std::string::npos);
    CHECK(first.err.find(db.password()) == std::string::npos);
}

TEST_CASE("cli: emit writes events and stats counts them", "[cli]") {
    TestDatabase db;
    db.migrate();

    RunResult one = cli({"emit", "--type", "order.created", "--tenant", "t1", "--key", "k1",
                         "--payload", R"({"orderId": 7})", "--project", "p1", "--correlation-id",
                         "c1", "--metadata", R"({"by": "cli"})", "--max-retries", "3"},
                        db_env(db));
    REQUIRE_EXIT(one, 0);
    std::vector<std::string> ids = lines(one.out);
    REQUIRE(ids.size() == 1);
    outbox::PgResult row = db.exec(
        R"(SELECT e."eventKey", e."tenantId", e."eventType", e."payload"->>'orderId', e."projectId",
                  e."correlationId", e."metadata"->>'by', o."maxRetries", o."status"
             FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId" WHERE o."id" = ')" +
        ids[0] + "'");
    REQUIRE(row.rows() == 1);
    CHECK(row.value(0, 0) == "k1");
    CHECK(row.value(0, 1) == "t1");
    CHECK(row.value(0, 2) == "order.created");
    CHECK(row.value(0, 3) == "7");
    CHECK(row.value(0, 4) == "p1");
    CHECK(row.value(0, 5) == "c1");
    CHECK(row.value(0, 6) == "cli");
    CHECK(row.value(0, 7) == "3");
    CHECK(row.value(0, 8) == "PENDING");

    RunResult again =
        cli({"emit", "--type", "order.created", "--tenant", "t1", "--key", "k1"}, db_env(db));
    REQUIRE_EXIT(again, 0);
    CHECK(again.out == ids[0] + " duplicate\n");

    // Defaults: tenant "default", a generated key, payload {}.
    RunResult defaults = cli({"emit", "--type", "x"}, db_env(db));
    REQUIRE_EXIT(defaults, 0);
    CHECK(
        db.scalar(
            R"(SELECT e."tenantId" || ' ' || e."payload"::text FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId" WHERE o."id" = ')" +
            lines(defaults.out).at(0) + "'") == "default {}");
    RunResult defaults2 = cli({"emit", "--type", "x"}, db_env(db));
    REQUIRE_EXIT(defaults2, 0);
    CHECK(defaults2.out.find("duplicate") == std::string::npos);

    // The payload from a file and from stdin.
    std::string file = std::filesystem::temp_directory_path() /
                       ("outbox-payload-" + std::to_string(getpid()) + ".json");
    std::ofstream(file) << R"({"from": "file"})";
    RunResult from_file = cli({"emit", "--type", "x", "--payload", "@" + file}, db_env(db));
    std::filesystem::remove(file);
    REQUIRE_EXIT(from_file, 0);
    RunResult from_stdin =
        cli({"emit", "--type", "x", "--payload", "-"}, db_env(db), R"({"from": "stdin"})");
    REQUIRE_EXIT(from_stdin, 0);
    CHECK(
        db.scalar(
            R"(SELECT string_agg("payload"->>'from', ',' ORDER BY "payload"->>'from') FROM "Outbox")") ==
        "file,stdin");
    RunResult missing_file =
        cli({"emit", "--type", "x", "--payload", "@/nonexistent/p.json"}, db_env(db));
    REQUIRE_EXIT(missing_file, 1);
    CHECK(missing_file.err.find("/nonexistent/p.json") != std::string::npos);

    db.exec(R"(UPDATE "Outbox" SET "status" = 'COMPLETED' WHERE "id" = ')" + ids[0] + "'");
    insert_dead_letter(db, "d1", "x");

    RunResult stats = cli({"stats", "--json"}, db_env(db));
    REQUIRE_EXIT(stats, 0);
    outbox::Json json = outbox::json_parse(stats.out);
    INFO(stats.out);
    REQUIRE(json);
    CHECK(json_number(json, "pending") == 4);
    CHECK(json_number(json, "processing") == 0);
    CHECK(json_number(json, "completed") == 1);
    CHECK(json_number(json, "failed") == 1);
    CHECK(json_number(json, "total") == 6);
    CHECK(json_number(json, "dlq") == 1);
    CHECK(json_number(json, "oldestDueAgeSeconds") >= 0);

    RunResult text = cli({"stats"}, db_env(db));
    REQUIRE_EXIT(text, 0);
    CHECK(text.out.find("pending     4\n") != std::string::npos);
    CHECK(text.out.find("dlq         1\n") != std::string::npos);
    CHECK(text.out.find("oldest due  ") != std::string::npos);

    // Nothing due: the age is null, not zero.
    db.exec(
        R"(UPDATE "Outbox" SET "nextRetryAt" = now() + interval '1 hour' WHERE "status" = 'PENDING')");
    RunResult nothing_due = cli({"stats", "--json"}, db_env(db));
    REQUIRE_EXIT(nothing_due, 0);
    outbox::Json nothing = outbox::json_parse(nothing_due.out);
    REQUIRE(nothing);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(nothing.get(), "oldestDueAgeSeconds")));
}

TEST_CASE("cli: emit --count writes many events in batches", "[cli]") {
    TestDatabase db;
    db.migrate();
    auto started = std::chrono::steady_clock::now();
    RunResult r =
        cli({"emit", "--type", "bulk.event", "--count", "10000", "--key", "bulk"}, db_env(db));
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    REQUIRE_EXIT(r, 0);
    WARN("emit --count 10000 took " << seconds << " s: " << r.err);
    std::vector<std::string> ids = lines(r.out);
    CHECK(ids.size() == 10000);
    CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == 10000);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'bulk.event')") == 10000);
    CHECK(db.count(R"(SELECT count(*) FROM "EventLog" WHERE "eventKey" LIKE 'bulk-%')") == 10000);
    // Output order is key order: line i is the event with key bulk-(i+1).
    CHECK(
        db.scalar(
            R"(SELECT e."eventKey" FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId" WHERE o."id" = ')" +
            ids[4242] + "'") == "bulk-4243");
    // No terminal: no progress display, only the summary line.
    std::vector<std::string> err = lines(r.err);
    REQUIRE(err.size() == 1);
    CHECK(err[0].rfind("emitted 10000 events in ", 0) == 0);
    CHECK(err[0].find("/s)") != std::string::npos);

    // The same keys again: all duplicates, nothing new.
    RunResult again =
        cli({"emit", "--type", "bulk.event", "--count", "1500", "--key", "bulk"}, db_env(db));
    REQUIRE_EXIT(again, 0);
    std::vector<std::string> again_lines = lines(again.out);
    REQUIRE(again_lines.size() == 1500);
    CHECK(again_lines[0] == ids[0] + " duplicate");
    CHECK(again.err.find("1500 of them were duplicates") != std::string::npos);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 10000);
}

TEST_CASE("cli: dlq list, retry and purge", "[cli]") {
    TestDatabase db;
    db.migrate();
    insert_dead_letter(db, "d1", "billing.charge", "3 minutes");
    insert_dead_letter(db, "d2", "billing.refund", "2 minutes");
    insert_dead_letter(db, "d3", "shipping.label", "1 minute");

    SECTION("list") {
        RunResult table = cli({"dlq", "list"}, db_env(db));
        REQUIRE_EXIT(table, 0);
        std::vector<std::string> rows = lines(table.out);
        REQUIRE(rows.size() == 4);
        CHECK(rows[0].rfind("ID", 0) == 0);
        CHECK(rows[0].find("REASON") != std::string::npos);
        CHECK(rows[1].rfind("d3 ", 0) == 0); // newest first
        CHECK(rows[3].rfind("d1 ", 0) == 0);
        CHECK(rows[1].find("obx-d3") != std::string::npos);
        CHECK(rows[1].find("shipping.label") != std::string::npos);
        CHECK(rows[1].find("...") != std::string::npos); // the long reason is cut
        CHECK(rows[1].find("cut in the table") == std::string::npos);

        RunResult json = cli({"dlq", "list", "--json", "--type", "billing.refund"}, db_env(db));
        REQUIRE_EXIT(json, 0);
        outbox::Json array = outbox::json_parse(json.out);
        REQUIRE(array);
        REQUIRE(cJSON_GetArraySize(array.get()) == 1);
        const cJSON* item = cJSON_GetArrayItem(array.get(), 0);
        CHECK(outbox::json_string(item, "id") == "d2");
        CHECK(outbox::json_string(item, "originalId") == "obx-d2");
        CHECK(outbox::json_string(item, "eventType") == "billing.refund");
        CHECK(outbox::json_string(item, "tenantId") == "tenant-1");
        CHECK(outbox::json_string(item, "eventKey") == "key-d2");
        CHECK(outbox::json_string(item, "failureReason").value_or("").find("cut in the table") !=
              std::string::npos);
        CHECK(outbox::json_string(item, "failedAt").value_or("").find('T') == 10);
        CHECK(cJSON_GetObjectItemCaseSensitive(item, "retryCount")->valuedouble == 3);

        RunResult limited = cli({"dlq", "list", "--json", "--limit", "2"}, db_env(db));
        REQUIRE_EXIT(limited, 0);
        outbox::Json two = outbox::json_parse(limited.out);
        REQUIRE(two);
        CHECK(cJSON_GetArraySize(two.get()) == 2);

        RunResult none = cli({"dlq", "list", "--json", "--tenant", "nobody"}, db_env(db));
        REQUIRE_EXIT(none, 0);
        CHECK(none.out == "[]\n");
    }

    SECTION("retry: real ids are retried even when another one is unknown") {
        RunResult r = cli({"dlq", "retry", "d1", "no-such-id"}, db_env(db));
        REQUIRE_EXIT(r, 1);
        CHECK(r.err.find("no dead-letter entry with id \"no-such-id\"") != std::string::npos);
        std::vector<std::string> out = lines(r.out);
        REQUIRE(out.size() == 1);
        REQUIRE(out[0].rfind("d1 -> ", 0) == 0);
        std::string new_id = out[0].substr(6);
        outbox::PgResult row = db.exec(
            R"(SELECT "status", "retryCount", "eventLogId", "nextRetryAt" IS NULL OR "nextRetryAt" <= now(), "eventType"
                 FROM "Outbox" WHERE "id" = ')" +
            new_id + "'");
        REQUIRE(row.rows() == 1);
        CHECK(row.value(0, 0) == "PENDING");
        CHECK(row.value(0, 1) == "0");
        CHECK(row.value(0, 2) == "evl-d1");
        CHECK(row.value(0, 3) == "t");
        CHECK(row.value(0, 4) == "billing.charge");
        CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog" WHERE "id" = 'd1')") == 0);
        CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 2);

        // A retried entry is gone: retrying it again is the same clear error.
        RunResult twice = cli({"dlq", "retry", "d1"}, db_env(db));
        REQUIRE_EXIT(twice, 1);
        CHECK(twice.err == "outbox-worker dlq retry: no dead-letter entry with id \"d1\"\n");
    }

    SECTION("retry --all --type") {
        RunResult r = cli({"dlq", "retry", "--all", "--type", "billing.refund"}, db_env(db));
        REQUIRE_EXIT(r, 0);
        CHECK(lines(r.out).size() == 1);
        CHECK(r.out.rfind("d2 -> ", 0) == 0);
        RunResult rest = cli({"dlq", "retry", "--all"}, db_env(db));
        REQUIRE_EXIT(rest, 0);
        CHECK(lines(rest.out).size() == 2);
        CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 0);
        CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "status" = 'PENDING')") == 3);
        RunResult nothing = cli({"dlq", "retry", "--all"}, db_env(db));
        REQUIRE_EXIT(nothing, 0);
        CHECK(nothing.out.empty());
    }

    SECTION("purge") {
        insert_dead_letter(db, "old", "x", "8 days");
        RunResult week = cli({"dlq", "purge", "--older-than", "7d"}, db_env(db));
        REQUIRE_EXIT(week, 0);
        CHECK(week.out == "deleted 1 dead-letter entries\n");
        CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog" WHERE "id" = 'old')") == 0);
        RunResult minutes = cli({"dlq", "purge", "--older-than=150s"}, db_env(db));
        REQUIRE_EXIT(minutes, 0);
        CHECK(minutes.out == "deleted 1 dead-letter entries\n"); // d1, failed 3 minutes ago
        RunResult all = cli({"dlq", "purge", "--all"}, db_env(db));
        REQUIRE_EXIT(all, 0);
        CHECK(all.out == "deleted 2 dead-letter entries\n");
        CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 0);
        // The events themselves stay: EventLog rows are never deleted.
        CHECK(db.count(R"(SELECT count(*) FROM "EventLog")") == 4);
    }
}

TEST_CASE("cli: check-config", "[cli]") {
    TestDatabase db;
    SECTION("a good environment") {
        RunResult r =
            cli({"check-config"},
                {{"DATABASE_URL", db.url()}, {"OUTBOX_WORKERS", "3"}, {"LOG_FORMAT", "json"}});
        REQUIRE_EXIT(r, 0);
        CHECK(r.out.find("configuration is valid") != std::string::npos);
        CHECK(r.out.find("DATABASE_URL=postgresql://outbox_test:****@") != std::string::npos);
        CHECK(r.out.find("OUTBOX_WORKERS=3\n") != std::string::npos);
        CHECK(r.out.find("LOG_FORMAT=json\n") != std::string::npos);
        CHECK(r.out.find(db.password()) == std::string::npos);
        CHECK(r.err.find(db.password()) == std::string::npos);
    }
    SECTION("a bad environment") {
        RunResult r =
            cli({"check-config"}, {{"DATABASE_URL", db.url()}, {"OUTBOX_BACKOFF_JITTER", "2"}});
        REQUIRE_EXIT(r, 78);
        CHECK(lines(r.err).size() == 1);
        CHECK(r.err.find("OUTBOX_BACKOFF_JITTER=\"2\"") != std::string::npos);
        CHECK(r.out.empty());
    }
    SECTION("the handlers file") {
        std::string dir = std::filesystem::temp_directory_path() /
                          ("outbox-handlers-" + std::to_string(getpid()));
        std::filesystem::create_directories(dir);
        std::ofstream(dir + "/good.json")
            << R"([{"eventTypes": ["shopify.*"], "log": {"level": "info"}},
                  {"name": "sync", "eventTypes": ["order.created"], "exec": {"command": ["/bin/true"]}}])";
        std::ofstream(dir + "/bad.json") << R"([{"eventTypes": [], "log": true}])";
        RunResult good = cli({"check-config"},
                             {{"DATABASE_URL", db.url()}, {"OUTBOX_HANDLERS", dir + "/good.json"}});
        RunResult bad = cli({"check-config"},
                            {{"DATABASE_URL", db.url()}, {"OUTBOX_HANDLERS", dir + "/bad.json"}});
        RunResult missing = cli({"check-config"}, {{"DATABASE_URL", db.url()},
                                                   {"OUTBOX_HANDLERS", dir + "/missing.json"}});
        std::filesystem::remove_all(dir);
        REQUIRE_EXIT(good, 0);
        CHECK(good.out.find("(2 subscribers)") != std::string::npos);
        CHECK(good.out.find("sync: order.created") != std::string::npos);
        REQUIRE_EXIT(bad, 78);
        CHECK(lines(bad.err).size() == 1);
        CHECK(bad.err.find("bad.json") != std::string::npos);
        CHECK(bad.err.find("eventTypes") != std::string::npos);
        REQUIRE_EXIT(missing, 78);
        CHECK(missing.err.find("missing.json") != std::string::npos);
    }
}

TEST_CASE("cli: health asks /health and follows the status", "[cli]") {
    SECTION("200 is healthy; the body is printed") {
        OneShotHttpServer server(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            "Content-Length: 16\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}\n");
        // A wildcard listen address is asked on the loopback address.
        RunResult r = cli({"health"}, {{"OUTBOX_HTTP_HOST", "0.0.0.0"},
                                       {"OUTBOX_HTTP_PORT", std::to_string(server.port())}});
        REQUIRE_EXIT(r, 0);
        CHECK(r.out == "{\"status\":\"ok\"}\n");
        CHECK(server.request_line() == "GET /health HTTP/1.1");
    }
    SECTION("503 is unhealthy; the reasons are printed") {
        OneShotHttpServer server(
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
            "c\r\n{\"status\":\"u\r\n9\r\nnhealthy\"\r\n1\r\n}\r\n0\r\n\r\n");
        RunResult r = cli({"health"}, {{"OUTBOX_HTTP_PORT", std::to_string(server.port())}});
        REQUIRE_EXIT(r, 1);
        CHECK(r.out == "{\"status\":\"unhealthy\"}\n");
        CHECK(r.err.find("HTTP 503") != std::string::npos);
    }
    SECTION("nothing listening") {
        int port = outbox::test::free_tcp_port();
        RunResult r = cli({"health"}, {{"OUTBOX_HTTP_PORT", std::to_string(port)}});
        REQUIRE_EXIT(r, 1);
        CHECK(r.err.find("cannot connect to 127.0.0.1:" + std::to_string(port)) !=
              std::string::npos);
    }
    SECTION("the endpoint is disabled") {
        RunResult r = cli({"health"}, {{"OUTBOX_HTTP_PORT", "0"}});
        REQUIRE_EXIT(r, 1);
        CHECK(r.err.find("disabled") != std::string::npos);
    }
}

TEST_CASE("emit gives events OUTBOX_MAX_RETRIES attempts unless --max-retries says otherwise",
          "[cli]") {
    TestDatabase db;
    db.migrate();
    Env env = db_env(db);
    env["OUTBOX_MAX_RETRIES"] = "3";
    REQUIRE(cli({"emit", "--type", "budget.default", "--key", "k1"}, env).status.exited_with(0));
    REQUIRE(cli({"emit", "--type", "budget.explicit", "--key", "k2", "--max-retries", "7"}, env)
                .status.exited_with(0));
    REQUIRE(cli({"emit", "--type", "budget.default", "--count", "5"}, env).status.exited_with(0));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'budget.default' AND "maxRetries" = 3)") ==
        6);
    CHECK(db.scalar(R"(SELECT "maxRetries" FROM "Outbox" WHERE "eventType" = 'budget.explicit')") ==
          "7");
}
