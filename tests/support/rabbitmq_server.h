// A throw-away RabbitMQ node for broker tests, and a plain rabbitmq-c client to set it up and
// read back what was published (independently of the sink under test).
//
//     RabbitMqServer rabbit;                       // starts; REQUIREs AMQP login to work
//     AmqpTestClient admin(rabbit);
//     admin.declare_exchange("orders", "topic");
//     admin.declare_queue("orders-all");
//     admin.bind("orders-all", "orders", "#");
//     auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders"});
//     ...
//     rabbit.stop();                               // the broker dies (SIGKILL)
//     rabbit.start();                              // same ports, same data: durable queues return
//     CHECK(AmqpTestClient(rabbit).queue_length("orders-all") == 5000);
//
// The node runs Debian's rabbitmq-server (the real start script,
// /usr/lib/rabbitmq/bin/rabbitmq-server: /usr/sbin/rabbitmq-server switches to the rabbitmq user
// with su when started as root and runs from /var/lib/rabbitmq) as a child of the test, with
// everything of its own: a unique node name, free ports for AMQP, Erlang distribution and epmd
// (an epmd of its own, started by the fixture, so that nothing is shared with another node on
// the machine), and a temporary directory holding the configuration, the data (mnesia), the logs
// and HOME (so the Erlang cookie is created there, also when the tests run as root). No plugins.
// The Erlang VM is the fixture's direct child, so it dies with the test process even when that
// is killed. The destructor kills the node and its epmd and removes the directory.
//
// A RabbitMqServer belongs to the thread that created it (ChildProcess does).
#pragma once

#include "tests/support/process.h"

#include <amqp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace outbox::test {

class RabbitMqServer {
  public:
    struct Options {
        // Extra lines for rabbitmq.conf, for example "max_message_size = 65536".
        std::vector<std::string> config;
    };

    // Starts the node and waits until AMQP login works; fails the current test (with the tail of
    // the node's log) when it does not within a minute.
    RabbitMqServer();
    explicit RabbitMqServer(Options options);
    ~RabbitMqServer();
    RabbitMqServer(const RabbitMqServer&) = delete;
    RabbitMqServer& operator=(const RabbitMqServer&) = delete;

    enum class StopMode {
        kill,     // SIGKILL: a crash. Clients see their connections reset; what the broker
                  // confirmed is on disk.
        shutdown, // SIGTERM: RabbitMQ's orderly stop, which sends clients connection.close
                  // (320 CONNECTION_FORCED) first.
    };
    // Stops the node (its epmd too) and waits until it has exited.
    void stop(StopMode mode = StopMode::kill);
    // Starts it again on the same ports and data directory, and waits until AMQP login works.
    void start();
    bool running() const { return node_ != nullptr; }

    // Freezes and thaws the node (SIGSTOP/SIGCONT to its process group): a broker that keeps
    // its connections but answers nothing.
    void pause();
    void resume();

    int port() const { return amqp_port_; }
    std::string host_port() const { return "127.0.0.1:" + std::to_string(amqp_port_); }
    // amqp://user:password@127.0.0.1:port/ (the default vhost).
    std::string url() const;
    const std::string& user() const { return user_; }
    // Not "guest": the tests check that no error ever contains it.
    const std::string& password() const { return password_; }

    // How long the last start() (or the constructor's) took until AMQP login worked.
    std::chrono::milliseconds last_start_duration() const { return last_start_duration_; }

    // The end of the node's log file and of its stdout/stderr, for failure messages.
    std::string log_tail(size_t max_bytes = 6000) const;

  private:
    void launch();
    // SIGKILLs the node and waits until its AMQP port is closed; false when it stays open.
    bool kill_node();

    Options options_;
    std::string dir_;
    std::string node_name_;
    int amqp_port_ = 0;
    int dist_port_ = 0;
    int epmd_port_ = 0;
    std::string user_ = "outbox";
    std::string password_ = "amqp-test-secret-7f3c";
    std::unique_ptr<ChildProcess> epmd_;
    std::unique_ptr<ChildProcess> node_;
    std::chrono::milliseconds last_start_duration_{0};
};

// A message as a consumer receives it.
struct ReceivedAmqpMessage {
    std::string exchange;
    std::string routing_key;
    std::string body;
    std::string message_id;
    std::string content_type;
    std::string type;
    uint8_t delivery_mode = 0;
    std::vector<std::pair<std::string, std::string>> headers; // string values, in wire order
};

// A rabbitmq-c connection with one channel, for setting up exchanges and queues and for reading
// queues back. Every operation REQUIREs success.
class AmqpTestClient {
  public:
    explicit AmqpTestClient(const RabbitMqServer& server);
    ~AmqpTestClient();
    AmqpTestClient(const AmqpTestClient&) = delete;
    AmqpTestClient& operator=(const AmqpTestClient&) = delete;

    void declare_exchange(const std::string& name, const std::string& type = "topic");
    void delete_exchange(const std::string& name);
    void declare_queue(const std::string& name); // durable
    void bind(const std::string& queue, const std::string& exchange,
              const std::string& binding_key);
    // Messages ready in the queue (a passive queue.declare).
    uint32_t queue_length(const std::string& queue);
    // Consumes `count` messages (auto-ack), failing the test when they do not all arrive within
    // `timeout`.
    std::vector<ReceivedAmqpMessage> consume(const std::string& queue, size_t count,
                                             std::chrono::milliseconds timeout);

  private:
    void require_ok(const char* what);

    amqp_connection_state_t conn_ = nullptr;
};

} // namespace outbox::test
