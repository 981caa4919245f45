// End-to-end tests of the broker handler kinds (SPEC 4, "Message brokers"): the real service
// publishing to a real broker server (Kafka: librdkafka's mock cluster), read back by an
// independent consumer written with the broker's own client library, never with our sink code.
//
// Each broker's test file implements BrokerUnderTest and runs the same scenarios:
//   relay_through_outage   5,000 events over 50 ordering keys; the broker stopped for 10 s in the
//                          middle while events of another type keep flowing to another
//                          subscriber; then every event is in the broker once per publication,
//                          with body, key and headers right and per-key order kept, nothing lost,
//                          and every duplicate droppable by its Outbox id.
//   permanent_rejection    what the broker refuses for good ends in the DLQ after one attempt, with
//                          the broker's reason.
//   check_connect          `check-config --connect` reports the broker reachable, then not.
#pragma once

#include "common/json.h"
#include "tests/integration/engine_support.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace outbox::test {

// One message as the independent consumer read it.
struct ReceivedMessage {
    std::optional<std::string> key;             // record key (Kafka), "key" field (Redis)
    std::string body;                           // the body as published
    std::map<std::string, std::string> headers; // header (or stream-entry field) name -> value
};

class BrokerUnderTest {
  public:
    virtual ~BrokerUnderTest() = default;
    virtual std::string kind() const = 0; // "kafka", "nats", "amqp", "redis"
    // The JSON object of the handlers file's kind key, publishing to a destination the consumer
    // reads, e.g. {"url": "nats://127.0.0.1:4222", "subject": "orders.${eventType}"}.
    virtual std::string sink_json() const = 0;
    // Whether the broker drops a re-publication with the same dedup id by itself (NATS
    // JetStream's Nats-Msg-Id): then the consumer must see no duplicate at all.
    virtual bool deduplicates() const = 0;
    virtual void stop() = 0;  // the broker unreachable: no server listening
    virtual void start() = 0; // back, with the data it had
    // Every message published to the destination of sink_json(), in the broker's order (for
    // Kafka: each partition's order, partitions one after another), waiting until at least
    // `at_least` have arrived or `timeout` has passed.
    virtual std::vector<ReceivedMessage> read_all(size_t at_least,
                                                  std::chrono::milliseconds timeout) = 0;
    // A sink configuration the broker refuses for good, and a phrase of the broker's reason that
    // must appear in the dead letter's failureReason. The payload of the event is `payload`
    // (large for "message too large" cases).
    struct Rejection {
        std::string sink_json;
        std::string reason;
        std::string payload = "{}";
    };
    virtual Rejection rejection() = 0;
    // Credentials in sink_json() (a password in the URL) that must never appear in the
    // service's log, in an event's lastError, in a dead letter's reason or in check-config's
    // output.
    virtual std::vector<std::string> secrets() const { return {}; }
};

// No secret of `broker` appears in `text` (a log, an error, an output); `where` names it.
inline void check_no_secret(const BrokerUnderTest& broker, const std::string& text,
                            const std::string& where) {
    for (const std::string& secret : broker.secrets()) {
        INFO(where << " contains a secret of the " << broker.kind() << " sink");
        CHECK(text.find(secret) == std::string::npos);
    }
}

// The same in every event's lastError and every dead letter's failureReason.
inline void check_no_secret_in_database(const BrokerUnderTest& broker, const TestDatabase& db) {
    for (const std::string& secret : broker.secrets()) {
        std::string literal;
        for (char c : secret) {
            literal += c == '\'' ? std::string("''") : std::string(1, c);
        }
        INFO("a secret of the " << broker.kind() << " sink is stored in the database");
        CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE strpos("lastError", ')" + literal +
                       "') > 0") == 0);
        CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog" WHERE strpos("failureReason", ')" +
                       literal + "') > 0") == 0);
    }
}

inline constexpr const char* kE2eTraceparent =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

inline std::string handlers_json_for(const BrokerUnderTest& broker, const std::string& sink_json) {
    return R"([{"name": "to-)" + broker.kind() + R"(", "eventTypes": ["shop.*"], ")" +
           broker.kind() + R"(": )" + sink_json + R"(},
               {"name": "audit", "eventTypes": ["other.*"], "log": {"level": "debug"}}])";
}

inline RunResult emit(const TestDatabase& db, std::vector<std::string> args) {
    std::vector<std::string> all = {"emit"};
    all.insert(all.end(), args.begin(), args.end());
    RunResult result = run_process(OUTBOX_BINARY, command(all, {{"DATABASE_URL", db.url()}}),
                                   std::chrono::seconds(120));
    INFO(result.err);
    REQUIRE(result.status.exited_with(0));
    return result;
}

