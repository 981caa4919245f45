// The amqp sink (worker/amqp_sink.cpp) against a real RabbitMQ node (tests/support/
// rabbitmq_server.h), read back with a consumer of rabbitmq-c's own: what arrives, how often,
// in which order and with which properties; a broker killed or shut down mid-run; what the
// broker rejects for good; deadlines; check().
#include "tests/support/process.h"
#include "tests/support/rabbitmq_server.h"
#include "worker/sink.h"

#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace outbox;
using namespace outbox::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kWindow = 128; // publications in flight, as the handler process keeps them

std::string outbox_id(int n) {
    char id[64];
    std::snprintf(id, sizeof id, "obx_%08x%024d", static_cast<unsigned>(n * 2654435761u), n);
    return id;
}

BrokerMessage order_message(int n, const std::string& routing_key = "order.created") {
    BrokerMessage message;
    message.id = outbox_id(n);
    message.destination = routing_key;
    message.key = "customer-" + std::to_string(n % 17);
    message.body = R"({"id":")" + message.id + R"(","eventType":"order.created","payload":{"n":)" +
                   std::to_string(n) + "}}";
    message.content_type = "application/json";
    message.headers = {{"outbox-id", message.id},
                       {"outbox-event-type", "order.created"},
                       {"outbox-tenant-id", "tenant-" + std::to_string(n % 3)}};
    if (n % 2 == 0) {
        message.headers.emplace_back("outbox-correlation-id", "corr-" + std::to_string(n));
    }
    if (n % 5 == 0) {
        char traceparent[64];
        std::snprintf(traceparent, sizeof traceparent, "00-%032x-%016x-01", n + 1, n + 7);
        message.headers.emplace_back("traceparent", traceparent);
        message.headers.emplace_back("tracestate", "vendor=n" + std::to_string(n));
    }
    return message;
}

// Publishes one message and waits for its outcome (at most `timeout`).
Result publish_one(Sink& sink, const BrokerMessage& message,
                   std::chrono::milliseconds timeout = 15s) {
    std::optional<Result> outcome;
    sink.publish(message, [&](Result result) { outcome = std::move(result); });
    auto deadline = Clock::now() + timeout;
    while (!outcome && Clock::now() < deadline) {
        sink.poll(50);
    }
    REQUIRE(outcome);
    return *outcome;
}

// Sleeps on the sink's wait_fd as the handler process does, at most `timeout` (a time already
// past is 0, not poll()'s "forever"); true when it became readable.
bool wait_on_sink(const Sink& sink, std::chrono::milliseconds timeout) {
    pollfd waiting{sink.wait_fd(), POLLIN, 0};
    return ::poll(&waiting, 1, static_cast<int>(std::max<long>(0, timeout.count()))) == 1;
}

const char* outcome_name(Outcome outcome) {
    switch (outcome) {
    case Outcome::success:
        return "success";
    case Outcome::retry:
        return "retry";
    case Outcome::permanent:
        return "permanent";
    }
    return "?";
}

// Publishes `messages` in order with up to kWindow in flight, sleeping on wait_fd in between,
// and returns each message's outcome. `stalls` counts the times the process slept five whole
// seconds on wait_fd with publications pending and nothing became ready: with confirms arriving
// in milliseconds, that would mean frames sat in a buffer the descriptor does not show.
std::vector<Result> publish_all(Sink& sink, const std::vector<BrokerMessage>& messages,
                                int* stalls = nullptr) {
    std::vector<std::optional<Result>> outcomes(messages.size());
    size_t next = 0;
    size_t done = 0;
    auto deadline = Clock::now() + 180s;
    while (done < messages.size() && Clock::now() < deadline) {
        while (next < messages.size() && sink.pending() < kWindow) {
            size_t i = next++;
            sink.publish(messages[i], [&outcomes, &done, i](Result result) {
                REQUIRE_FALSE(outcomes[i]); // exactly once
                outcomes[i] = std::move(result);
                ++done;
            });
        }
        if (sink.pending() > 0 && !wait_on_sink(sink, 5s) && stalls != nullptr) {
            ++*stalls;
        }
        sink.poll(0);
    }
    REQUIRE(done == messages.size());
    std::vector<Result> results;
    for (auto& outcome : outcomes) {
        results.push_back(std::move(*outcome));
    }
    return results;
}

