// The kafka sink (worker/kafka_sink.cpp) against librdkafka's mock cluster
// (tests/support/kafka_mock.h), read back with an independent librdkafka consumer.
//
// The tests play the handler process's part: many publications in flight, waiting on wait_fd(),
// and, where the cluster goes down, the supervisor's part too: what failed is published again
// until it succeeds.
#include "tests/support/kafka_mock.h"
#include "tests/support/process.h"
#include "worker/sink.h"

#include <catch2/catch.hpp>
#include <librdkafka/rdkafka.h>

#include <poll.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using outbox::BrokerMessage;
using outbox::KafkaSinkOptions;
using outbox::Outcome;
using outbox::Result;
using outbox::Sink;
using outbox::test::KafkaMockCluster;
using outbox::test::wait_until;

namespace {

struct Record {
    int32_t partition = 0;
    int64_t offset = 0;
    std::optional<std::string> key;
    std::string value;
    std::vector<std::pair<std::string, std::string>> headers;

    std::string header(const std::string& name) const {
        for (const auto& [n, v] : headers) {
            if (n == name) {
                return v;
            }
        }
        return {};
    }
};

// Everything in `topic`, partition by partition in offset order, read by a plain librdkafka
// consumer (no group: it assigns every partition from the beginning and stops at the end).
std::vector<Record> read_topic(const std::string& bootstrap, const std::string& topic) {
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    for (auto [name, value] : std::vector<std::pair<const char*, const char*>>{
             {"bootstrap.servers", bootstrap.c_str()},
             {"group.id", "outbox-test-reader"}, // assign() wants one; it joins no group
             {"enable.auto.commit", "false"},
             {"enable.partition.eof", "true"},
             {"log_level", "3"}}) {
        REQUIRE(rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) == RD_KAFKA_CONF_OK);
    }
    // Destroyed however the function ends, so that a failed REQUIRE leaves no client behind.
    std::unique_ptr<rd_kafka_t, void (*)(rd_kafka_t*)> handle(
        rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr), [](rd_kafka_t* rk) {
            rd_kafka_consumer_close(rk);
            rd_kafka_destroy(rk);
        });
    REQUIRE(handle);
    rd_kafka_t* consumer = handle.get();

    rd_kafka_topic_t* rkt = rd_kafka_topic_new(consumer, topic.c_str(), nullptr);
    const rd_kafka_metadata_t* metadata = nullptr;
    REQUIRE(rd_kafka_metadata(consumer, 0, rkt, &metadata, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);
    REQUIRE(metadata->topic_cnt == 1);
    int partitions = metadata->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(metadata);
    rd_kafka_topic_destroy(rkt);
    REQUIRE(partitions > 0);

    std::map<int32_t, int64_t> high;
    rd_kafka_topic_partition_list_t* assignment = rd_kafka_topic_partition_list_new(partitions);
    for (int32_t p = 0; p < partitions; ++p) {
        int64_t low = 0;
        int64_t hi = 0;
        REQUIRE(rd_kafka_query_watermark_offsets(consumer, topic.c_str(), p, &low, &hi, 10000) ==
                RD_KAFKA_RESP_ERR_NO_ERROR);
        high[p] = hi;
        rd_kafka_topic_partition_list_add(assignment, topic.c_str(), p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    }
    REQUIRE(rd_kafka_assign(consumer, assignment) == RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(assignment);

    std::vector<Record> records;
    std::map<int32_t, int64_t> next; // the next offset expected per partition
    auto done = [&] {
        for (const auto& [p, hi] : high) {
            if (next[p] < hi) {
                return false;
            }
        }
        return true;
    };
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!done()) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        rd_kafka_message_t* message = rd_kafka_consumer_poll(consumer, 200);
        if (message == nullptr) {
            continue;
        }
        if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            Record r;
            r.partition = message->partition;
            r.offset = message->offset;
            if (message->key != nullptr) {
                r.key = std::string(static_cast<const char*>(message->key), message->key_len);
            }
            r.value = std::string(static_cast<const char*>(message->payload), message->len);
            rd_kafka_headers_t* headers = nullptr;
            if (rd_kafka_message_headers(message, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                const char* name = nullptr;
                const void* value = nullptr;
                size_t size = 0;
                for (size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
                                   RD_KAFKA_RESP_ERR_NO_ERROR;
                     ++i) {
                    r.headers.emplace_back(name,
                                           std::string(static_cast<const char*>(value), size));
                }
            }
            next[r.partition] = r.offset + 1;
            records.push_back(std::move(r));
        } else if (message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            std::string error = rd_kafka_message_errstr(message);
            rd_kafka_message_destroy(message);
            FAIL("consumer: " << error);
        }
        rd_kafka_message_destroy(message);
    }
    return records;
}