inline void relay_through_outage(BrokerUnderTest& broker) {
    constexpr int kEvents = 5000;
    constexpr int kKeys = 50;
    constexpr int kOthers = 20;
    TestDatabase db;
    db.migrate();
    const std::string handlers = write_handlers_file(handlers_json_for(broker, broker.sink_json()));
    Service service(db, {{"OUTBOX_HANDLERS", handlers},
                         {"OUTBOX_INITIAL_DELAY_MS", "200"},
                         {"OUTBOX_MAX_DELAY_MS", "1000"},
                         {"OUTBOX_HANDLER_TIMEOUT_MS", "5000"}});
    REQUIRE(service.wait_ready());

    // Events of one key must reach the broker in the order of their Outbox numbers; maxRetries
    // high enough that the outage dead-letters nothing.
    emit(db, {"--type", "shop.price", "--tenant", "t1", "--count", std::to_string(kEvents),
              "--ordering-key", "product", "--ordering-keys", std::to_string(kKeys),
              "--max-retries", "1000", "--correlation-id", "corr-1", "--metadata",
              std::string(R"({"traceparent": ")") + kE2eTraceparent + R"("})", "--payload",
              R"({"price": 12345678901234567890})"});

    const std::string shop_completed =
        R"(SELECT count(*) FROM "Outbox" WHERE status = 'COMPLETED' AND "eventType" = 'shop.price')";
    REQUIRE(wait_until([&] { return db.count(shop_completed) >= kEvents / 4; }, 120s, 20ms));

    // The outage: 10 s without the broker. Events of another type, for another subscriber, go on.
    const auto outage_start = std::chrono::steady_clock::now();
    broker.stop();
    emit(db, {"--type", "other.audit", "--count", std::to_string(kOthers)});
    {
        INFO(service.log());
        CHECK(wait_for_count(
            db,
            R"(SELECT count(*) FROM "Outbox" WHERE status = 'COMPLETED' AND "eventType" = 'other.audit')",
            kOthers, 8s));
    }
    // The outage must have been felt: some publication failed retryably, naming the broker.
    CHECK(wait_until(
        [&] {
            return db.count(R"(SELECT count(*) FROM "Outbox" WHERE "eventType" = 'shop.price'
                                 AND "retryCount" > 0 AND "lastError" LIKE '%)" +
                            broker.kind() + "%'") > 0;
        },
        8s));
    CHECK(db.count(shop_completed) < kEvents);
    // The rest of the 10 s is the scenario itself, not a wait for a condition.
    std::this_thread::sleep_until(outage_start + 10s);
    broker.start();

    {
        INFO(service.log());
        REQUIRE(wait_for_count(db, shop_completed, kEvents, 180s));
    }
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 0);
    stop_cleanly(service, db);
    check_no_secret(broker, service.log(), "the service's log");
    check_no_secret_in_database(broker, db);

    // What the database says each event is: its key and its number within the key.
    std::map<std::string, std::pair<std::string, long>> expected; // id -> (key, seq)
    {
        const PgResult rows = db.exec(R"(SELECT "id", "orderingKey", "orderingSeq" FROM "Outbox"
                                          WHERE "eventType" = 'shop.price')");
        for (int i = 0; i < rows.rows(); ++i) {
            expected[rows.value(i, 0)] = {rows.value(i, 1), std::stol(rows.value(i, 2))};
        }
    }
    REQUIRE(expected.size() == static_cast<size_t>(kEvents));

    const std::vector<ReceivedMessage> received = broker.read_all(kEvents, 60s);
    std::map<std::string, int> copies;
    std::map<std::string, long> last_seq_of_key;
    long out_of_order = 0, malformed = 0, unknown = 0;
    for (const ReceivedMessage& message : received) {
        const auto id_header = message.headers.find("outbox-id");
        if (id_header == message.headers.end()) {
            ++malformed;
            continue;
        }
        const std::string& id = id_header->second;
        const auto event = expected.find(id);
        if (event == expected.end()) {
            ++unknown;
            continue;
        }
        if (++copies[id] > 1) {
            continue; // a duplicate, dropped by its Outbox id as a consumer would
        }
        const auto& [key, seq] = event->second;
        // Body: the event object, whose id is the header's and whose payload kept every digit.
        const Json body = json_parse(message.body);
        const bool body_ok =
            body && json_string(body.get(), "id") == id &&
            json_string(body.get(), "eventType") == "shop.price" &&
            message.body.find(R"("price": 12345678901234567890)") != std::string::npos;
        const bool headers_ok = message.headers.count("outbox-event-type") &&
                                message.headers.at("outbox-event-type") == "shop.price" &&
                                message.headers.count("outbox-tenant-id") &&
                                message.headers.at("outbox-tenant-id") == "t1" &&
                                message.headers.count("outbox-correlation-id") &&
                                message.headers.at("outbox-correlation-id") == "corr-1" &&
                                message.headers.count("traceparent") &&
                                message.headers.at("traceparent") == kE2eTraceparent;
        const bool key_ok = broker.kind() == "nats" || broker.kind() == "amqp" ||
                            message.key == key; // only Kafka and Redis carry the key
        if (!body_ok || !headers_ok || !key_ok) {
            if (++malformed <= 3) {
                UNSCOPED_INFO("malformed: body " << message.body << " key "
                                                 << message.key.value_or("<none>"));
            }
        }
        auto [last, inserted] = last_seq_of_key.try_emplace(key, seq);
        if (!inserted) {
            if (seq <= last->second) {
                ++out_of_order;
            }
            last->second = seq;
        }
    }
    long duplicates = 0;
    for (const auto& [id, n] : copies) {
        duplicates += n - 1;
    }
    INFO(broker.kind() << ": " << received.size() << " messages read, " << copies.size()
                       << " distinct events, " << duplicates << " duplicates");
    CHECK(copies.size() == expected.size()); // nothing lost
    CHECK(malformed == 0);
    CHECK(unknown == 0);
    CHECK(out_of_order == 0);
    if (broker.deduplicates()) {
        CHECK(duplicates == 0);
    }
    // Every duplicate carries the Outbox id (checked above: no message without one), so a
    // consumer drops it; how many there were is reported, not bounded: each has a cause (a
    // publication acknowledged by the broker whose acknowledgement was lost in the outage).
    WARN(broker.kind() << ": " << duplicates << " duplicate(s) after the outage");
}

