// The `redis` sink (worker/redis_sink.cpp) against a real redis-server
// (tests/support/redis_server.h, append-only file fsynced on every write), read back with
// hiredis's own XRANGE, never with our code: 5,000 messages pipelined, a server stopped and
// restarted mid-run with the duplicates a consumer drops by outbox-id, permanent and retryable
// error replies, timeouts, AUTH and SELECT, check(), and the URL parser.
#include "tests/support/redis_server.h"
#include "worker/redis_sink.h"
#include "worker/sink.h"

#include <catch2/catch.hpp>
#include <hiredis/hiredis.h>
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

std::unique_ptr<Sink> redis_sink(const std::string& url, long timeout_ms,
                                 std::optional<long> max_len = std::nullopt) {
    outbox::RedisSinkOptions options;
    options.url = url;
    options.timeout_ms = timeout_ms;
    options.max_len = max_len;
    return outbox::make_redis_sink(options);
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

// ---- an independent reader: hiredis, blocking -------------------------------------------------

struct Entry {
    std::string id;                                          // the stream entry id
    std::vector<std::pair<std::string, std::string>> fields; // in order
};

class RedisClient {
  public:
    explicit RedisClient(const RedisServer& server, int db = 0,
                         std::optional<std::string> password = std::nullopt) {
        ctx_ = redisConnect("127.0.0.1", server.port());
        REQUIRE(ctx_ != nullptr);
        INFO(ctx_->errstr);
        REQUIRE(ctx_->err == 0);
        if (password) {
            REQUIRE(command({"AUTH", *password})->type == REDIS_REPLY_STATUS);
        }
        if (db != 0) {
            REQUIRE(command({"SELECT", std::to_string(db)})->type == REDIS_REPLY_STATUS);
        }
    }
    ~RedisClient() { redisFree(ctx_); }
    RedisClient(const RedisClient&) = delete;
    RedisClient& operator=(const RedisClient&) = delete;

    struct ReplyDeleter {
        void operator()(redisReply* r) const { freeReplyObject(r); }
    };
    using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

    Reply command(const std::vector<std::string>& args) {
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        for (const auto& a : args) {
            argv.push_back(a.data());
            lens.push_back(a.size());
        }
        auto* reply = static_cast<redisReply*>(
            redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data()));
        INFO(ctx_->errstr);
        REQUIRE(reply != nullptr);
        return Reply(reply);
    }

    long long xlen(const std::string& stream) {
        auto r = command({"XLEN", stream});
        REQUIRE(r->type == REDIS_REPLY_INTEGER);
        return r->integer;
    }

    // The whole stream, in stream order, a page at a time.
    std::vector<Entry> read_all(const std::string& stream) {
        std::vector<Entry> out;
        std::string start = "-";
        for (;;) {
            auto r = command({"XRANGE", stream, start, "+", "COUNT", "1000"});
            REQUIRE(r->type == REDIS_REPLY_ARRAY);
            if (r->elements == 0) {
                break;
            }
            for (size_t i = 0; i < r->elements; ++i) {
                const redisReply* e = r->element[i];
                REQUIRE(e->type == REDIS_REPLY_ARRAY);
                REQUIRE(e->elements == 2);
                Entry entry;
                entry.id.assign(e->element[0]->str, e->element[0]->len);
                const redisReply* fields = e->element[1];
                REQUIRE(fields->elements % 2 == 0);
                for (size_t f = 0; f < fields->elements; f += 2) {
                    entry.fields.emplace_back(
                        std::string(fields->element[f]->str, fields->element[f]->len),
                        std::string(fields->element[f + 1]->str, fields->element[f + 1]->len));
                }
                out.push_back(std::move(entry));
            }
            start = "(" + out.back().id; // exclusive range, Redis 6.2 and later
        }
        return out;
    }

  private:
    redisContext* ctx_ = nullptr;
};