void set_up_orders(const RabbitMqServer& rabbit, const std::string& binding_key = "order.#") {
    AmqpTestClient admin(rabbit);
    admin.declare_exchange("orders", "topic");
    admin.declare_queue("orders-all");
    admin.bind("orders-all", "orders", binding_key);
}

long read_status_kib(const std::string& field) {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind(field + ":", 0) == 0) {
            return std::stol(line.substr(field.size() + 1));
        }
    }
    return -1;
}

} // namespace

TEST_CASE("amqp sink: 5000 messages in flight arrive once each and in order with their properties",
          "[broker][amqp]") {
    RabbitMqServer rabbit;
    INFO("rabbitmq-server started in " << rabbit.last_start_duration().count() << " ms");
    set_up_orders(rabbit);
    auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 20000});
    CHECK_FALSE(sink->connected()); // lazy: nothing before the first publication
    CHECK(sink->wait_fd() >= 0);

    std::vector<BrokerMessage> messages;
    for (int n = 0; n < 5000; ++n) {
        messages.push_back(order_message(n));
    }
    int stalls = 0;
    auto results = publish_all(*sink, messages, &stalls);
    for (size_t i = 0; i < results.size(); ++i) {
        INFO("message " << i << ": " << outcome_name(results[i].outcome) << " "
                        << results[i].error);
        REQUIRE(results[i].outcome == Outcome::success);
    }
    CHECK(stalls == 0);
    CHECK(sink->connected());
    CHECK(sink->pending() == 0);

    AmqpTestClient reader(rabbit);
    // Confirms come after the message is in the queue: the count is final.
    REQUIRE(reader.queue_length("orders-all") == messages.size());
    auto received = reader.consume("orders-all", messages.size(), 60s);
    for (size_t i = 0; i < messages.size(); ++i) {
        const BrokerMessage& sent = messages[i];
        const ReceivedAmqpMessage& got = received[i];
        INFO("position " << i);
        REQUIRE(got.message_id == sent.id); // each once, in publication order
        CHECK(got.body == sent.body);
        CHECK(got.headers == sent.headers);
        CHECK(got.content_type == "application/json");
        CHECK(got.type == "order.created");
        CHECK(got.delivery_mode == 2); // persistent
        CHECK(got.exchange == "orders");
        CHECK(got.routing_key == "order.created");
    }
}

