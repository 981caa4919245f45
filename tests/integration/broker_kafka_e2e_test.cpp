// The kafka handler kind end to end (tests/integration/broker_e2e.h): the service publishing to
// librdkafka's mock cluster (tests/support/kafka_mock.h: three brokers speaking the real Kafka
// protocol), read back by a plain librdkafka consumer of this file that assigns every partition
// from the beginning.
#include "tests/integration/broker_e2e.h"
#include "tests/support/kafka_mock.h"

#include <librdkafka/rdkafka.h>

#include <map>
#include <memory>

namespace {

using namespace outbox::test;

// The topic the sink publishes to ("outbox.${tenantId}" for the tenant of the scenario), with
// several partitions so that the keys spread over them.
constexpr const char* kTopic = "outbox.t1";
constexpr int kPartitions = 6;

using Consumer = std::unique_ptr<rd_kafka_t, void (*)(rd_kafka_t*)>;

// A consumer in no group: it is given its partitions (assign) and commits nothing.
Consumer make_consumer(const std::string& bootstrap) {
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    for (auto [name, value] : std::vector<std::pair<const char*, const char*>>{
             {"bootstrap.servers", bootstrap.c_str()},
             {"group.id", "outbox-e2e-reader"}, // assign() wants one; it joins no group
             {"enable.auto.commit", "false"},
             {"log_level", "3"}}) {
        REQUIRE(rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) == RD_KAFKA_CONF_OK);
    }
    Consumer consumer(rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr),
                      [](rd_kafka_t* rk) {
                          rd_kafka_consumer_close(rk);
                          rd_kafka_destroy(rk);
                      });
    INFO(errstr);
    REQUIRE(consumer);
    return consumer;
}

// The offset after the last record of each partition of `topic`.
std::map<int32_t, int64_t> high_watermarks(rd_kafka_t* consumer, const std::string& topic) {
    std::map<int32_t, int64_t> high;
    for (int32_t p = 0; p < kPartitions; ++p) {
        int64_t low = 0;
        int64_t hi = 0;
        rd_kafka_resp_err_t err =
            rd_kafka_query_watermark_offsets(consumer, topic.c_str(), p, &low, &hi, 10000);
        INFO("partition " << p << ": " << rd_kafka_err2str(err));
        REQUIRE(err == RD_KAFKA_RESP_ERR_NO_ERROR);
        REQUIRE(low == 0); // nothing was ever deleted: the offsets count the records
        high[p] = hi;
    }
    return high;
}

class KafkaUnderTest : public BrokerUnderTest {
  public:
    // What rejection() plays: a message larger than the producer's message.max.bytes, or a
    // topic the cluster says does not exist.
    enum class Refusal { too_large, unknown_topic };

    explicit KafkaUnderTest(Refusal refusal = Refusal::too_large)
        : cluster_({{kTopic, kPartitions}}), refusal_(refusal) {}

    std::string kind() const override { return "kafka"; }
    std::string sink_json() const override {
        return R"({"brokers": ")" + cluster_.bootstrap() + R"(", "topic": "outbox.${tenantId}"})";
    }
    // The idempotent producer drops the repeats of its own retries, not a new publication of an
    // event whose acknowledgement was lost.
    bool deduplicates() const override { return false; }
    void stop() override { cluster_.down(); }
    void start() override { cluster_.up(); }