// The fields a message must have, in order: the headers, key, body, content-type.
std::vector<std::pair<std::string, std::string>> expected_fields(const BrokerMessage& m) {
    auto fields = m.headers;
    if (m.key) {
        fields.emplace_back("key", *m.key);
    }
    fields.emplace_back("body", m.body);
    fields.emplace_back("content-type", m.content_type);
    return fields;
}

std::string field(const Entry& e, const std::string& name) {
    for (const auto& [n, v] : e.fields) {
        if (n == name) {
            return v;
        }
    }
    return {};
}

// Drops repeats by the outbox-id field as a consumer would (keeping the first), then checks that
// every message of `sent` is there exactly once with its fields in order, and that each key's
// messages are in their order. Returns the number of repeats dropped.
size_t check_read_back(const std::vector<TestMessage>& sent, const std::vector<Entry>& read) {
    std::map<std::string, const TestMessage*> by_id;
    for (const auto& t : sent) {
        by_id[t.message.id] = &t;
    }
    std::set<std::string> seen;
    std::map<std::string, int> last_seq;
    size_t repeats = 0;
    for (const auto& e : read) {
        std::string id = field(e, "outbox-id");
        auto it = by_id.find(id);
        INFO("entry " << e.id << ", outbox-id " << id);
        REQUIRE(it != by_id.end());
        const BrokerMessage& m = it->second->message;
        CHECK(e.fields == expected_fields(m));
        if (!seen.insert(id).second) {
            ++repeats;
            continue;
        }
        auto [pos, fresh] = last_seq.emplace(it->second->key, it->second->seq);
        if (!fresh) {
            CHECK(it->second->seq > pos->second);
            pos->second = it->second->seq;
        }
    }
    CHECK(seen.size() == sent.size());
    return repeats;
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

TEST_CASE("Redis sink: 5,000 messages pipelined, each added once with its fields, in order per key",
          "[broker][redis]") {
    RedisServer server;
    auto sink = redis_sink(server.url(), 10000);
    // Lazily: nothing connects before the first publication.
    CHECK_FALSE(sink->connected());
    int fd = sink->wait_fd();
    CHECK(fd >= 0);

    auto messages = make_messages(5000, 500, "orders");
    RunStats stats = publish_all(*sink, messages, 128, std::chrono::seconds(120));
    INFO(server.describe());
    CHECK(stats.permanents.empty());
    CHECK(stats.retries.empty());
    REQUIRE(stats.succeeded == messages.size());
    CHECK(stats.max_in_flight_seen == 128);
    CHECK(sink->pending() == 0);
    CHECK(sink->connected());
    CHECK(sink->wait_fd() == fd); // the same descriptor for the sink's life

    RedisClient client(server);
    std::vector<Entry> read;
    for (const char* stream : {"orders.created", "orders.updated"}) {
        auto part = client.read_all(stream);
        CHECK(part.size() == 2500);
        read.insert(read.end(), part.begin(), part.end());
    }
    CHECK(check_read_back(messages, read) == 0);
}

TEST_CASE("Redis sink: maxLen trims the stream approximately", "[broker][redis]") {
    RedisServer server;
    auto sink = redis_sink(server.url(), 5000, 100);
    auto messages = make_messages(1000, 1000, "trim");
    for (auto& t : messages) {
        t.message.destination = "trimmed";
    }
    RunStats stats = publish_all(*sink, messages, 64, std::chrono::seconds(60));
    REQUIRE(stats.succeeded == messages.size());
    RedisClient client(server);
    // "~": whole macro nodes (100 entries by default) go, so at least 100 stay and fewer than
    // 100 more.
    long long length = client.xlen("trimmed");
    CHECK(length >= 100);
    CHECK(length < 200);
    auto entries = client.read_all("trimmed");
    REQUIRE_FALSE(entries.empty());
    CHECK(field(entries.back(), "outbox-id") == messages.back().message.id);
}

TEST_CASE("Redis sink: a server stopped mid-run costs retryable failures and loses nothing",
          "[broker][redis]") {
    RedisServer server;
    auto sink = redis_sink(server.url(), 5000);
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
                // The first publication after the stop finds the connection closed; the ones
                // after it fail at once, while the sink waits to reconnect.
                auto started = Clock::now();
                for (int i = 0; i < 2; ++i) {
                    Result r = publish_one(*sink, simple_message("probe", "probes"));
                    CHECK(r.outcome == Outcome::retry);
                    CHECK(contains(r.error, "redis: "));
                }
                slowest_failure_while_down_ms =
                    std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started)
                        .count();
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

    REQUIRE_FALSE(stats.retries.empty());
    size_t not_connected = 0;
    for (const auto& reason : stats.retries) {
        INFO(reason);
        CHECK(reason.rfind("redis: ", 0) == 0);
        bool known = contains(reason, "not connected to redis://127.0.0.1:") ||
                     contains(reason, "connection to redis://127.0.0.1:") ||
                     contains(reason, "LOADING");
        CHECK(known);
        not_connected += contains(reason, "not connected to ") ? 1 : 0;
    }
    CHECK(not_connected > 0);

    // Nothing lost. Redis has no deduplication of its own: an XADD executed whose reply was lost
    // with the connection is there twice, and the consumer drops the repeat by outbox-id.
    RedisClient client(server);
    std::vector<Entry> read;
    for (const char* stream : {"orders.created", "orders.updated"}) {
        auto part = client.read_all(stream);
        read.insert(read.end(), part.begin(), part.end());
    }
    CHECK(client.xlen("probes") == 0);
    size_t repeats = check_read_back(messages, read);
    CHECK(read.size() == messages.size() + repeats);
    WARN("Redis restart: " << stats.retries.size() << " retryable failures (" << not_connected
                           << " while not connected), " << stats.attempts << " publications for "
                           << messages.size() << " messages, " << repeats
                           << " repeats dropped by outbox-id");
}

