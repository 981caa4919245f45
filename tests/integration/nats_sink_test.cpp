// The `nats` sink (worker/nats_sink.cpp) against a real nats-server with JetStream
// (tests/support/nats_server.h), read back with the NATS C client's own JetStream consumer, never
// with our code: 5,000 messages with many in flight, a server stopped and restarted mid-run, the
// stream's deduplication by Nats-Msg-Id, permanent rejections, timeouts and check().
#include "tests/support/nats_server.h"
#include "worker/sink.h"

#include <catch2/catch.hpp>
#include <nats/nats.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <queue>
#include <set>
#include <sstream>
#include <thread>

using namespace outbox::test;
using outbox::BrokerMessage;
using outbox::Outcome;
using outbox::Result;
using outbox::Sink;
using Clock = std::chrono::steady_clock;

namespace {

// ---- messages and a publisher that behaves like the handler process ---------------------------

struct TestMessage {
    BrokerMessage message;
    std::string key;
    int seq = 0; // position among the messages of its key
};

// `count` messages over `keys` keys, with every combination of optional headers, in the order a
// producer would have written them (the seq of each key rising).
std::vector<TestMessage> make_messages(int count, int keys, const std::string& subject_prefix,
                                       const std::string& id_prefix = "evt") {
    std::vector<TestMessage> out;
    std::map<std::string, int> seq;
    for (int i = 0; i < count; ++i) {
        TestMessage t;
        t.key = "key-" + std::to_string(i % keys);
        t.seq = seq[t.key]++;
        BrokerMessage& m = t.message;
        m.id = id_prefix + "-" + std::to_string(i);
        m.destination = subject_prefix + (i % 2 == 0 ? ".created" : ".updated");
        m.key = t.key;
        m.content_type = i % 3 == 0 ? "application/cloudevents+json" : "application/json";
        m.body = R"({"key":")" + t.key + R"(","seq":)" + std::to_string(t.seq) + R"(,"i":)" +
                 std::to_string(i) + R"(,"pad":")" + std::string(100, 'x') + R"("})";
        m.headers = {{"outbox-id", m.id},
                     {"outbox-event-type", i % 2 == 0 ? "order.created" : "order.updated"},
                     {"outbox-tenant-id", "tenant-" + std::to_string(i % 3)}};
        if (i % 2 == 0) {
            m.headers.emplace_back("outbox-correlation-id", "corr-" + std::to_string(i));
        }
        if (i % 5 == 0) {
            char traceparent[64];
            std::snprintf(traceparent, sizeof traceparent, "00-%032x-%016x-01", i + 1, i + 7);
            m.headers.emplace_back("traceparent", traceparent);
            if (i % 10 == 0) {
                m.headers.emplace_back("tracestate", "vendor=" + std::to_string(i));
            }
        }
        out.push_back(std::move(t));
    }
    return out;
}

struct RunStats {
    size_t succeeded = 0;
    size_t attempts = 0;
    size_t max_in_flight_seen = 0;
    std::vector<std::string> retries;    // the reasons, in order
    std::vector<std::string> permanents; // the reasons, in order
};

// Publishes every message until it succeeds, as the handler process and the supervisor together
// would: at most one publication in flight per key (the supervisor's per-key order) and at most
// `max_in_flight` overall; a retryable failure is published again after `retry_delay` (the
// supervisor's backoff). `tick` runs between polls (to stop and start the server).
RunStats publish_all(Sink& sink, const std::vector<TestMessage>& messages, size_t max_in_flight,
                     std::chrono::seconds limit,
                     const std::function<void(const RunStats&)>& tick = {},
                     std::chrono::milliseconds retry_delay = std::chrono::milliseconds(200)) {
    struct KeyState {
        std::vector<size_t> queue; // message indexes in order
        size_t next = 0;
    };
    std::map<std::string, KeyState> keys;
    for (size_t i = 0; i < messages.size(); ++i) {
        keys[messages[i].key].queue.push_back(i);
    }
    std::deque<KeyState*> ready;
    for (auto& [key, state] : keys) {
        ready.push_back(&state);
    }
    using Waiting = std::pair<Clock::time_point, KeyState*>;
    std::priority_queue<Waiting, std::vector<Waiting>, std::greater<>> waiting;

    RunStats stats;
    size_t in_flight = 0;
    auto deadline = Clock::now() + limit;
    while (stats.succeeded + stats.permanents.size() < messages.size() && Clock::now() < deadline) {
        auto now = Clock::now();
        while (!waiting.empty() && waiting.top().first <= now) {
            ready.push_back(waiting.top().second);
            waiting.pop();
        }
        while (in_flight < max_in_flight && !ready.empty()) {
            KeyState* s = ready.front();
            ready.pop_front();
            ++in_flight;
            ++stats.attempts;
            stats.max_in_flight_seen = std::max(stats.max_in_flight_seen, in_flight);
            sink.publish(messages[s->queue[s->next]].message, [&, s](Result result) {
                --in_flight;
                if (result.outcome == Outcome::retry) {
                    stats.retries.push_back(result.error);
                    waiting.emplace(Clock::now() + retry_delay, s);
                    return;
                }
                if (result.outcome == Outcome::success) {
                    ++stats.succeeded;
                } else {
                    stats.permanents.push_back(result.error);
                }
                if (++s->next < s->queue.size()) {
                    ready.push_back(s);
                }
            });
        }
        if (sink.pending() > 0) {
            sink.poll(50);
        } else if (ready.empty() && !waiting.empty()) {
            // Nothing in flight, every key waiting for its retry: wait for the earliest (a
            // timer, as the supervisor's backoff is).
            std::this_thread::sleep_until(std::min(waiting.top().first, deadline));
        }
        if (tick) {
            tick(stats);
        }
    }
    return stats;
}

std::unique_ptr<Sink> nats_sink(const std::string& url, long timeout_ms) {
    outbox::NatsSinkOptions options;
    options.url = url;
    options.timeout_ms = timeout_ms;
    return outbox::make_nats_sink(options);
}

Result publish_one(Sink& sink, const BrokerMessage& message, int limit_ms = 30000) {
    std::optional<Result> outcome;
    sink.publish(message, [&](Result r) { outcome = std::move(r); });
    auto deadline = Clock::now() + std::chrono::milliseconds(limit_ms);
    while (!outcome && Clock::now() < deadline) {
        sink.poll(100);
    }
    REQUIRE(outcome);
    return *outcome;
}

BrokerMessage simple_message(const std::string& id, const std::string& subject,
                             std::string body = R"({"hello":"world"})") {
    BrokerMessage m;
    m.id = id;
    m.destination = subject;
    m.key = "k";
    m.body = std::move(body);
    m.content_type = "application/json";
    m.headers = {
        {"outbox-id", id}, {"outbox-event-type", "order.created"}, {"outbox-tenant-id", "t1"}};
    return m;
}

// ---- an independent reader: the NATS C client's own JetStream API ------------------------------

struct ReadMessage {
    std::string subject;
    std::string body;
    std::map<std::string, std::string> headers;
    uint64_t stream_seq = 0;
};

class NatsClient {
  public:
    explicit NatsClient(const std::string& url) {
        natsStatus s = natsConnection_ConnectTo(&nc_, url.c_str());
        INFO(nats_GetLastError(nullptr));
        REQUIRE(s == NATS_OK);
        REQUIRE(natsConnection_JetStream(&js_, nc_, nullptr) == NATS_OK);
    }
    ~NatsClient() {
        jsCtx_Destroy(js_);
        natsConnection_Destroy(nc_);
    }
    NatsClient(const NatsClient&) = delete;
    NatsClient& operator=(const NatsClient&) = delete;

