// A throw-away Kafka cluster for the tests: the outbox-test-kafka-mock program (tests/kafka_mock),
// librdkafka's mock cluster of 3 brokers speaking the real Kafka protocol on free ports of
// 127.0.0.1. Kafka has no Debian server package, so this stands in for a real server.
//
//     outbox::test::KafkaMockCluster kafka({{"orders", 6}});   // topic "orders", 6 partitions
//     auto sink = outbox::make_kafka_sink({.brokers = kafka.bootstrap()});
//     kafka.down();   // every broker: connections closed, new ones refused
//     kafka.up();     // back on the same ports
//
// Each command returns once the cluster has applied it. The program reads its commands from a
// pipe and exits when the pipe closes, so it ends with the fixture, or with the test process if
// that dies. A fixture belongs to the thread that created it.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace outbox::test {

class KafkaMockCluster {
  public:
    // Starts the cluster with these topics (name, partitions) and waits for its bootstrap line.
    // Fails the current test when the program cannot start.
    explicit KafkaMockCluster(const std::vector<std::pair<std::string, int>>& topics = {});
    ~KafkaMockCluster();
    KafkaMockCluster(const KafkaMockCluster&) = delete;
    KafkaMockCluster& operator=(const KafkaMockCluster&) = delete;

    // "127.0.0.1:port,127.0.0.1:port,127.0.0.1:port"
    const std::string& bootstrap() const { return bootstrap_; }

    // Every broker down (connections closed, new ones refused), or every broker up again.
    void down();
    void up();
    // One broker (ids 1 to 3) down or up.
    void down(int broker_id);
    void up(int broker_id);
    // Every broker answers each request `rtt_ms` late (0: at once again).
    void set_rtt(int rtt_ms);
    void create_topic(const std::string& name, int partitions);
    // Metadata for `topic` answers with Kafka error `kafka_error` from now on (3,
    // UNKNOWN_TOPIC_OR_PART: the cluster says there is no such topic).
    void set_topic_error(const std::string& topic, int kafka_error);
    // The next `count` Produce requests fail with Kafka error `kafka_error` (for example 10,
    // MESSAGE_TOO_LARGE), as if the broker had rejected them.
    void fail_next_produce_requests(int kafka_error, int count);

    pid_t pid() const { return pid_; }
    // The program's stderr so far, for INFO() when a check fails.
    std::string log() const;

  private:
    // Sends one command line and REQUIREs the answer "ok".
    void command(const std::string& line);
    // The next line of the program's stdout; fails the test after `timeout_ms`.
    std::string read_line(int timeout_ms);

    pid_t pid_ = -1;
    int to_program_ = -1;
    int from_program_ = -1;
    std::string buffered_;
    std::string dir_;
    std::string bootstrap_;
};

} // namespace outbox::test