TEST_CASE("Redis sink: error replies are matched to their publications and classified",
          "[broker][redis]") {
    RedisServer server;
    RedisClient client(server);
    auto sink = redis_sink(server.url(), 5000);

    SECTION("WRONGTYPE is permanent, between two good publications in the same pipeline") {
        REQUIRE(client.command({"SET", "not-a-stream", "x"})->type == REDIS_REPLY_STATUS);
        std::vector<Result> results(3);
        std::vector<bool> done(3, false);
        const char* streams[] = {"good", "not-a-stream", "good"};
        for (int i = 0; i < 3; ++i) {
            sink->publish(simple_message("w-" + std::to_string(i), streams[i]), [&, i](Result r) {
                results[i] = r;
                done[i] = true;
            });
        }
        CHECK(sink->pending() == 3);
        REQUIRE(wait_until(
            [&] {
                sink->poll(50);
                return sink->pending() == 0;
            },
            std::chrono::seconds(10)));
        CHECK(done == std::vector<bool>{true, true, true});
        CHECK(results[0].outcome == Outcome::success);
        CHECK(results[1].outcome == Outcome::permanent);
        CHECK(contains(results[1].error, "redis: XADD to not-a-stream: WRONGTYPE"));
        CHECK(results[2].outcome == Outcome::success);
        auto entries = client.read_all("good");
        REQUIRE(entries.size() == 2);
        CHECK(field(entries[0], "outbox-id") == "w-0");
        CHECK(field(entries[1], "outbox-id") == "w-2");
    }
    SECTION("OOM (maxmemory reached) is retryable: back-pressure") {
        REQUIRE(client.command({"CONFIG", "SET", "maxmemory", "1"})->type == REDIS_REPLY_STATUS);
        Result r = publish_one(*sink, simple_message("oom-1", "good"));
        CHECK(r.outcome == Outcome::retry);
        CHECK(contains(r.error, "redis: XADD to good: OOM"));
        REQUIRE(client.command({"CONFIG", "SET", "maxmemory", "0"})->type == REDIS_REPLY_STATUS);
        CHECK(publish_one(*sink, simple_message("oom-1", "good")).outcome == Outcome::success);
        CHECK(client.xlen("good") == 1);
    }
    CHECK(sink->connected());
}