    void add_stream(const std::string& name, const std::string& subjects,
                    int32_t max_msg_size = 0) {
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char* subjects_list[] = {subjects.c_str()};
        cfg.Name = name.c_str();
        cfg.Subjects = subjects_list;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_FileStorage;
        if (max_msg_size > 0) {
            cfg.MaxMsgSize = max_msg_size;
        }
        jsStreamInfo* info = nullptr;
        jsErrCode code = static_cast<jsErrCode>(0);
        natsStatus s = js_AddStream(&info, js_, &cfg, nullptr, &code);
        INFO(nats_GetLastError(nullptr) << " (err_code " << code << ")");
        REQUIRE(s == NATS_OK);
        jsStreamInfo_Destroy(info);
    }

    uint64_t stream_messages(const std::string& name) {
        jsStreamInfo* info = nullptr;
        jsErrCode code = static_cast<jsErrCode>(0);
        natsStatus s = js_GetStreamInfo(&info, js_, name.c_str(), nullptr, &code);
        INFO(nats_GetLastError(nullptr));
        REQUIRE(s == NATS_OK);
        uint64_t count = info->State.Msgs;
        jsStreamInfo_Destroy(info);
        return count;
    }

    // Everything the stream holds on `subjects`, in stream order, through an ordered consumer.
    std::vector<ReadMessage> read_all(const std::string& stream, const std::string& subjects) {
        uint64_t expected = stream_messages(stream);
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = stream.c_str();
        so.Ordered = true;
        natsSubscription* sub = nullptr;
        jsErrCode code = static_cast<jsErrCode>(0);
        natsStatus s = js_SubscribeSync(&sub, js_, subjects.c_str(), nullptr, &so, &code);
        INFO(nats_GetLastError(nullptr));
        REQUIRE(s == NATS_OK);
        std::vector<ReadMessage> out;
        while (out.size() < expected) {
            natsMsg* msg = nullptr;
            s = natsSubscription_NextMsg(&msg, sub, 10000);
            INFO("read " << out.size() << " of " << expected);
            REQUIRE(s == NATS_OK);
            ReadMessage r;
            r.subject = natsMsg_GetSubject(msg);
            r.body.assign(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
            const char** keys = nullptr;
            int count = 0;
            if (natsMsgHeader_Keys(msg, &keys, &count) == NATS_OK) {
                for (int i = 0; i < count; ++i) {
                    const char* value = nullptr;
                    if (natsMsgHeader_Get(msg, keys[i], &value) == NATS_OK) {
                        r.headers[keys[i]] = value;
                    }
                }
                free(static_cast<void*>(keys));
            }
            jsMsgMetaData* meta = nullptr;
            REQUIRE(natsMsg_GetMetaData(&meta, msg) == NATS_OK);
            r.stream_seq = meta->Sequence.Stream;
            jsMsgMetaData_Destroy(meta);
            natsMsg_Destroy(msg);
            out.push_back(std::move(r));
        }
        natsSubscription_Destroy(sub);
        return out;
    }

  private:
    natsConnection* nc_ = nullptr;
    jsCtx* js_ = nullptr;
};

// Every message of `sent` is in `read` exactly once, with its subject, body and headers (the
// message's own, plus Nats-Msg-Id and Content-Type, nothing else), and the messages of each key
// are in their order.
void check_read_back(const std::vector<TestMessage>& sent, const std::vector<ReadMessage>& read) {
    std::map<std::string, const TestMessage*> by_id;
    for (const auto& t : sent) {
        by_id[t.message.id] = &t;
    }
    REQUIRE(read.size() == sent.size());
    std::set<std::string> seen;
    std::map<std::string, int> last_seq;
    for (const auto& r : read) {
        auto id_header = r.headers.find("Nats-Msg-Id");
        REQUIRE(id_header != r.headers.end());
        const std::string& id = id_header->second;
        auto it = by_id.find(id);
        INFO("message " << id);
        REQUIRE(it != by_id.end());
        CHECK(seen.insert(id).second);
        const BrokerMessage& m = it->second->message;
        CHECK(r.subject == m.destination);
        CHECK(r.body == m.body);
        std::map<std::string, std::string> expected(m.headers.begin(), m.headers.end());
        expected["Nats-Msg-Id"] = m.id;
        expected["Content-Type"] = m.content_type;
        CHECK(r.headers == expected);
        auto [pos, fresh] = last_seq.emplace(it->second->key, it->second->seq);
        if (!fresh) {
            CHECK(it->second->seq > pos->second);
            pos->second = it->second->seq;
        }
    }
    CHECK(seen.size() == sent.size());
}

bool all_of_kind(const std::vector<std::string>& reasons, const std::string& prefix) {
    return std::all_of(reasons.begin(), reasons.end(),
                       [&](const std::string& r) { return r.rfind(prefix, 0) == 0; });
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

long vm_hwm_kib() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("VmHWM:", 0) == 0) {
            return std::stol(line.substr(6));
        }
    }
    return -1;
}

} // namespace