KafkaSinkOptions sink_options(const std::string& brokers, long timeout_ms = 10000,
                              std::map<std::string, std::string> properties = {}) {
    KafkaSinkOptions options;
    options.brokers = brokers;
    options.timeout_ms = timeout_ms;
    options.properties = std::move(properties);
    return options;
}

BrokerMessage make_message(const std::string& topic, int i, int keys) {
    BrokerMessage m;
    m.id = "00000000-0000-4000-8000-" + std::to_string(100000000000 + i);
    m.destination = topic;
    m.key = "customer-" + std::to_string(i % keys);
    m.body = R"({"id":")" + m.id + R"(","n":)" + std::to_string(i) + R"(,"note":"grüße \"x\""})";
    m.content_type = "application/json";
    m.headers = {{outbox::kHeaderOutboxId, m.id},
                 {outbox::kHeaderEventType, "order.created"},
                 {outbox::kHeaderTenantId, "tenant-" + std::to_string(i % 3)}};
    if (i % 2 == 0) {
        m.headers.emplace_back(outbox::kHeaderTraceparent,
                               "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }
    return m;
}

// Drives a sink as the handler process does: keeps up to `window` publications in flight and
// waits on wait_fd() for their outcomes. `on_outcome` sees every outcome, with the index of the
// message; `before_publish` may stop publishing for a while (returns false). Returns the number of
// waits on wait_fd() that ended without the descriptor becoming readable although publications
// were pending (the descriptor failed to wake the process).
struct Driver {
    Sink& sink;
    size_t window = 128;
    int missed_wakeups = 0;

    void wait_once(int timeout_ms) {
        pollfd p{sink.wait_fd(), POLLIN, 0};
        int n = ::poll(&p, 1, timeout_ms);
        if (n == 0 && sink.pending() > 0) {
            ++missed_wakeups;
        }
        sink.poll(0);
    }
};

// publish() and poll() until the outcome is known (worker/sink.cpp's publish_and_wait, written
// out here so that these tests depend on nothing but the sink).
Result publish_and_await(Sink& sink, const BrokerMessage& message) {
    std::optional<Result> outcome;
    sink.publish(message, [&](Result r) { outcome = std::move(r); });
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (!outcome) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        sink.poll(100);
    }
    return *outcome;
}

int64_t vm_hwm_kib() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("VmHWM:", 0) == 0) {
            return std::stoll(line.substr(6));
        }
    }
    return -1;
}

} // namespace