TEST_CASE("Redis sink: a reply that does not come in time fails it and everything behind it",
          "[broker][redis]") {
    RedisServer server;
    auto sink = redis_sink(server.url(), 500);
    REQUIRE(publish_one(*sink, simple_message("t-0", "timeouts")).outcome == Outcome::success);

    server.pause();
    auto started = Clock::now();
    std::vector<Result> results;
    for (int i = 1; i <= 10; ++i) {
        sink->publish(simple_message("t-" + std::to_string(i), "timeouts"),
                      [&](Result r) { results.push_back(r); });
    }
    // The deadline wakes wait_fd() (its timerfd), though the server sends nothing.
    struct pollfd pfd = {sink->wait_fd(), POLLIN, 0};
    CHECK(::poll(&pfd, 1, 3000) == 1);
    CHECK(Clock::now() - started >= std::chrono::milliseconds(450));
    sink->poll(0);
    REQUIRE(results.size() == 10);
    auto elapsed = Clock::now() - started;
    CHECK(elapsed < std::chrono::seconds(5));
    for (const auto& r : results) {
        CHECK(r.outcome == Outcome::retry);
        CHECK(contains(r.error, "redis: XADD to timeouts: no reply within 500 ms; connection to "
                                "redis://127.0.0.1:"));
    }
    CHECK(sink->pending() == 0);
    CHECK_FALSE(sink->connected()); // dropped: late replies could not be matched any more

    server.resume();
    // Reconnects after the backoff; the server executed the commands it had received, so the
    // re-publications add repeats, which a consumer drops by outbox-id.
    for (int i = 1; i <= 10; ++i) {
        auto m = simple_message("t-" + std::to_string(i), "timeouts");
        REQUIRE(wait_until([&] { return publish_one(*sink, m).outcome == Outcome::success; },
                           std::chrono::seconds(10)));
    }
    // The paused server executed the ten commands it had received once it ran again (the
    // connection's end came after them), and the sink could not know: each is in the stream
    // twice, and a consumer keeps the first of each outbox-id.
    RedisClient client(server);
    auto entries = client.read_all("timeouts");
    std::map<std::string, int> copies;
    for (const auto& e : entries) {
        ++copies[field(e, "outbox-id")];
    }
    CHECK(copies.size() == 11);
    CHECK(copies["t-0"] == 1);
    for (int i = 1; i <= 10; ++i) {
        CHECK(copies["t-" + std::to_string(i)] == 2);
    }
}

TEST_CASE("Redis sink: publications in flight when the connection breaks fail at once",
          "[broker][redis]") {
    RedisServer server;
    auto sink = redis_sink(server.url(), 20000);
    REQUIRE(publish_one(*sink, simple_message("c-0", "crashes")).outcome == Outcome::success);

    // A server that takes the commands and answers nothing, then dies: the replies cannot come
    // any more, and the sink says so when it reads the end of the connection, not after the
    // 20 s timeout.
    server.pause();
    std::vector<Result> results;
    for (int i = 1; i <= 10; ++i) {
        sink->publish(simple_message("c-" + std::to_string(i), "crashes"),
                      [&](Result r) { results.push_back(r); });
    }
    sink->poll(0);
    CHECK(results.empty());
    server.kill();
    struct pollfd pfd = {sink->wait_fd(), POLLIN, 0};
    CHECK(::poll(&pfd, 1, 5000) == 1); // the socket's end wakes wait_fd()
    REQUIRE(wait_until(
        [&] {
            sink->poll(50);
            return results.size() == 10;
        },
        std::chrono::seconds(10)));
    for (const auto& r : results) {
        CHECK(r.outcome == Outcome::retry);
        CHECK(contains(r.error, "redis: XADD to crashes: connection to " + server.url() + " lost"));
    }
    CHECK(sink->pending() == 0);
    CHECK_FALSE(sink->connected());

    server.start();
    for (int i = 1; i <= 10; ++i) {
        auto m = simple_message("c-" + std::to_string(i), "crashes");
        REQUIRE(wait_until([&] { return publish_one(*sink, m).outcome == Outcome::success; },
                           std::chrono::seconds(15)));
    }
    RedisClient client(server);
    CHECK(client.xlen("crashes") == 11);
}