TEST_CASE("NATS sink: 5,000 messages with many in flight, each stored once, in order per key",
          "[broker][nats]") {
    NatsServer server;
    NatsClient client(server.url());
    client.add_stream("ORDERS", "orders.>");

    auto sink = nats_sink(server.url(), 10000);
    // Lazily: nothing connects before the first publication.
    CHECK_FALSE(sink->connected());
    CHECK(sink->wait_fd() >= 0);

    auto messages = make_messages(5000, 500, "orders");
    RunStats stats = publish_all(*sink, messages, 128, std::chrono::seconds(120));
    INFO(server.describe());
    CHECK(stats.permanents.empty());
    CHECK(stats.retries.empty());
    REQUIRE(stats.succeeded == messages.size());
    CHECK(stats.max_in_flight_seen == 128);
    CHECK(sink->pending() == 0);
    CHECK(sink->connected());

    CHECK(client.stream_messages("ORDERS") == messages.size());
    check_read_back(messages, client.read_all("ORDERS", "orders.>"));
}

TEST_CASE("NATS sink: the stream drops a re-publication with the same Nats-Msg-Id",
          "[broker][nats]") {
    NatsServer server;
    NatsClient client(server.url());
    client.add_stream("ORDERS", "orders.>");
    auto sink = nats_sink(server.url(), 5000);

    auto first = simple_message("dedup-1", "orders.created");
    CHECK(publish_one(*sink, first).outcome == Outcome::success);
    // The same Outbox id again, as after a lost acknowledgement: acknowledged (as a duplicate),
    // not stored again. Even with a different body: the id decides.
    auto again = first;
    again.body = R"({"hello":"again"})";
    CHECK(publish_one(*sink, again).outcome == Outcome::success);
    CHECK(client.stream_messages("ORDERS") == 1);
    // Both at once, in flight together.
    auto second = simple_message("dedup-2", "orders.created");
    std::vector<Result> results;
    sink->publish(second, [&](Result r) { results.push_back(r); });
    sink->publish(second, [&](Result r) { results.push_back(r); });
    REQUIRE(wait_until(
        [&] {
            sink->poll(50);
            return results.size() == 2;
        },
        std::chrono::seconds(10)));
    CHECK(results[0].outcome == Outcome::success);
    CHECK(results[1].outcome == Outcome::success);
    CHECK(client.stream_messages("ORDERS") == 2);

    auto read = client.read_all("ORDERS", "orders.>");
    REQUIRE(read.size() == 2);
    CHECK(read[0].headers["Nats-Msg-Id"] == "dedup-1");
    CHECK(read[0].body == first.body);
    CHECK(read[1].headers["Nats-Msg-Id"] == "dedup-2");
}