TEST_CASE("kafka sink: 5000 messages with many in flight are read back once each and in key order",
          "[broker][kafka]") {
    const std::string topic = "orders";
    KafkaMockCluster kafka({{topic, 6}});
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), 10000));
    REQUIRE(sink->wait_fd() >= 0);
    CHECK_FALSE(sink->connected()); // nothing connects before the first publication
    CHECK(sink->pending() == 0);

    constexpr int kMessages = 5000;
    constexpr int kKeys = 97;
    std::vector<BrokerMessage> messages;
    for (int i = 0; i < kMessages; ++i) {
        messages.push_back(make_message(topic, i, kKeys));
    }
    std::vector<std::vector<Result>> outcomes(kMessages);
    Driver driver{*sink};
    size_t most_in_flight = 0;
    int next = 0;
    auto started = std::chrono::steady_clock::now();
    auto deadline = started + 60s;
    int completed = 0;
    while (completed < kMessages) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        while (next < kMessages && sink->pending() < driver.window) {
            int i = next++;
            sink->publish(messages[i], [&, i](Result r) {
                outcomes[i].push_back(std::move(r));
                ++completed;
            });
            most_in_flight = std::max(most_in_flight, sink->pending());
        }
        driver.wait_once(5000);
    }
    auto elapsed = std::chrono::steady_clock::now() - started;
    CHECK(driver.missed_wakeups == 0);
    CHECK(most_in_flight == driver.window);
    CHECK(sink->pending() == 0);
    CHECK(sink->connected());
    int ok = 0;
    for (int i = 0; i < kMessages; ++i) {
        REQUIRE(outcomes[i].size() == 1); // each Done exactly once
        INFO("message " << i << ": " << outcomes[i][0].error);
        CHECK(outcomes[i][0].outcome == Outcome::success);
        ok += outcomes[i][0].outcome == Outcome::success;
    }
    REQUIRE(ok == kMessages);
    WARN("kafka sink: " << kMessages << " messages in "
                        << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()
                        << " ms");

    auto records = read_topic(kafka.bootstrap(), topic);
    REQUIRE(records.size() == kMessages);
    std::map<std::string, int> index_of;
    for (int i = 0; i < kMessages; ++i) {
        index_of[messages[i].id] = i;
    }
    std::set<std::string> seen;
    std::map<std::string, int> last_index_of_key;
    std::map<std::string, int32_t> partition_of_key;
    for (const auto& r : records) {
        std::string id = r.header(outbox::kHeaderOutboxId);
        REQUIRE(index_of.count(id) == 1);
        CHECK(seen.insert(id).second); // once each
        const BrokerMessage& m = messages[index_of[id]];
        CHECK(r.key == m.key);
        CHECK(r.value == m.body);
        CHECK(r.headers == m.headers); // every header, in order
        // One key, one partition, and the order in which the messages were published.
        auto [it, first] = partition_of_key.emplace(*r.key, r.partition);
        CHECK(it->second == r.partition);
        auto last = last_index_of_key.find(*r.key);
        if (last != last_index_of_key.end()) {
            CHECK(last->second < index_of[id]);
        }
        last_index_of_key[*r.key] = index_of[id];
    }
    CHECK(seen.size() == kMessages);
    CHECK(partition_of_key.size() == kKeys);
}