TEST_CASE("Redis sink: AUTH and SELECT from the URL", "[broker][redis]") {
    RedisServerOptions with_password;
    with_password.password = "s3cret";
    RedisServer server(with_password);
    SECTION("the right password, database 3") {
        auto sink = redis_sink(server.url(3), 5000);
        CHECK_FALSE(sink->check(5000));
        CHECK(publish_one(*sink, simple_message("a-1", "authed")).outcome == Outcome::success);
        RedisClient db3(server, 3, "s3cret");
        CHECK(db3.xlen("authed") == 1);
        RedisClient db0(server, 0, "s3cret");
        CHECK(db0.xlen("authed") == 0);
    }
    SECTION("a wrong password") {
        std::string url = "redis://:wrong@127.0.0.1:" + std::to_string(server.port()) + "/0";
        auto sink = redis_sink(url, 5000);
        auto problem = sink->check(5000);
        REQUIRE(problem);
        CHECK(contains(*problem, "AUTH: WRONGPASS"));
        CHECK_FALSE(contains(*problem, "wrong@"));
        Result r = publish_one(*sink, simple_message("a-2", "authed"));
        CHECK(r.outcome == Outcome::retry);
        CHECK(contains(r.error, "redis: not connected to redis://127.0.0.1:"));
        CHECK(contains(r.error, "AUTH: WRONGPASS"));
    }
    SECTION("no password") {
        std::string url = "redis://127.0.0.1:" + std::to_string(server.port());
        auto sink = redis_sink(url, 5000);
        Result r = publish_one(*sink, simple_message("a-3", "authed"));
        INFO(r.error);
        // The server wants a password (NOAUTH; for a command with as many arguments as this
        // XADD, Redis 7 says "unauthenticated multibulk length" instead): the configuration is
        // wrong, not the event.
        CHECK(r.outcome == Outcome::retry);
        CHECK((contains(r.error, "NOAUTH") || contains(r.error, "unauthenticated")));
    }
}

TEST_CASE("Redis sink: check() and publications against live and dead servers", "[broker][redis]") {
    SECTION("live") {
        RedisServer server;
        auto sink = redis_sink(server.url(), 5000);
        CHECK_FALSE(sink->check(5000));
        CHECK(sink->connected());
    }
    SECTION("nothing listening") {
        int port = free_tcp_port();
        std::string where = "redis://127.0.0.1:" + std::to_string(port) + "/0";
        auto sink = redis_sink(where, 5000);
        auto problem = sink->check(2000);
        REQUIRE(problem);
        CHECK(contains(*problem, "redis: cannot connect to " + where + ": Connection refused"));

        auto started = Clock::now();
        Result r = publish_one(*sink, simple_message("dead-1", "s"));
        CHECK(Clock::now() - started < std::chrono::seconds(1));
        CHECK(r.outcome == Outcome::retry);
        CHECK(contains(r.error, "redis: not connected to " + where + ": "));
        CHECK(contains(r.error, "; next attempt in "));
        CHECK(r.retry_after_ms > 0);
        CHECK(r.retry_after_ms <= outbox::kSinkReconnectMaxMs);
        CHECK_FALSE(sink->connected());
        CHECK(sink->pending() == 0);
    }
    SECTION("an invalid URL is permanent") {
        auto sink = redis_sink("redis://host:notaport", 5000);
        Result r = publish_one(*sink, simple_message("bad-1", "s"));
        CHECK(r.outcome == Outcome::permanent);
        CHECK(contains(r.error, "redis: invalid URL: invalid port"));
        CHECK(sink->check(1000));
    }
}