TEST_CASE("NATS sink: a server stopped mid-run costs retryable failures and loses nothing",
          "[broker][nats]") {
    NatsServer server;
    {
        NatsClient client(server.url());
        client.add_stream("ORDERS", "orders.>");
    }
    auto sink = nats_sink(server.url(), 5000);
    auto messages = make_messages(3000, 300, "orders");

    bool stopped = false;
    bool restarted = false;
    Clock::time_point stopped_at;
    long slowest_failure_while_down_ms = 0;
    RunStats stats =
        publish_all(*sink, messages, 128, std::chrono::seconds(120), [&](const RunStats& s) {
            if (!stopped && s.succeeded >= 1000) {
                server.stop();
                stopped = true;
                stopped_at = Clock::now();
                // The client notices the closed connection on its own thread.
                REQUIRE(wait_until([&] { return !sink->connected(); }, std::chrono::seconds(5)));
                // A publication while the server is down fails at once.
                auto started = Clock::now();
                Result r = publish_one(*sink, simple_message("probe", "orders.created"));
                slowest_failure_while_down_ms =
                    std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started)
                        .count();
                CHECK(r.outcome == Outcome::retry);
                CHECK(contains(r.error, "nats:"));
                CHECK_FALSE(sink->connected());
            }
            if (stopped && !restarted && Clock::now() - stopped_at >= std::chrono::seconds(3)) {
                server.start();
                restarted = true;
            }
        });
    INFO(server.describe());
    REQUIRE(restarted);
    CHECK(stats.permanents.empty());
    REQUIRE(stats.succeeded == messages.size());
    CHECK(slowest_failure_while_down_ms < 1000);

    // While the server was down: retryable failures that say what happened.
    REQUIRE_FALSE(stats.retries.empty());
    CHECK(all_of_kind(stats.retries, "nats: "));
    size_t not_connected = 0;
    size_t lost_in_flight = 0;
    size_t not_ready = 0;
    for (const auto& reason : stats.retries) {
        INFO(reason);
        // Just after the restart the client may be back before JetStream is: the server then
        // answers "no responders", which the sink must not take for a missing stream.
        bool known = contains(reason, "not connected to " + server.url()) ||
                     contains(reason, "lost before the acknowledgement") ||
                     contains(reason, "no acknowledgement within") ||
                     contains(reason, "JetStream not ready") ||
                     contains(reason, "(stream not ready yet?)");
        CHECK(known);
        not_connected += contains(reason, "not connected to ") ? 1 : 0;
        lost_in_flight += contains(reason, "lost before the acknowledgement") ? 1 : 0;
        not_ready += contains(reason, "no responders") ? 1 : 0;
    }
    CHECK(not_connected > 0);
    WARN("NATS restart: " << stats.retries.size() << " retryable failures, " << not_connected
                          << " while not connected, " << lost_in_flight
                          << " in flight at the disconnection, " << not_ready
                          << " while JetStream was not ready; " << stats.attempts
                          << " publications for " << messages.size() << " messages");

    // Nothing lost, nothing twice: the publications that were in flight when the server went
    // away and were published again are in the stream once, by their Nats-Msg-Id.
    NatsClient client(server.url());
    CHECK(client.stream_messages("ORDERS") == messages.size());
    check_read_back(messages, client.read_all("ORDERS", "orders.>"));
}