TEST_CASE("kafka sink: the cluster goes down mid-run and comes back and nothing is lost",
          "[broker][kafka]") {
    const std::string topic = "orders";
    KafkaMockCluster kafka({{topic, 6}});
    // A long timeout: what is pending when the cluster goes down must fail well before it.
    constexpr long kTimeoutMs = 10000;
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), kTimeoutMs));

    constexpr int kMessages = 5000;
    constexpr int kDownAfter = 1500;
    std::vector<BrokerMessage> messages;
    for (int i = 0; i < kMessages; ++i) {
        messages.push_back(make_message(topic, i, 97));
    }
    std::vector<std::vector<Result>> outcomes(kMessages);
    std::vector<bool> failed_inline(kMessages, false);
    std::vector<int> failed;
    int succeeded = 0;
    int completed = 0;
    bool down = false;
    std::chrono::steady_clock::time_point down_at;
    bool seen_disconnected = false;
    Driver driver{*sink};

    int publishing = -1; // the message whose publish() is running
    auto publish = [&](int i) {
        publishing = i;
        sink->publish(messages[i], [&, i](Result r) {
            if (publishing == i) {
                failed_inline[i] = true;
            }
            if (r.outcome == Outcome::success) {
                ++succeeded;
            } else {
                failed.push_back(i);
            }
            outcomes[i].push_back(std::move(r));
            ++completed;
        });
        publishing = -1;
    };

    // First pass: every message once; the cluster goes down after kDownAfter successes.
    int next = 0;
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (completed < kMessages) {
        INFO(completed << " completed, " << succeeded << " succeeded, " << sink->pending()
                       << " pending");
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        while (next < kMessages && sink->pending() < driver.window) {
            publish(next++);
        }
        driver.wait_once(100);
        if (!down && succeeded >= kDownAfter) {
            kafka.down();
            down = true;
            down_at = std::chrono::steady_clock::now();
        }
        if (down && !sink->connected()) {
            seen_disconnected = true;
        }
    }
    REQUIRE(down);
    // Everything pending when the cluster went down failed soon, long before the timeout.
    auto failing_took = std::chrono::steady_clock::now() - down_at;
    CHECK(failing_took < std::chrono::milliseconds(kTimeoutMs / 3));
    CHECK(seen_disconnected);
    CHECK_FALSE(sink->connected());
    REQUIRE_FALSE(failed.empty());

    // While the cluster was down every failure was retryable and said why: what was published
    // after librdkafka noticed failed at once, what it held unsent was purged.
    int fast = 0;
    int purged = 0;
    int other = 0;
    std::string purged_example;
    for (int i : failed) {
        const Result& r = outcomes[i].back();
        INFO("message " << i << ": " << r.error);
        CHECK(r.outcome == Outcome::retry);
        if (failed_inline[i]) {
            ++fast;
            CHECK(r.error.find("kafka: not connected to " + kafka.bootstrap() +
                               ": all brokers are down") == 0);
        } else if (r.error.find("kafka: publish to orders: not sent, all brokers are down") == 0) {
            ++purged;
            purged_example = r.error;
        } else {
            ++other;
            CHECK(r.error.find("kafka: publish to orders: ") == 0);
        }
    }
    CHECK(fast > 0);
    CHECK(other == 0);
    WARN("cluster down: "
         << failed.size() << " failures within "
         << std::chrono::duration_cast<std::chrono::milliseconds>(failing_took).count() << " ms, "
         << fast << " at once, " << purged << " purged; first: "
         << outcomes[failed.front()].back().error << "; purged: " << purged_example);

    // The supervisor's part: the cluster is back, what failed is published again until it works.
    kafka.up();
    REQUIRE(wait_until(
        [&] {
            sink->poll(0);
            return sink->connected();
        },
        20s));
    std::set<int> republished;
    deadline = std::chrono::steady_clock::now() + 60s;
    while (succeeded < kMessages) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        std::vector<int> again;
        again.swap(failed);
        size_t k = 0;
        while (k < again.size() || sink->pending() > 0) {
            REQUIRE(std::chrono::steady_clock::now() < deadline);
            while (k < again.size() && sink->pending() < driver.window) {
                republished.insert(again[k]);
                publish(again[k++]);
            }
            driver.wait_once(100);
        }
    }
    CHECK(succeeded == kMessages);
    CHECK(sink->connected());

    // Every message is there; a message appears twice only when a failed publication had in fact
    // been written (its Outbox id header lets a consumer drop the copy).
    auto records = read_topic(kafka.bootstrap(), topic);
    std::map<std::string, int> copies;
    for (const auto& r : records) {
        ++copies[r.header(outbox::kHeaderOutboxId)];
    }
    int duplicates = 0;
    for (int i = 0; i < kMessages; ++i) {
        INFO("message " << i);
        REQUIRE(copies[messages[i].id] >= 1);
        if (copies[messages[i].id] > 1) {
            ++duplicates;
            CHECK(republished.count(i) == 1);
            CHECK(copies[messages[i].id] == 2);
        }
    }
    CHECK(records.size() == static_cast<size_t>(kMessages + duplicates));
    WARN("after down/up: " << republished.size() << " republished, " << duplicates
                           << " duplicates in the topic");
}

TEST_CASE("kafka sink: a message larger than the maximum fails permanently", "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 2}});
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), 10000));

    SECTION("refused by the producer before it is sent (message.max.bytes)") {
        BrokerMessage big = make_message("orders", 1, 10);
        big.body.assign(2 * 1024 * 1024, 'x');
        std::optional<Result> outcome;
        sink->publish(big, [&](Result r) { outcome = std::move(r); });
        REQUIRE(outcome); // known at once
        CHECK(outcome->outcome == Outcome::permanent);
        CHECK(outcome->error.find("kafka: publish to orders: ") == 0);
        CHECK(outcome->error.find("too large") != std::string::npos);
    }
    SECTION("rejected by the broker") {
        // A broker whose message.max.bytes is below the producer's: the mock cluster answers the
        // next Produce request with MESSAGE_TOO_LARGE (10).
        kafka.fail_next_produce_requests(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 1);
        Result r = publish_and_await(*sink, make_message("orders", 2, 10));
        CHECK(r.outcome == Outcome::permanent);
        CHECK(r.error == std::string("kafka: publish to orders: ") +
                             rd_kafka_err2str(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE));
    }
    // The producer is still usable afterwards.
    Result after = publish_and_await(*sink, make_message("orders", 3, 10));
    INFO(after.error);
    CHECK(after.outcome == Outcome::success);
    auto records = read_topic(kafka.bootstrap(), "orders");
    REQUIRE(records.size() == 1);
    CHECK(records[0].header(outbox::kHeaderOutboxId) == make_message("orders", 3, 10).id);
}