TEST_CASE("amqp sink: a broker stopped mid-run fails publications retryably and loses nothing",
          "[broker][amqp]") {
    auto mode = GENERATE(RabbitMqServer::StopMode::kill, RabbitMqServer::StopMode::shutdown);
    const char* mode_name = mode == RabbitMqServer::StopMode::kill ? "SIGKILL" : "shutdown";
    INFO("broker stopped by " << mode_name);
    RabbitMqServer rabbit;
    set_up_orders(rabbit);
    auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 20000});

    // The supervisor's part, in small: a message that failed retryably is published again a
    // little later, until the broker has confirmed every one.
    constexpr int kMessages = 5000;
    std::deque<std::pair<int, Clock::time_point>> queue; // message, not before
    for (int n = 0; n < kMessages; ++n) {
        queue.emplace_back(n, Clock::time_point{});
    }
    std::set<int> confirmed;
    std::set<int> failed_once; // every message that had a retryable failure
    std::vector<std::string> errors;
    int failures_while_down = 0;
    int not_connected_while_down = 0;
    bool stopped = false;
    bool restarted = false;
    Clock::time_point stopped_at;
    std::chrono::milliseconds down_for{0};

    auto publish_due = [&] {
        auto now = Clock::now();
        while (!queue.empty() && queue.front().second <= now && sink->pending() < kWindow) {
            int n = queue.front().first;
            queue.pop_front();
            sink->publish(order_message(n), [&, n](Result result) {
                if (result.outcome == Outcome::success) {
                    REQUIRE(confirmed.insert(n).second);
                    return;
                }
                INFO(result.error);
                REQUIRE(result.outcome == Outcome::retry);
                errors.push_back(result.error);
                failed_once.insert(n);
                if (stopped && !restarted) {
                    ++failures_while_down;
                    if (result.error.rfind("amqp: not connected to ", 0) == 0) {
                        ++not_connected_while_down;
                    }
                }
                queue.emplace_back(n, Clock::now() + 20ms);
            });
        }
    };

    size_t published_frozen = 0;
    auto deadline = Clock::now() + 240s;
    while (static_cast<int>(confirmed.size()) < kMessages && Clock::now() < deadline) {
        if (!stopped && confirmed.size() >= 1500) {
            if (mode == RabbitMqServer::StopMode::kill) {
                // Frozen first, so that the publications made now are certainly in flight,
                // unconfirmed, when the broker dies.
                rabbit.pause();
                size_t before = sink->pending();
                publish_due();
                published_frozen = sink->pending() - before;
            } else {
                publish_due();
            }
            stopped_at = Clock::now();
            rabbit.stop(mode);
            stopped = true;
        }
        if (stopped && !restarted && not_connected_while_down >= 50) {
            rabbit.start();
            restarted = true;
            down_for =
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped_at);
        }
        publish_due();
        if (sink->pending() > 0) {
            wait_on_sink(*sink, 10ms);
        } else if (!queue.empty()) {
            wait_on_sink(*sink, std::chrono::duration_cast<std::chrono::milliseconds>(
                                    queue.front().second - Clock::now()) +
                                    1ms);
        }
        sink->poll(0);
    }
    REQUIRE(stopped);
    REQUIRE(restarted);
    REQUIRE(static_cast<int>(confirmed.size()) == kMessages);
    CHECK(sink->connected());

    // Every failure says what failed and where, and never the password.
    bool saw_not_connected = false;
    std::map<std::string, int> kinds; // the errors with their numbers blanked out
    for (const auto& error : errors) {
        std::string kind;
        for (char c : error) {
            if (!std::isdigit(static_cast<unsigned char>(c))) {
                kind += c;
            } else if (kind.empty() || kind.back() != '#') {
                kind += '#';
            }
        }
        ++kinds[kind];
        INFO(error);
        CHECK(error.rfind("amqp: ", 0) == 0);
        CHECK(error.find(rabbit.host_port()) != std::string::npos);
        CHECK(error.find(rabbit.password()) == std::string::npos);
        if (error.find("amqp: not connected to " + rabbit.host_port() + ": ") == 0 &&
            error.find("; next attempt in ") != std::string::npos) {
            saw_not_connected = true;
        }
    }
    CHECK(saw_not_connected);
    if (mode == RabbitMqServer::StopMode::kill) {
        int lost = 0;
        for (const auto& [kind, count] : kinds) {
            if (kind.rfind("amqp: connection to #.#.#.#:# lost: ", 0) == 0) {
                lost += count;
            }
        }
        CHECK(published_frozen > 0);
        CHECK(lost >= static_cast<int>(published_frozen));
    }
    CHECK(not_connected_while_down >= 50);

    // Nothing lost; a duplicate only for a message whose publication failed retryably (it was
    // in flight when the broker went away, stored but not confirmed), recognisable by its
    // message-id.
    AmqpTestClient reader(rabbit);
    uint32_t stored = reader.queue_length("orders-all");
    REQUIRE(stored >= static_cast<uint32_t>(kMessages));
    auto received = reader.consume("orders-all", stored, 60s);
    std::map<std::string, int> seen;
    std::map<std::string, int> number_of;
    for (int n = 0; n < kMessages; ++n) {
        number_of[outbox_id(n)] = n;
    }
    int duplicates = 0;
    int last_clean = -1;
    bool clean_in_order = true;
    for (const auto& got : received) {
        auto it = number_of.find(got.message_id);
        REQUIRE(it != number_of.end());
        if (++seen[got.message_id] > 1) {
            ++duplicates;
            CHECK(failed_once.count(it->second) == 1);
        }
        CHECK(got.body == order_message(it->second).body);
        // Messages that never failed went out once, on one connection or the other, in order.
        if (failed_once.count(it->second) == 0) {
            clean_in_order = clean_in_order && it->second > last_clean;
            last_clean = it->second;
        }
    }
    CHECK(seen.size() == static_cast<size_t>(kMessages));
    CHECK(clean_in_order);
    CHECK(received.size() == static_cast<size_t>(kMessages + duplicates));
    std::cout << "amqp restart test (" << mode_name << "): broker down " << down_for.count()
              << " ms (restart " << rabbit.last_start_duration().count() << " ms), "
              << errors.size() << " retryable failures (" << failures_while_down << " while down), "
              << failed_once.size() << " messages re-published, " << duplicates
              << " duplicates by message-id\n";
    for (const auto& [kind, count] : kinds) {
        std::cout << "  " << count << " x " << kind << "\n";
    }
}