TEST_CASE("NATS sink: what the stream rejects for good is permanent, with the reason",
          "[broker][nats]") {
    NatsServerOptions small_payload;
    small_payload.max_payload = 64 * 1024;
    NatsServer server(small_payload);
    NatsClient client(server.url());
    client.add_stream("ORDERS", "orders.>");
    client.add_stream("SMALL", "small.>", 1024);
    auto sink = nats_sink(server.url(), 5000);

    SECTION("no stream captures the subject") {
        Result r = publish_one(*sink, simple_message("p-1", "nostream.created"));
        CHECK(r.outcome == Outcome::permanent);
        CHECK(contains(r.error, "nats: publish to nostream.created: no responders"));
        CHECK(contains(r.error, "no JetStream stream captures the subject"));
    }
    SECTION("larger than the server's max_payload") {
        Result r =
            publish_one(*sink, simple_message("p-2", "orders.created", std::string(100000, 'x')));
        CHECK(r.outcome == Outcome::permanent);
        CHECK(contains(r.error, "nats: publish to orders.created: message of 100000 bytes "
                                "exceeds the server's maximum payload (65536 bytes)"));
    }
    SECTION("larger than the stream's max_msg_size") {
        Result r =
            publish_one(*sink, simple_message("p-3", "small.created", std::string(2000, 'x')));
        CHECK(r.outcome == Outcome::permanent);
        CHECK(contains(r.error, "nats: publish to small.created: rejected by the stream:"));
        CHECK(contains(r.error, "err_code 10054"));
    }
    SECTION("not a subject one can publish to") {
        for (const char* subject : {"orders.has space", "orders.line\nbreak", "orders.*",
                                    "orders.>", "orders..created", ".orders", ""}) {
            Result r = publish_one(*sink, simple_message("p-4", subject));
            INFO(r.error);
            CHECK(r.outcome == Outcome::permanent);
            CHECK(contains(r.error, ": invalid subject: "));
        }
    }
    // The connection is still good for everything else.
    CHECK(publish_one(*sink, simple_message("good", "orders.created")).outcome == Outcome::success);
    CHECK(client.stream_messages("ORDERS") == 1);
    CHECK(client.stream_messages("SMALL") == 0);
}

TEST_CASE("NATS sink: a server without JetStream answers no one: retryable, not permanent",
          "[broker][nats]") {
    // "No responders" looks the same for a subject no stream captures and for JetStream that is
    // not (yet) there; the sink tells them apart by asking JetStream, which here does not answer.
    NatsServerOptions no_jetstream;
    no_jetstream.jetstream = false;
    NatsServer server(no_jetstream);
    auto sink = nats_sink(server.url(), 5000);
    Result r = publish_one(*sink, simple_message("nojs-1", "orders.created"));
    CHECK(r.outcome == Outcome::retry);
    CHECK(contains(r.error, "nats: publish to orders.created: no responders, and JetStream does "
                            "not answer"));
    auto problem = sink->check(2000);
    REQUIRE(problem);
    CHECK(contains(*problem, "JetStream does not answer"));
}