inline void permanent_rejection(BrokerUnderTest& broker) {
    TestDatabase db;
    db.migrate();
    const BrokerUnderTest::Rejection rejection = broker.rejection();
    const std::string handlers =
        write_handlers_file(handlers_json_for(broker, rejection.sink_json));
    Service service(db, {{"OUTBOX_HANDLERS", handlers}, {"OUTBOX_HANDLER_TIMEOUT_MS", "10000"}});
    REQUIRE(service.wait_ready());
    emit(db, {"--type", "shop.rejected", "--max-retries", "5", "--payload", rejection.payload});
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1, 60s));
    const std::string reason = db.scalar(R"(SELECT "failureReason" FROM "DlqEventLog")");
    INFO(reason);
    CHECK(reason.find("subscriber to-" + broker.kind() + ": " + broker.kind()) == 0);
    CHECK(reason.find(rejection.reason) != std::string::npos);
    // Permanent: one attempt, no retries.
    CHECK(db.scalar(R"(SELECT "retryCount" FROM "DlqEventLog")") == "1");
    stop_cleanly(service, db);
    check_no_secret(broker, service.log(), "the service's log");
    check_no_secret_in_database(broker, db);
}

inline void check_connect(BrokerUnderTest& broker) {
    const std::string handlers = write_handlers_file(handlers_json_for(broker, broker.sink_json()));
    auto run_check = [&] {
        return run_process(OUTBOX_BINARY,
                           command({"check-config", "--connect"},
                                   {{"DATABASE_URL", "postgresql://u:p@127.0.0.1:1/none"},
                                    {"OUTBOX_HANDLERS", handlers},
                                    {"OUTBOX_HANDLER_TIMEOUT_MS", "3000"}}),
                           std::chrono::seconds(30));
    };
    const RunResult live = run_check();
    INFO(live.out << live.err);
    CHECK(live.status.exited_with(0));
    CHECK(live.out.find("connect to-" + broker.kind() + " (" + broker.kind() + " ") !=
          std::string::npos);
    CHECK(live.out.find("): ok") != std::string::npos);
    broker.stop();
    const RunResult dead = run_check();
    INFO(dead.out << dead.err);
    CHECK(dead.status.exited_with(1));
    CHECK(dead.out.find("): FAILED: " + broker.kind()) != std::string::npos);
    check_no_secret(broker, live.out + live.err + dead.out + dead.err, "check-config's output");
    broker.start();
}

} // namespace outbox::test