TEST_CASE("amqp sink: what the broker rejects for good fails permanently", "[broker][amqp]") {
    RabbitMqServer rabbit({.config = {"max_message_size = 65536"}});
    set_up_orders(rabbit, "order.created");
    auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 20000});

    // The four cases run one after the other on one node, which takes seconds to start.
    {
        INFO("unroutable messages among routable ones, many in flight");
        std::vector<BrokerMessage> messages;
        for (int n = 0; n < 700; ++n) {
            messages.push_back(order_message(n, n % 7 == 3 ? "order.unknown" : "order.created"));
        }
        auto results = publish_all(*sink, messages);
        int routed = 0;
        for (size_t n = 0; n < messages.size(); ++n) {
            INFO("message " << n << ": " << results[n].error);
            if (n % 7 == 3) {
                CHECK(results[n].outcome == Outcome::permanent);
                CHECK(results[n].error == "amqp: unroutable: exchange \"orders\" routing key "
                                          "\"order.unknown\" (312 NO_ROUTE)");
            } else {
                CHECK(results[n].outcome == Outcome::success);
                ++routed;
            }
        }
        AmqpTestClient reader(rabbit);
        REQUIRE(reader.queue_length("orders-all") == static_cast<uint32_t>(routed));
        auto received = reader.consume("orders-all", routed, 30s);
        size_t i = 0;
        for (int n = 0; n < 700; ++n) {
            if (n % 7 != 3) {
                CHECK(received[i++].message_id == outbox_id(n));
            }
        }
    }

    {
        INFO("the default exchange routes to the queue named by the routing key");
        auto direct = make_amqp_sink({.url = rabbit.url(), .exchange = "", .timeout_ms = 20000});
        CHECK(publish_one(*direct, order_message(1, "orders-all")).outcome == Outcome::success);
        Result missing = publish_one(*direct, order_message(2, "no-such-queue"));
        CHECK(missing.outcome == Outcome::permanent);
        CHECK(missing.error ==
              "amqp: unroutable: exchange \"\" routing key \"no-such-queue\" (312 NO_ROUTE)");
        AmqpTestClient reader(rabbit);
        CHECK(reader.queue_length("orders-all") == 1);
        CHECK(reader.consume("orders-all", 1, 10s)[0].message_id == outbox_id(1));
    }

    {
        INFO("a message above the broker's max_message_size");
        // The broker closes the channel for it: that one fails for good. A neighbour that was
        // not confirmed when the channel closed fails retryably with the broker's reason and goes
        // through when published again; which neighbours those are depends on when the sink reads
        // the close (before or after it has sent the next publication), so either outcome is
        // right for each of them, and both must end up delivered.
        BrokerMessage big = order_message(2);
        big.body = std::string(70000, 'x');
        std::vector<BrokerMessage> messages = {order_message(1), big, order_message(3)};
        auto results = publish_all(*sink, messages);
        INFO(results[0].error << " | " << results[1].error << " | " << results[2].error);
        CHECK(results[1].outcome == Outcome::permanent);
        CHECK(results[1].error.rfind("amqp: message too large: 406 PRECONDITION_FAILED", 0) == 0);
        CHECK(results[1].error.find("70000") != std::string::npos);
        for (size_t n : {size_t{0}, size_t{2}}) {
            if (results[n].outcome != Outcome::success) {
                CHECK(results[n].outcome == Outcome::retry);
                CHECK(results[n].error.find("closed the channel: 406 PRECONDITION_FAILED") !=
                      std::string::npos);
                CHECK(publish_one(*sink, messages[n]).outcome == Outcome::success);
            }
        }
    }

    {
        INFO("a routing key longer than AMQP allows");
        Result result = publish_one(*sink, order_message(1, std::string(300, 'k')));
        CHECK(result.outcome == Outcome::permanent);
        CHECK(result.error.rfind("amqp: the routing key is longer than 255 bytes", 0) == 0);
    }
}