TEST_CASE("NATS sink: a publication not acknowledged in time fails retryably", "[broker][nats]") {
    NatsServer server;
    {
        NatsClient client(server.url());
        client.add_stream("ORDERS", "orders.>");
    }
    auto sink = nats_sink(server.url(), 500);
    REQUIRE(publish_one(*sink, simple_message("t-0", "orders.created")).outcome ==
            Outcome::success);

    server.pause(); // connections stay open, nothing is answered
    auto started = Clock::now();
    std::vector<Result> results;
    for (int i = 1; i <= 10; ++i) {
        sink->publish(simple_message("t-" + std::to_string(i), "orders.created"),
                      [&](Result r) { results.push_back(r); });
    }
    // The deadline wakes wait_fd(): a caller waiting on it alone learns of the timeout.
    struct pollfd pfd = {sink->wait_fd(), POLLIN, 0};
    CHECK(::poll(&pfd, 1, 3000) == 1);
    REQUIRE(wait_until(
        [&] {
            sink->poll(50);
            return results.size() == 10;
        },
        std::chrono::seconds(10)));
    auto elapsed = Clock::now() - started;
    // The client's timer counts whole milliseconds and may fire a fraction of one early.
    CHECK(elapsed >= std::chrono::milliseconds(490));
    CHECK(elapsed < std::chrono::seconds(5));
    for (const auto& r : results) {
        CHECK(r.outcome == Outcome::retry);
        CHECK(r.error == "nats: publish to orders.created: no acknowledgement within 500 ms");
    }
    CHECK(sink->pending() == 0);

    server.resume();
    // The server stored what it received before the pause was noticed or after it ended; the
    // re-publications are dropped by their Nats-Msg-Id.
    for (int i = 1; i <= 10; ++i) {
        CHECK(publish_one(*sink, simple_message("t-" + std::to_string(i), "orders.created"))
                  .outcome == Outcome::success);
    }
    NatsClient client(server.url());
    CHECK(client.stream_messages("ORDERS") == 11);
}

TEST_CASE("NATS sink: publications in flight when the connection breaks fail at once",
          "[broker][nats]") {
    NatsServer server;
    {
        NatsClient client(server.url());
        client.add_stream("ORDERS", "orders.>");
    }
    auto sink = nats_sink(server.url(), 20000);
    REQUIRE(publish_one(*sink, simple_message("c-0", "orders.created")).outcome ==
            Outcome::success);

    // A server that takes the messages and answers nothing, then dies: the acknowledgements
    // cannot come any more, and the sink says so as soon as the client sees the connection go,
    // not after the 20 s timeout.
    server.pause();
    std::vector<Result> results;
    for (int i = 1; i <= 10; ++i) {
        sink->publish(simple_message("c-" + std::to_string(i), "orders.created"),
                      [&](Result r) { results.push_back(r); });
    }
    sink->poll(0);
    CHECK(results.empty());
    server.kill();
    REQUIRE(wait_until(
        [&] {
            sink->poll(50);
            return results.size() == 10;
        },
        std::chrono::seconds(10)));
    for (const auto& r : results) {
        CHECK(r.outcome == Outcome::retry);
        CHECK(r.error == "nats: publish to orders.created: connection to " + server.url() +
                             " lost before the acknowledgement");
    }
    CHECK(sink->pending() == 0);

    server.start();
    for (int i = 1; i <= 10; ++i) {
        auto m = simple_message("c-" + std::to_string(i), "orders.created");
        REQUIRE(wait_until([&] { return publish_one(*sink, m).outcome == Outcome::success; },
                           std::chrono::seconds(15)));
    }
    NatsClient client(server.url());
    CHECK(client.stream_messages("ORDERS") == 11);
}

