// The handler-process pool (supervisor/worker_pool.h) over real forked handler processes: the
// pipeline depth a broker subscriber calls for, and the sink metrics that RESULT and STATUS frames
// and the end of a process feed.
#include "common/protocol.h"
#include "supervisor/metrics.h"
#include "supervisor/uv_handle.h"
#include "supervisor/worker_pool.h"
#include "worker/broker_message.h"
#include "worker/sink.h"
#include "worker/subscriber.h"

#include <catch2/catch.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

using namespace outbox;
using namespace std::chrono_literals;

namespace {

constexpr auto kDeadline = 20s;

// A sink whose broker acknowledges at once: success, or a permanent rejection for event types
// ending in ".reject". Connected from its first publication on.
class InstantSink final : public Sink {
  public:
    void publish(const BrokerMessage& message, Done done) override {
        used_ = true;
        if (message.destination.ends_with(".reject")) {
            done(Result::permanent("instant: rejected"));
        } else {
            done(Result::ok());
        }
    }
    void poll(int) override {}
    size_t pending() const override { return 0; }
    bool connected() const override { return used_; }
    std::optional<std::string> check(long) override { return std::nullopt; }

  private:
    bool used_ = false;
};

Subscriber sync_subscriber(std::string name, std::vector<std::string> patterns, Handler handler) {
    Subscriber s;
    s.name = std::move(name);
    s.name_given = true;
    s.patterns = std::move(patterns);
    s.timeout_ms = 10000;
    s.handler = std::move(handler);
    return s;
}

Subscriber instant_broker_subscriber(std::string name, std::vector<std::string> patterns) {
    auto spec = std::make_shared<BrokerSpec>();
    spec->kind = "instant";
    spec->description = "instant test broker";
    std::string error;
    std::optional<DestinationTemplate> destination =
        DestinationTemplate::parse("events.${eventType}", error);
    REQUIRE(destination.has_value());
    spec->message.destination = std::move(*destination);
    spec->make_sink = [] {
        return std::make_unique<InstantSink>();
    };
    Subscriber s = sync_subscriber(std::move(name), std::move(patterns), [](const Event&) {
        return Result::permanent("the handler of a broker subscriber was called");
    });
    s.broker = std::move(spec);
    return s;
}

std::string event_fields(const std::string& type, uint64_t seq) {
    Event event;
    event.id = "ob_" + std::to_string(seq);
    event.event_log_id = "el_" + std::to_string(seq);
    event.event_key = "key";
    event.tenant_id = "t1";
    event.event_type = type;
    event.payload_json = "{}";
    event.created_at = "2024-05-01T12:00:00.000000Z";
    return encode_event_fields(event_fields_of(event));
}

// A pool on its own loop, recording what it reports.
class PoolUnderTest {
  public:
    PoolUnderTest(int workers, std::vector<Subscriber> subscribers) : sinks_(registry_) {
        REQUIRE(uv_loop_init(&loop_) == 0);
        PoolOptions options;
        options.workers = workers;
        options.pipeline_depth = 4;
        options.broker_pipeline_depth = 128;
        pool_ = std::make_unique<WorkerPool>(
            &loop_, options,
            std::make_shared<const std::vector<Subscriber>>(std::move(subscribers)),
            WorkerPool::Callbacks{
                [this](uint64_t seq, ResultMsg&& result) { results_.emplace(seq, result); },
                [this](uint64_t seq, std::string error) { failed_.emplace(seq, error); },
                [this](std::vector<uint64_t> seqs) {
                    returned_.insert(returned_.end(), seqs.begin(), seqs.end());
                },
                nullptr, [this](RestartReason reason) { restarts_.push_back(reason); }, nullptr},
            &sinks_);
        pool_->start();
    }

    ~PoolUnderTest() {
        if (pool_) {
            close();
        }
    }

    // Runs the loop until `done` holds; fails the test at the deadline. A timer ticks meanwhile
    // so that the deadline is looked at even when nothing else happens.
    void run_until(const std::function<bool()>& done) {
        const auto deadline = std::chrono::steady_clock::now() + kDeadline;
        Timer tick(&loop_, [] {});
        tick.start(10, 10);
        while (!done()) {
            REQUIRE(std::chrono::steady_clock::now() < deadline);
            uv_run(&loop_, UV_RUN_ONCE);
        }
        tick.close();
    }

    void close() {
        bool closed = false;
        pool_->close([&closed] { closed = true; });
        run_until([&closed] { return closed; });
        pool_.reset();
        uv_run(&loop_, UV_RUN_DEFAULT); // the handles' close callbacks
        CHECK(close_loop(&loop_).empty());
    }

    WorkerPool& pool() { return *pool_; }

