// The redis handler kind end to end (tests/integration/broker_e2e.h): the service publishing to a
// throw-away redis-server, read back with hiredis's XRANGE.
#include "tests/integration/broker_e2e.h"
#include "tests/support/redis_server.h"

#include <hiredis/hiredis.h>

#include <memory>

namespace {

using namespace outbox::test;

struct ReplyDeleter {
    void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;
struct ContextDeleter {
    void operator()(redisContext* context) const { redisFree(context); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;

Context connect_to(const RedisServer& server) {
    Context context(redisConnect("127.0.0.1", server.port()));
    REQUIRE(context);
    REQUIRE(context->err == 0);
    return context;
}

class RedisUnderTest : public BrokerUnderTest {
  public:
    std::string kind() const override { return "redis"; }
    std::string sink_json() const override {
        return R"({"url": ")" + server_.url() + R"(", "stream": "outbox.${tenantId}"})";
    }
    bool deduplicates() const override { return false; }
    void stop() override { server_.stop(); }
    void start() override { server_.start(); }

    std::vector<ReceivedMessage> read_all(size_t at_least,
                                          std::chrono::milliseconds timeout) override {
        Context context = connect_to(server_);
        std::vector<ReceivedMessage> messages;
        wait_until(
            [&] {
                messages = read_stream(context.get(), "outbox.t1");
                return messages.size() >= at_least;
            },
            timeout, 200ms);
        return messages;
    }

    Rejection rejection() override {
        // A key that holds a string is no stream: XADD answers WRONGTYPE, which no retry fixes.
        Context context = connect_to(server_);
        Reply reply(static_cast<redisReply*>(redisCommand(context.get(), "SET not-a-stream x")));
        REQUIRE(reply);
        return {R"({"url": ")" + server_.url() + R"(", "stream": "not-a-stream"})", "WRONGTYPE"};
    }

  private:
    static std::vector<ReceivedMessage> read_stream(redisContext* context,
                                                    const std::string& stream) {
        std::vector<ReceivedMessage> messages;
        std::string from = "-";
        for (;;) {
            Reply reply(static_cast<redisReply*>(
                redisCommand(context, "XRANGE %s %s + COUNT 1000", stream.c_str(), from.c_str())));
            REQUIRE(reply);
            REQUIRE(reply->type == REDIS_REPLY_ARRAY);
            if (reply->elements == 0) {
                return messages;
            }
            for (size_t i = 0; i < reply->elements; ++i) {
                const redisReply* entry = reply->element[i];
                REQUIRE(entry->elements == 2);
                const redisReply* fields = entry->element[1];
                ReceivedMessage message;
                for (size_t f = 0; f + 1 < fields->elements; f += 2) {
                    std::string name(fields->element[f]->str, fields->element[f]->len);
                    std::string value(fields->element[f + 1]->str, fields->element[f + 1]->len);
                    if (name == "key") {
                        message.key = std::move(value);
                    } else if (name == "body") {
                        message.body = std::move(value);
                    } else {
                        message.headers.emplace(std::move(name), std::move(value));
                    }
                }
                messages.push_back(std::move(message));
                // The next page starts after this entry: "(" makes the bound exclusive.
                from = "(" + std::string(entry->element[0]->str, entry->element[0]->len);
            }
        }
    }

    RedisServer server_;
};

} // namespace

TEST_CASE("redis: 5,000 events through a 10 s outage, each once, in key order",
          "[broker][redis][e2e]") {
    RedisUnderTest redis;
    relay_through_outage(redis);
}

TEST_CASE("redis: a WRONGTYPE stream key dead-letters the event with Redis's reason",
          "[broker][redis][e2e]") {
    RedisUnderTest redis;
    permanent_rejection(redis);
}

TEST_CASE("redis: check-config --connect reaches the server", "[broker][redis][e2e]") {
    RedisUnderTest redis;
    check_connect(redis);
}