TEST_CASE("Redis URL: redis://[[user]:password@]host[:port][/db]", "[broker][redis]") {
    std::string error;
    auto plain = outbox::parse_redis_url("redis://localhost", error);
    REQUIRE(plain);
    CHECK(plain->host == "localhost");
    CHECK(plain->port == 6379);
    CHECK(plain->db == 0);
    CHECK_FALSE(plain->password);
    CHECK_FALSE(plain->user);

    auto full = outbox::parse_redis_url("redis://:p%40ss@10.0.0.1:6380/2", error);
    REQUIRE(full);
    CHECK(full->host == "10.0.0.1");
    CHECK(full->port == 6380);
    CHECK(full->db == 2);
    CHECK(full->password == "p@ss");
    CHECK_FALSE(full->user);

    auto acl = outbox::parse_redis_url("redis://app:secret@[::1]:7000/", error);
    REQUIRE(acl);
    CHECK(acl->host == "::1");
    CHECK(acl->port == 7000);
    CHECK(acl->user == "app");
    CHECK(acl->password == "secret");

    auto bare = outbox::parse_redis_url("redis://secret@h", error);
    REQUIRE(bare);
    CHECK(bare->password == "secret");

    for (const char* bad : {"http://h", "redis://", "redis://h:0", "redis://h:70000", "redis://h:",
                            "redis://h/x", "redis://h/-1", "redis://[::1", "redis://:%zz@h"}) {
        INFO(bad);
        error.clear();
        CHECK_FALSE(outbox::parse_redis_url(bad, error));
        CHECK_FALSE(error.empty());
    }
}

// The child process of the measurement below: with OUTBOX_RSS_SINK_URL set, publishes 2,000
// messages through one sink (128 in flight) and prints its VmHWM; with the variable empty, prints
// the VmHWM of the same process without a sink (the baseline).
TEST_CASE("Redis sink: peak RSS child", "[.][rss-child]") {
    const char* url = std::getenv("OUTBOX_RSS_SINK_URL");
    if (url == nullptr) {
        return; // only as the child of the measurement
    }
    if (*url != '\0') {
        auto sink = redis_sink(url, 10000);
        auto messages = make_messages(2000, 2000, "orders");
        RunStats stats = publish_all(*sink, messages, 128, std::chrono::seconds(60));
        REQUIRE(stats.succeeded == messages.size());
    }
    std::printf("VmHWM %ld\n", vm_hwm_kib());
}

// The figures for docs/PERFORMANCE.md, measured only when asked for (ctest's test list includes
// hidden tests, so the tag alone would not keep it out of `make test`):
//     OUTBOX_MEASURE_SINKS=1 build/integration-tests "[measure][redis]"
// Throughput: 50,000 messages through one sink, 128 in flight, in this process. Peak RSS: a child
// process (this binary again) holding one connection, against the same child without a sink.
TEST_CASE("Redis sink: throughput and peak RSS", "[.][measure][redis]") {
    if (std::getenv("OUTBOX_MEASURE_SINKS") == nullptr) {
        return;
    }
    auto throughput = [](const std::string& appendfsync) {
        RedisServerOptions options;
        options.appendfsync = appendfsync;
        RedisServer server(options);
        auto sink = redis_sink(server.url(), 10000);
        auto messages = make_messages(50000, 50000, "orders");
        auto started = Clock::now();
        RunStats stats = publish_all(*sink, messages, 128, std::chrono::seconds(300));
        double seconds = std::chrono::duration<double>(Clock::now() - started).count();
        REQUIRE(stats.succeeded == messages.size());
        return static_cast<long>(messages.size() / seconds);
    };
    long always = throughput("always");
    long everysec = throughput("everysec");

    RedisServer server;
    auto child_hwm = [&](const std::string& url) {
        SpawnOptions spawn;
        spawn.args = {"Redis sink: peak RSS child"};
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
    WARN("Redis sink: 50000 messages (138-byte bodies), 128 in flight: "
         << always << " messages/s with appendfsync always, " << everysec
         << " with appendfsync everysec. Peak RSS (VmHWM) of a process with one sink after "
            "2,000 messages: "
         << with_sink << " KiB; the same process without a sink: " << baseline << " KiB");
}