TEST_CASE("kafka sink: an unknown topic fails permanently when the cluster does not create it",
          "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 2}});
    kafka.set_topic_error("no-such-topic", RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
    constexpr long kTimeoutMs = 4000;
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), kTimeoutMs));
    auto started = std::chrono::steady_clock::now();
    Result first = publish_and_await(*sink, make_message("no-such-topic", 1, 10));
    auto elapsed = std::chrono::steady_clock::now() - started;
    INFO(first.error);
    CHECK(first.outcome == Outcome::permanent);
    // librdkafka's own "Local: Unknown topic", or the broker's "Unknown topic or partition".
    CHECK(first.error.find("kafka: publish to no-such-topic: ") == 0);
    CHECK(first.error.find("Unknown topic") != std::string::npos);
    // Known before the message timeout, so it is not mistaken for a timeout.
    CHECK(elapsed < std::chrono::milliseconds(kTimeoutMs));

    // Now that the producer knows the topic does not exist, it refuses at once.
    std::optional<Result> second;
    sink->publish(make_message("no-such-topic", 2, 10), [&](Result r) { second = std::move(r); });
    REQUIRE(second);
    INFO(second->error);
    CHECK(second->outcome == Outcome::permanent);
    CHECK(second->error == std::string("kafka: publish to no-such-topic: ") +
                               rd_kafka_err2str(RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));

    // Topics that exist still work.
    Result ok = publish_and_await(*sink, make_message("orders", 3, 10));
    INFO(ok.error);
    CHECK(ok.outcome == Outcome::success);
}

TEST_CASE(
    "kafka sink: after a fatal producer error what is pending fails and a new producer takes over",
    "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 1}});
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), 10000));
    REQUIRE(publish_and_await(*sink, make_message("orders", 1, 10)).outcome == Outcome::success);
    // OUT_OF_ORDER_SEQUENCE_NUMBER (45) for the first request in flight: the idempotent producer
    // and the broker disagree, which librdkafka treats as fatal.
    kafka.fail_next_produce_requests(RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, 1);
    Result failed = publish_and_await(*sink, make_message("orders", 2, 10));
    INFO(failed.error);
    CHECK(failed.outcome == Outcome::retry);
    // From the message's delivery report or from the fatal error, whichever librdkafka serves
    // first: the same start and the same explanation.
    CHECK(failed.error.find("kafka: publish to orders: ") == 0);
    CHECK(failed.error.find("the producer failed (OUT_OF_ORDER_SEQUENCE_NUMBER: ") !=
          std::string::npos);
    CHECK(failed.error.find("and is replaced; the message may have been written") !=
          std::string::npos);
    CHECK(sink->pending() == 0);

    // The failed producer would refuse it (ERR__FATAL): this is a new one.
    Result again = publish_and_await(*sink, make_message("orders", 2, 10));
    INFO(again.error);
    CHECK(again.outcome == Outcome::success);
    auto records = read_topic(kafka.bootstrap(), "orders");
    std::vector<std::string> ids;
    for (const auto& r : records) {
        ids.push_back(r.header(outbox::kHeaderOutboxId));
    }
    CHECK(ids == std::vector<std::string>{make_message("orders", 1, 10).id,
                                          make_message("orders", 2, 10).id});
}

TEST_CASE("kafka sink: connected() follows the cluster and each change wakes wait_fd",
          "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 2}});
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap()));
    CHECK_FALSE(sink->connected());
    REQUIRE(publish_and_await(*sink, make_message("orders", 0, 10)).outcome == Outcome::success);
    CHECK(sink->connected());
    auto readable = [&](int timeout_ms) {
        pollfd p{sink->wait_fd(), POLLIN, 0};
        return ::poll(&p, 1, timeout_ms) == 1;
    };
    // Idle: once what is left has been served, nothing wakes the process.
    REQUIRE(wait_until(
        [&] {
            sink->poll(0);
            return !readable(0);
        },
        5s));

    kafka.down();
    CHECK(readable(10000)); // with nothing to publish, the lost connection still wakes it
    REQUIRE(wait_until(
        [&] {
            sink->poll(0);
            return !sink->connected();
        },
        10s));
    REQUIRE(wait_until(
        [&] {
            sink->poll(0);
            return !readable(0);
        },
        5s));

    kafka.up(); // librdkafka reconnects by itself, about once a second while no broker is up
    CHECK(readable(20000));
    REQUIRE(wait_until(
        [&] {
            sink->poll(0);
            return sink->connected();
        },
        20s));
    CHECK(publish_and_await(*sink, make_message("orders", 1, 10)).outcome == Outcome::success);
}