TEST_CASE("amqp sink: a missing exchange fails permanently until it exists", "[broker][amqp]") {
    RabbitMqServer rabbit;
    auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 20000});
    const std::string not_found = "amqp: exchange \"orders\" not found (404 NOT_FOUND - no "
                                  "exchange 'orders' in vhost '/')";

    Result first = publish_one(*sink, order_message(1));
    CHECK(first.outcome == Outcome::permanent);
    CHECK(first.error == not_found);
    // Known now: the next publication fails at once, without a new connection.
    std::optional<Result> second;
    sink->publish(order_message(2), [&](Result result) { second = std::move(result); });
    REQUIRE(second);
    CHECK(second->outcome == Outcome::permanent);
    CHECK(second->error == not_found);
    CHECK_FALSE(sink->connected());

    // Created later: found again within the re-check interval.
    set_up_orders(rabbit);
    Result later = Result::retry("not tried");
    CHECK(wait_until(
        [&] {
            later = publish_one(*sink, order_message(3));
            return later.outcome == Outcome::success;
        },
        5s, 100ms));
    INFO(later.error);
    CHECK(sink->connected());

    // Deleted while the sink uses it: the broker closes the channel, which is retryable for the
    // publications on it (some of them may have been routed); the next one finds the exchange
    // missing and fails for good.
    AmqpTestClient admin(rabbit);
    admin.delete_exchange("orders");
    Result on_deleted = publish_one(*sink, order_message(4));
    CHECK(on_deleted.outcome == Outcome::retry);
    CHECK(on_deleted.error.find("closed the channel: 404 NOT_FOUND - no exchange 'orders'") !=
          std::string::npos);
    Result after = publish_one(*sink, order_message(4));
    CHECK(after.outcome == Outcome::permanent);
    CHECK(after.error == not_found);
}

TEST_CASE("amqp sink: a publication without a confirm by its deadline is retried",
          "[broker][amqp]") {
    RabbitMqServer rabbit;
    set_up_orders(rabbit);
    auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 700});
    REQUIRE(publish_one(*sink, order_message(1)).outcome == Outcome::success);

    rabbit.pause(); // keeps the connection, answers nothing
    std::optional<Result> outcome;
    auto started = Clock::now();
    sink->publish(order_message(2), [&](Result result) { outcome = std::move(result); });
    // The deadline wakes a process that sleeps on wait_fd.
    REQUIRE(wait_on_sink(*sink, 5s));
    sink->poll(0);
    auto waited = Clock::now() - started;
    rabbit.resume();
    REQUIRE(outcome);
    CHECK(waited >= 650ms);
    CHECK(waited < 3s);
    CHECK(outcome->outcome == Outcome::retry);
    CHECK(outcome->error ==
          "amqp: no confirmation from the broker at " + rabbit.host_port() + " within 700 ms");
    CHECK_FALSE(sink->connected());

    // A new connection once the broker answers again.
    Result again = publish_one(*sink, order_message(2));
    INFO(again.error);
    CHECK(again.outcome == Outcome::success);
    CHECK(sink->connected());
}