TEST_CASE("NATS sink: check() and publications against live and dead servers", "[broker][nats]") {
    SECTION("live server with JetStream") {
        NatsServer server;
        auto sink = nats_sink(server.url(), 5000);
        auto problem = sink->check(5000);
        CHECK_FALSE(problem);
        CHECK(sink->connected());
    }
    SECTION("nothing listening") {
        int port = free_tcp_port();
        std::string url = "nats://127.0.0.1:" + std::to_string(port);
        auto sink = nats_sink(url, 5000);
        auto problem = sink->check(2000);
        REQUIRE(problem);
        CHECK(contains(*problem, "nats: cannot connect to " + url));

        // Publications fail at once, retryably, and say when the next attempt is due.
        auto started = Clock::now();
        Result r = publish_one(*sink, simple_message("dead-1", "orders.created"));
        CHECK(Clock::now() - started < std::chrono::seconds(1));
        CHECK(r.outcome == Outcome::retry);
        CHECK(contains(r.error, "nats: not connected to " + url + ": "));
        CHECK(contains(r.error, "; next attempt in "));
        // No retry before the next connection attempt.
        CHECK(r.retry_after_ms > 0);
        CHECK(r.retry_after_ms <= outbox::kSinkReconnectMaxMs);
        CHECK_FALSE(sink->connected());
        CHECK(sink->pending() == 0);
    }
    SECTION("the password of the URL is not in the error") {
        int port = free_tcp_port();
        auto sink = nats_sink("nats://user:hunter2@127.0.0.1:" + std::to_string(port), 5000);
        Result r = publish_one(*sink, simple_message("dead-2", "orders.created"));
        CHECK(r.outcome == Outcome::retry);
        CHECK_FALSE(contains(r.error, "hunter2"));
        CHECK(contains(r.error, "nats://user:***@127.0.0.1:"));
    }
}

// The child process of the measurement below: with OUTBOX_RSS_SINK_URL set, publishes 2,000
// messages through one sink (128 in flight) and prints its VmHWM; with the variable empty, prints
// the VmHWM of the same process without a sink (the baseline).
TEST_CASE("NATS sink: peak RSS child", "[.][rss-child]") {
    const char* url = std::getenv("OUTBOX_RSS_SINK_URL");
    if (url == nullptr) {
        return; // only as the child of the measurement
    }
    if (*url != '\0') {
        auto sink = nats_sink(url, 10000);
        auto messages = make_messages(2000, 2000, "orders");
        RunStats stats = publish_all(*sink, messages, 128, std::chrono::seconds(60));
        REQUIRE(stats.succeeded == messages.size());
    }
    std::printf("VmHWM %ld\n", vm_hwm_kib());
}

// The figures for docs/PERFORMANCE.md, measured only when asked for (ctest's test list includes
// hidden tests, so the tag alone would not keep it out of `make test`):
//     OUTBOX_MEASURE_SINKS=1 build/integration-tests "[measure][nats]"
// Throughput: 50,000 messages through one sink, 128 in flight, in this process. Peak RSS: a child
// process (this binary again) holding one connection, against the same child without a sink.
TEST_CASE("NATS sink: throughput and peak RSS", "[.][measure][nats]") {
    if (std::getenv("OUTBOX_MEASURE_SINKS") == nullptr) {
        return;
    }
    NatsServer server;
    {
        NatsClient client(server.url());
        client.add_stream("ORDERS", "orders.>");
    }
    auto sink = nats_sink(server.url(), 10000);
    auto messages = make_messages(50000, 50000, "orders");
    auto started = Clock::now();
    RunStats stats = publish_all(*sink, messages, 128, std::chrono::seconds(300));
    double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    REQUIRE(stats.succeeded == messages.size());

    auto child_hwm = [&](const std::string& url) {
        SpawnOptions spawn;
        spawn.args = {"NATS sink: peak RSS child"};
        spawn.env["OUTBOX_RSS_SINK_URL"] = url;
        auto run = run_process("/proc/self/exe", std::move(spawn));
        INFO(run.out << run.err);
        REQUIRE(run.status.exited_with(0));
        size_t at = run.out.find("VmHWM ");
        REQUIRE(at != std::string::npos);
        return std::stol(run.out.substr(at + 6));
    };
    long baseline = child_hwm("");
    long with_sink = child_hwm(server.url());
    WARN("NATS sink: " << messages.size() << " messages (" << messages[0].message.body.size()
                       << "-byte bodies), 128 in flight: "
                       << static_cast<long>(messages.size() / seconds)
                       << " messages/s. Peak RSS (VmHWM) of a process with one sink after 2,000 "
                          "messages: "
                       << with_sink << " KiB; the same process without a sink: " << baseline
                       << " KiB");
}