TEST_CASE("kafka sink: a publication fails at its deadline although librdkafka would wait longer",
          "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 1}});
    constexpr long kTimeoutMs = 1500;
    // librdkafka's own message timeout far beyond the sink's: only the sink's deadline can end
    // the publication in time (librdkafka's can be seconds late while it reconnects).
    auto sink = outbox::make_kafka_sink(
        sink_options(kafka.bootstrap(), kTimeoutMs, {{"message.timeout.ms", "60000"}}));
    REQUIRE(publish_and_await(*sink, make_message("orders", 0, 10)).outcome == Outcome::success);

    kafka.set_rtt(4000); // every answer comes 4 s late
    int calls = 0;
    std::optional<Result> outcome;
    auto started = std::chrono::steady_clock::now();
    sink->publish(make_message("orders", 1, 10), [&](Result r) {
        ++calls;
        outcome = std::move(r);
    });
    REQUIRE(wait_until(
        [&] {
            sink->poll(100);
            return outcome.has_value();
        },
        10s, 1ms));
    auto elapsed = std::chrono::steady_clock::now() - started;
    CHECK(outcome->outcome == Outcome::retry);
    CHECK(outcome->error == "kafka: publish to orders: no acknowledgement within 1500 ms; the "
                            "message may have been written");
    CHECK(elapsed >= std::chrono::milliseconds(kTimeoutMs));
    CHECK(elapsed < std::chrono::milliseconds(kTimeoutMs + 1000));
    CHECK(sink->pending() == 0);

    // The late acknowledgement changes nothing: the publication had its one outcome.
    kafka.set_rtt(0);
    int i = 2;
    REQUIRE(wait_until(
        [&] {
            return publish_and_await(*sink, make_message("orders", i++, 10)).outcome ==
                   Outcome::success;
        },
        20s));
    CHECK(calls == 1);
}

TEST_CASE("kafka sink: a full producer queue fails at once and retryably", "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 2}});
    // Room for 10 messages in the producer: the rest of a burst meets back-pressure.
    auto sink = outbox::make_kafka_sink(
        sink_options(kafka.bootstrap(), 10000, {{"queue.buffering.max.messages", "10"}}));
    // No poll() during the burst, so every outcome known during it was known at once.
    bool burst = true;
    std::vector<Result> at_once;
    std::vector<Result> later;
    for (int i = 0; i < 50; ++i) {
        sink->publish(make_message("orders", i, 10),
                      [&](Result r) { (burst ? at_once : later).push_back(std::move(r)); });
    }
    burst = false;
    CHECK(sink->pending() == 10);
    REQUIRE(at_once.size() == 40);
    for (const auto& r : at_once) {
        CHECK(r.outcome == Outcome::retry);
        CHECK(r.error == std::string("kafka: publish to orders: ") +
                             rd_kafka_err2str(RD_KAFKA_RESP_ERR__QUEUE_FULL) +
                             " (back-pressure: too many messages waiting in the producer)");
    }
    REQUIRE(wait_until(
        [&] {
            sink->poll(100);
            return sink->pending() == 0;
        },
        20s));
    REQUIRE(later.size() == 10);
    for (const auto& r : later) {
        INFO(r.error);
        CHECK(r.outcome == Outcome::success);
    }
}