TEST_CASE("amqp sink: check() reaches the broker and the exchange", "[broker][amqp]") {
    RabbitMqServer rabbit;
    set_up_orders(rabbit);

    CHECK(make_amqp_sink({.url = rabbit.url(), .exchange = "orders"})->check(5000) == std::nullopt);
    CHECK(make_amqp_sink({.url = rabbit.url(), .exchange = ""})->check(5000) == std::nullopt);

    auto missing = make_amqp_sink({.url = rabbit.url(), .exchange = "nope"})->check(5000);
    REQUIRE(missing);
    CHECK(*missing ==
          "amqp: exchange \"nope\" not found (404 NOT_FOUND - no exchange 'nope' in vhost '/')");

    std::string wrong_password =
        "amqp://" + rabbit.user() + ":not-the-password-42@" + rabbit.host_port() + "/";
    auto refused = make_amqp_sink({.url = wrong_password, .exchange = "orders"})->check(5000);
    REQUIRE(refused);
    CHECK(refused->rfind("amqp: cannot connect to " + rabbit.host_port() +
                             ": login failed: 403 "
                             "ACCESS_REFUSED",
                         0) == 0);
    CHECK(refused->find("not-the-password-42") == std::string::npos);

    std::string other_vhost =
        "amqp://" + rabbit.user() + ":" + rabbit.password() + "@" + rabbit.host_port() + "/staging";
    auto no_vhost = make_amqp_sink({.url = other_vhost, .exchange = "orders"})->check(5000);
    REQUIRE(no_vhost);
    CHECK(no_vhost->find("530 NOT_ALLOWED") != std::string::npos);
    CHECK(no_vhost->find(rabbit.password()) == std::string::npos);

    rabbit.stop();
    auto started = Clock::now();
    auto dead = make_amqp_sink({.url = rabbit.url(), .exchange = "orders"})->check(3000);
    CHECK(Clock::now() - started < 3500ms);
    REQUIRE(dead);
    CHECK(*dead == "amqp: cannot connect to " + rabbit.host_port() + ": Connection refused");
}

TEST_CASE("amqp sink: without a broker publications fail at once with the next attempt delay",
          "[broker][amqp]") {
    int port = free_tcp_port();
    std::string where = "127.0.0.1:" + std::to_string(port);
    auto sink = make_amqp_sink({.url = "amqp://outbox:pw-never-shown@" + where + "/vhost",
                                .exchange = "orders",
                                .timeout_ms = 5000});
    auto delay_in = [](const std::string& error) {
        size_t at = error.find("; next attempt in ");
        REQUIRE(at != std::string::npos);
        return std::stol(error.substr(at + 18));
    };

    Result first = publish_one(*sink, order_message(1));
    INFO(first.error);
    CHECK(first.outcome == Outcome::retry);
    CHECK(first.error.rfind("amqp: not connected to " + where +
                                ": Connection refused; next "
                                "attempt in ",
                            0) == 0);
    long first_delay = delay_in(first.error);
    CHECK(first_delay >= 85);
    CHECK(first_delay <= 110);
    CHECK(first.error.find("pw-never-shown") == std::string::npos);

    // Within the backoff: no attempt, the same reason, the time left.
    Result waiting = publish_one(*sink, order_message(2));
    CHECK(waiting.outcome == Outcome::retry);
    CHECK(delay_in(waiting.error) <= first_delay);

    // After it: one more attempt, and twice the delay.
    long second_delay = 0;
    CHECK(wait_until(
        [&] {
            second_delay = delay_in(publish_one(*sink, order_message(3)).error);
            return second_delay > first_delay + 30;
        },
        2s, 5ms));
    CHECK(second_delay >= 170);
    CHECK(second_delay <= 220);
    CHECK_FALSE(sink->connected());
    CHECK(sink->pending() == 0);

    auto invalid = make_amqp_sink({.url = "http://" + where + "/", .exchange = "orders"});
    Result bad_url = publish_one(*invalid, order_message(4));
    CHECK(bad_url.outcome == Outcome::permanent);
    CHECK(bad_url.error == "amqp: the URL is not a valid amqp:// URL");
}