    std::vector<ReceivedMessage> read_all(size_t at_least,
                                          std::chrono::milliseconds timeout) override {
        INFO(cluster_.log());
        Consumer handle = make_consumer(cluster_.bootstrap());
        rd_kafka_t* consumer = handle.get();
        std::map<int32_t, int64_t> high;
        auto total = [&] {
            int64_t sum = 0;
            for (const auto& [partition, offset] : high) {
                sum += offset;
            }
            return static_cast<size_t>(sum);
        };
        wait_until(
            [&] {
                high = high_watermarks(consumer, kTopic);
                return total() >= at_least;
            },
            timeout, 200ms);

        rd_kafka_topic_partition_list_t* assignment =
            rd_kafka_topic_partition_list_new(kPartitions);
        for (int32_t p = 0; p < kPartitions; ++p) {
            rd_kafka_topic_partition_list_add(assignment, kTopic, p)->offset =
                RD_KAFKA_OFFSET_BEGINNING;
        }
        rd_kafka_resp_err_t err = rd_kafka_assign(consumer, assignment);
        rd_kafka_topic_partition_list_destroy(assignment);
        REQUIRE(err == RD_KAFKA_RESP_ERR_NO_ERROR);

        // The consumer interleaves the partitions; each one's records stay in offset order.
        std::map<int32_t, std::vector<ReceivedMessage>> by_partition;
        std::map<int32_t, int64_t> next; // the next offset expected per partition
        auto done = [&] {
            for (const auto& [p, hi] : high) {
                if (next[p] < hi) {
                    return false;
                }
            }
            return true;
        };
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done()) {
            REQUIRE(std::chrono::steady_clock::now() < deadline);
            rd_kafka_message_t* record = rd_kafka_consumer_poll(consumer, 200);
            if (record == nullptr) {
                continue;
            }
            std::unique_ptr<rd_kafka_message_t, void (*)(rd_kafka_message_t*)> owned(
                record, &rd_kafka_message_destroy);
            if (record->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                continue;
            }
            INFO("consumer: " << rd_kafka_message_errstr(record));
            REQUIRE(record->err == RD_KAFKA_RESP_ERR_NO_ERROR);
            // Offsets without gaps: no record skipped.
            REQUIRE(record->offset == next[record->partition]);
            next[record->partition] = record->offset + 1;
            ReceivedMessage message;
            if (record->key != nullptr) {
                message.key = std::string(static_cast<const char*>(record->key), record->key_len);
            }
            if (record->payload != nullptr) {
                message.body = std::string(static_cast<const char*>(record->payload), record->len);
            }
            rd_kafka_headers_t* headers = nullptr;
            if (rd_kafka_message_headers(record, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                const char* name = nullptr;
                const void* value = nullptr;
                size_t size = 0;
                for (size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
                                   RD_KAFKA_RESP_ERR_NO_ERROR;
                     ++i) {
                    // A header twice would hide one of them in the map.
                    CHECK(message.headers
                              .emplace(name, std::string(static_cast<const char*>(value), size))
                              .second);
                }
            }
            by_partition[record->partition].push_back(std::move(message));
        }
        std::vector<ReceivedMessage> messages;
        for (auto& [partition, records] : by_partition) {
            for (auto& message : records) {
                messages.push_back(std::move(message));
            }
        }
        return messages;
    }

    Rejection rejection() override {
        switch (refusal_) {
        case Refusal::too_large:
            // The producer refuses a message above its message.max.bytes before sending it, with
            // the error a broker would answer (MSG_SIZE_TOO_LARGE): the same message never fits.
            return {R"({"brokers": ")" + cluster_.bootstrap() + R"(", "topic": ")" + kTopic +
                        R"(", "properties": {"message.max.bytes": "2000"}})",
                    rd_kafka_err2str(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE),
                    R"({"blob": ")" + std::string(5000, 'x') + R"("})"};
        case Refusal::unknown_topic:
            // The cluster answers metadata requests for the topic with UNKNOWN_TOPIC_OR_PART:
            // the broker says there is no such topic (the mock cluster would otherwise create
            // it on demand).
            cluster_.set_topic_error("no-such-topic", RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
            return {R"({"brokers": ")" + cluster_.bootstrap() + R"(", "topic": "no-such-topic"})",
                    "Unknown topic"};
        }
        FAIL("unknown refusal");
        return {};
    }

  private:
    KafkaMockCluster cluster_;
    Refusal refusal_;
};

} // namespace

TEST_CASE("kafka: 5,000 events through a 10 s outage, each once, in key order",
          "[broker][kafka][e2e]") {
    KafkaUnderTest kafka;
    relay_through_outage(kafka);
}

TEST_CASE("kafka: a message above message.max.bytes dead-letters the event with the reason",
          "[broker][kafka][e2e]") {
    KafkaUnderTest kafka(KafkaUnderTest::Refusal::too_large);
    permanent_rejection(kafka);
}

TEST_CASE("kafka: a topic the cluster does not have dead-letters the event with the reason",
          "[broker][kafka][e2e]") {
    KafkaUnderTest kafka(KafkaUnderTest::Refusal::unknown_topic);
    permanent_rejection(kafka);
}

TEST_CASE("kafka: check-config --connect reaches the cluster", "[broker][kafka][e2e]") {
    KafkaUnderTest kafka;
    check_connect(kafka);
}