TEST_CASE("kafka sink: check() reaches a live cluster and reports a dead one", "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 2}});
    SECTION("live") {
        auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap()));
        auto problem = sink->check(5000);
        CHECK_FALSE(problem);
        if (problem) {
            FAIL(*problem);
        }
    }
    SECTION("dead") {
        kafka.down();
        auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap()));
        auto started = std::chrono::steady_clock::now();
        auto problem = sink->check(1500);
        auto elapsed = std::chrono::steady_clock::now() - started;
        REQUIRE(problem);
        CHECK(problem->find("kafka: cannot reach " + kafka.bootstrap() + " within 1500 ms: ") == 0);
        CHECK(problem->find('\n') == std::string::npos);
        CHECK(elapsed < 5s);
        WARN("check() against a dead cluster: " << *problem);
    }
    SECTION("a property librdkafka refuses") {
        auto sink = outbox::make_kafka_sink(
            sink_options(kafka.bootstrap(), 10000, {{"compression.type", "brotli"}}));
        auto problem = sink->check(5000);
        REQUIRE(problem);
        CHECK(problem->find("kafka: property compression.type=brotli: ") == 0);
    }
}

TEST_CASE("kafka sink: the destructor drops pending publications at once and without callbacks",
          "[broker][kafka]") {
    KafkaMockCluster kafka({{"orders", 2}});
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), 30000));
    REQUIRE(publish_and_await(*sink, make_message("orders", 0, 10)).outcome == Outcome::success);
    // With the cluster down and no poll() since, the producer accepts and queues them all.
    kafka.down();
    int called = 0;
    for (int i = 1; i <= 50; ++i) {
        sink->publish(make_message("orders", i, 10), [&](Result) { ++called; });
    }
    size_t pending = sink->pending();
    CHECK(pending + called == 50);
    auto started = std::chrono::steady_clock::now();
    sink.reset();
    auto elapsed = std::chrono::steady_clock::now() - started;
    CHECK(called == static_cast<int>(50 - pending));
    CHECK(elapsed < 3s);
    WARN("destroying a producer with "
         << pending << " pending publications took "
         << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms");
}

// Not part of the suite (hidden): throughput of the sink alone and the peak RSS of a process
// holding one producer. Run alone, so that VmHWM is this test's:
//     build/integration-tests "[kafka-bench]"
// OUTBOX_KAFKA_BENCH_MESSAGES (100000), OUTBOX_KAFKA_BENCH_WINDOW (publications in flight, 128)
// and OUTBOX_KAFKA_BENCH_LINGER_MS (the sink's linger.ms unless set) change the run.
TEST_CASE("kafka sink: throughput and peak RSS", "[.][kafka-bench]") {
    KafkaMockCluster kafka({{"bench", 6}});
    int64_t rss_before = vm_hwm_kib();
    auto env = [](const char* name, long fallback) {
        const char* value = std::getenv(name);
        return value != nullptr ? std::strtol(value, nullptr, 10) : fallback;
    };
    const int messages = static_cast<int>(env("OUTBOX_KAFKA_BENCH_MESSAGES", 100000));
    const auto window = static_cast<size_t>(env("OUTBOX_KAFKA_BENCH_WINDOW", 128));
    std::map<std::string, std::string> properties;
    if (std::getenv("OUTBOX_KAFKA_BENCH_LINGER_MS") != nullptr) {
        properties["linger.ms"] = std::getenv("OUTBOX_KAFKA_BENCH_LINGER_MS");
    }
    auto sink = outbox::make_kafka_sink(sink_options(kafka.bootstrap(), 30000, properties));
    // Bodies of a realistic size (an event JSON of about 600 bytes).
    BrokerMessage m = make_message("bench", 0, 1000);
    m.body += std::string(600 - std::min<size_t>(600, m.body.size()), ' ');
    int ok = 0;
    int failed = 0;
    Driver driver{*sink, window};
    auto started = std::chrono::steady_clock::now();
    int next = 0;
    while (ok + failed < messages) {
        while (next < messages && sink->pending() < window) {
            m.key = "customer-" + std::to_string(next % 1000);
            ++next;
            sink->publish(m, [&](Result r) { ++(r.outcome == Outcome::success ? ok : failed); });
        }
        driver.wait_once(5000);
    }
    auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
    CHECK(failed == 0);
    WARN("kafka sink: " << messages << " messages, window " << window << ", in " << elapsed.count()
                        << " s: " << messages / elapsed.count() << " messages/s; VmHWM "
                        << rss_before << " KiB before the producer, " << vm_hwm_kib()
                        << " KiB after");
}