// Figures for docs/PERFORMANCE.md, not a pass/fail test: the sink's throughput alone with many
// publications in flight, and the peak RSS of a process that holds one connection.
//     build/integration-tests "[amqp-bench]"
TEST_CASE("amqp sink: throughput and memory", "[.][amqp-bench]") {
    RabbitMqServer rabbit;
    std::cout << "rabbitmq-server start-up: " << rabbit.last_start_duration().count() << " ms\n";
    set_up_orders(rabbit);

    // Peak RSS in a forked child that creates a sink and publishes through it, as a handler
    // process does after fork().
    int pipe_fds[2];
    REQUIRE(pipe(pipe_fds) == 0);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        // The child must never return into Catch (it would go on running tests): a failed
        // assertion ends it with status 2.
        close(pipe_fds[0]);
        long before = read_status_kib("VmRSS");
        long ok = 0;
        try {
            auto sink =
                make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 20000});
            std::vector<BrokerMessage> messages;
            for (int n = 0; n < 2000; ++n) {
                messages.push_back(order_message(n));
            }
            for (const auto& result : publish_all(*sink, messages)) {
                ok += result.outcome == Outcome::success;
            }
        } catch (...) {
            _exit(2);
        }
        long figures[3] = {before, read_status_kib("VmHWM"), ok};
        ssize_t n = write(pipe_fds[1], figures, sizeof figures);
        _exit(n == sizeof figures ? 0 : 1);
    }
    close(pipe_fds[1]);
    long figures[3] = {0, 0, 0};
    ssize_t got = read(pipe_fds[0], figures, sizeof figures);
    close(pipe_fds[0]);
    int status = 0;
    waitpid(child, &status, 0);
    REQUIRE(got == static_cast<ssize_t>(sizeof figures));
    CHECK(figures[2] == 2000);
    std::cout << "forked process: VmRSS " << figures[0] / 1024.0 << " MiB before the sink, VmHWM "
              << figures[1] / 1024.0 << " MiB after 2,000 publications on one connection\n";

    auto sink = make_amqp_sink({.url = rabbit.url(), .exchange = "orders", .timeout_ms = 20000});
    std::vector<BrokerMessage> messages;
    for (int n = 0; n < 20001; ++n) {
        messages.push_back(order_message(n));
    }
    REQUIRE(publish_one(*sink, messages[0]).outcome == Outcome::success); // connect first
    messages.erase(messages.begin());
    auto cpu_seconds = [] {
        rusage usage{};
        getrusage(RUSAGE_SELF, &usage);
        return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
               (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
    };
    double cpu_before = cpu_seconds();
    auto started = Clock::now();
    auto results = publish_all(*sink, messages);
    double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    double cpu = cpu_seconds() - cpu_before;
    size_t ok = 0;
    for (const auto& result : results) {
        ok += result.outcome == Outcome::success;
    }
    CHECK(ok == messages.size());
    std::cout << "amqp sink: " << messages.size() << " persistent messages, " << kWindow
              << " in flight: " << seconds << " s, " << messages.size() / seconds
              << " messages/s; this process's CPU " << cpu * 1e6 / messages.size()
              << " us per message\n";
}
