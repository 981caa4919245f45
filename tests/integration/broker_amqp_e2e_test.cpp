// The amqp handler kind end to end (tests/integration/broker_e2e.h): the service publishing to a
// throw-away RabbitMQ node (tests/support/rabbitmq_server.h) through a topic exchange into a
// durable queue bound with "#", read back with rabbitmq-c (AmqpTestClient).
//
// A RabbitMQ node takes seconds to start, so the test cases of this file share one, started by
// the first that needs it. Each case declares exchanges and queues of its own names, so that
// nothing one leaves behind is seen by another; a case that stops the node (the outage, the
// dead broker of check-config) starts it again before it ends, and a case that failed with the
// node stopped leaves it to the next case to start it.
#include "tests/integration/broker_e2e.h"
#include "tests/support/rabbitmq_server.h"

#include <memory>

namespace {

using namespace outbox::test;

// The node shared by the test cases, running. It belongs to the main thread, which runs every
// test case, and is killed when the test program exits.
RabbitMqServer& shared_node() {
    static std::unique_ptr<RabbitMqServer> node;
    if (!node) {
        node = std::make_unique<RabbitMqServer>();
    } else if (!node->running()) {
        node->start();
    }
    return *node;
}

class AmqpUnderTest : public BrokerUnderTest {
  public:
    // What rejection() plays: an exchange no queue is bound to, or no exchange at all.
    enum class Refusal { unroutable, missing_exchange };

    explicit AmqpUnderTest(Refusal refusal = Refusal::unroutable)
        : node_(shared_node()), refusal_(refusal) {
        static int instances = 0;
        prefix_ = "e2e-" + std::to_string(++instances);
        exchange_ = prefix_ + "-events";
        queue_ = prefix_ + "-all";
        AmqpTestClient admin(node_);
        admin.declare_exchange(exchange_, "topic");
        admin.declare_queue(queue_);
        admin.bind(queue_, exchange_, "#");
    }

    std::string kind() const override { return "amqp"; }
    std::string sink_json() const override { return sink_json_for(exchange_); }
    // RabbitMQ does not deduplicate: a message whose confirm was lost is published again, with
    // the same message-id.
    bool deduplicates() const override { return false; }
    void stop() override { node_.stop(); }
    void start() override { node_.start(); }

    std::vector<ReceivedMessage> read_all(size_t at_least,
                                          std::chrono::milliseconds timeout) override {
        AmqpTestClient client(node_);
        uint32_t ready = 0;
        wait_until(
            [&] {
                ready = client.queue_length(queue_);
                return ready >= at_least;
            },
            timeout, 200ms);
        std::vector<ReceivedMessage> messages;
        // What AMQP carries besides the headers table: the properties of broker_message.h.
        long wrong_message_id = 0, wrong_type = 0, wrong_content_type = 0, not_persistent = 0,
             wrong_route = 0;
        for (ReceivedAmqpMessage& received : client.consume(queue_, ready, timeout)) {
            ReceivedMessage message;
            message.body = std::move(received.body);
            for (auto& [name, value] : received.headers) {
                // A header twice would hide one of them in the map.
                CHECK(message.headers.emplace(name, value).second);
            }
            auto id = message.headers.find("outbox-id");
            if (id == message.headers.end() || id->second != received.message_id) {
                ++wrong_message_id;
            }
            auto type = message.headers.find("outbox-event-type");
            if (type == message.headers.end() || type->second != received.type) {
                ++wrong_type;
            }
            wrong_content_type += received.content_type != "application/json";
            not_persistent += received.delivery_mode != 2;
            wrong_route += received.exchange != exchange_ || received.routing_key != "shop.price";
            messages.push_back(std::move(message));
        }
        CHECK(wrong_message_id == 0);
        CHECK(wrong_type == 0);
        CHECK(wrong_content_type == 0);
        CHECK(not_persistent == 0);
        CHECK(wrong_route == 0);
        return messages;
    }

    Rejection rejection() override {
        switch (refusal_) {
        case Refusal::unroutable: {
            // Mandatory publication to an exchange no queue is bound to: basic.return.
            const std::string unbound = prefix_ + "-unbound";
            AmqpTestClient(node_).declare_exchange(unbound, "topic");
            return {sink_json_for(unbound), "312 NO_ROUTE"};
        }
        case Refusal::missing_exchange:
            return {sink_json_for(prefix_ + "-missing"), "404 NOT_FOUND - no exchange"};
        }
        FAIL("unknown refusal");
        return {};
    }

    // The URL carries the node's user and (non-default) password.
    std::vector<std::string> secrets() const override { return {node_.password()}; }

  private:
    std::string sink_json_for(const std::string& exchange) const {
        return R"({"url": ")" + node_.url() + R"(", "exchange": ")" + exchange +
               R"(", "routingKey": "${eventType}"})";
    }

    RabbitMqServer& node_;
    Refusal refusal_;
    std::string prefix_;
    std::string exchange_;
    std::string queue_;
};

} // namespace

TEST_CASE("amqp: 5,000 events through a 10 s outage, each once, in key order",
          "[broker][amqp][e2e]") {
    AmqpUnderTest amqp;
    relay_through_outage(amqp);
}

TEST_CASE("amqp: an unroutable message dead-letters the event with the broker's reason",
          "[broker][amqp][e2e]") {
    AmqpUnderTest amqp(AmqpUnderTest::Refusal::unroutable);
    permanent_rejection(amqp);
}

TEST_CASE("amqp: a missing exchange dead-letters the event with the broker's reason",
          "[broker][amqp][e2e]") {
    AmqpUnderTest amqp(AmqpUnderTest::Refusal::missing_exchange);
    permanent_rejection(amqp);
}

TEST_CASE("amqp: check-config --connect reaches the broker", "[broker][amqp][e2e]") {
    AmqpUnderTest amqp;
    check_connect(amqp);
}