    // How many events the pool takes in one go (one loop turn, so nothing is answered meanwhile).
    int fill(const std::string& type, uint64_t first_seq) {
        WorkerPool::WriteBatch batch(*pool_);
        int taken = 0;
        while (pool_->dispatch(first_seq + static_cast<uint64_t>(taken),
                               event_fields(type, first_seq + static_cast<uint64_t>(taken)),
                               10000)) {
            ++taken;
        }
        return taken;
    }

    double sample(const std::string& text, const std::string& needle) const {
        const size_t at = text.find(needle);
        if (at == std::string::npos) {
            return -1;
        }
        return std::stod(text.substr(at + needle.size()));
    }
    // A value of the exposition, -1 when the series is not there.
    double metric(const std::string& name, const std::string& sink) const {
        return sample(registry_.render_prometheus(),
                      name + "{sink=\"" + sink + "\",kind=\"instant\"} ");
    }

    std::map<uint64_t, ResultMsg> results_;
    std::map<uint64_t, std::string> failed_;
    std::vector<uint64_t> returned_;
    std::vector<RestartReason> restarts_;

  private:
    uv_loop_t loop_{};
    MetricsRegistry registry_;
    SinkMetrics sinks_;
    std::unique_ptr<WorkerPool> pool_;
};

} // namespace

TEST_CASE("pool: synchronous subscribers keep the pipeline at its depth", "[worker_pool]") {
    PoolUnderTest test(2,
                       {sync_subscriber("log", {"*"}, [](const Event&) { return Result::ok(); })});
    test.run_until([&] { return test.pool().ready_processes() == 2; });
    CHECK(test.fill("order.created", 1) == 2 * 4);
    test.run_until([&] { return test.results_.size() == 8; });
    for (const auto& [seq, result] : test.results_) {
        CHECK(result.outcome == Outcome::success);
    }
}

TEST_CASE("pool: a broker subscriber deepens the pipeline and feeds the sink metrics",
          "[worker_pool][sink]") {
    spdlog::level::level_enum level = spdlog::get_level();
    std::vector<Subscriber> subscribers;
    subscribers.push_back(instant_broker_subscriber("bus", {"pub.*"}));
    // A process that reports a sink none of its subscribers is: ignored, not a protocol error.
    subscribers.push_back(sync_subscriber("ghost", {"ghost.*"}, [](const Event&) {
        const std::string frame = encode_status(StatusMsg{"ghost", true, "connected"});
        REQUIRE(::write(3, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
        return Result::ok();
    }));
    subscribers.push_back(
        sync_subscriber("crasher", {"crash.*"}, [](const Event&) -> Result { _exit(7); }));
    PoolUnderTest test(2, std::move(subscribers));
    // Declared before any process runs: a sink that never connects shows as 0.
    CHECK(test.metric("outbox_sink_connected", "bus") == 0);
    CHECK(test.metric("outbox_sink_published_total", "bus") == 0);
    test.run_until([&] { return test.pool().ready_processes() == 2; });

    // Each process takes 128 events before the pool says it is full.
    CHECK(test.fill("pub.created", 1) == 2 * 128);
    CHECK(test.pool().in_flight() == 256);
    test.run_until([&] { return test.results_.size() == 256; });
    for (const auto& [seq, result] : test.results_) {
        INFO("seq " << seq << ": " << result.error);
        CHECK(result.outcome == Outcome::success);
    }
    CHECK(test.metric("outbox_sink_published_total", "bus") == 256);
    CHECK(test.metric("outbox_sink_failed_total", "bus") == 0);
    // Both processes published, so both said their sink connected.
    test.run_until([&] { return test.metric("outbox_sink_connected", "bus") == 2; });

    test.results_.clear();
    REQUIRE(test.pool().dispatch(1001, event_fields("pub.reject", 1001), 10000));
    test.run_until([&] { return test.results_.contains(1001); });
    CHECK(test.results_[1001].outcome == Outcome::permanent);
    CHECK(test.results_[1001].error == "subscriber bus: instant: rejected");
    CHECK(test.metric("outbox_sink_failed_total", "bus") == 1);

    spdlog::set_level(spdlog::level::off); // the ghost's debug line and the crash's error
    REQUIRE(test.pool().dispatch(1002, event_fields("ghost.x", 1002), 10000));
    test.run_until([&] { return test.results_.contains(1002); });
    CHECK(test.results_[1002].outcome == Outcome::success);
    CHECK(test.restarts_.empty());
    CHECK(test.metric("outbox_sink_connected", "ghost") == -1);

    // A process that ends stops counting as connected.
    REQUIRE(test.pool().dispatch(1003, event_fields("crash.x", 1003), 10000));
    test.run_until([&] { return test.failed_.contains(1003); });
    CHECK_THAT(test.failed_[1003], Catch::Contains("exited with code 7"));
    CHECK(test.metric("outbox_sink_connected", "bus") == 1);
    spdlog::set_level(level);
}
