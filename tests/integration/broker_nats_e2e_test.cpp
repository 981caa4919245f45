// The nats handler kind end to end (tests/integration/broker_e2e.h): the service publishing to a
// throw-away nats-server with JetStream (tests/support/nats_server.h) whose file-storage stream
// captures the subject, read back with the NATS C client's own ordered JetStream consumer.
#include "tests/integration/broker_e2e.h"
#include "tests/support/nats_server.h"

#include <nats/nats.h>

#include <cstdlib>
#include <memory>

namespace {

using namespace outbox::test;

constexpr const char* kStream = "OUTBOX";
constexpr const char* kSubjects = "outbox.>";

// A connection with its JetStream context, for setting up the stream and reading it back.
class NatsClient {
  public:
    explicit NatsClient(const NatsServer& server) {
        natsStatus s = natsConnection_ConnectTo(&nc_, server.url().c_str());
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

    // A stream on disk, with the default duplicate window (two minutes).
    void add_stream(const std::string& name, const std::string& subjects) {
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char* subjects_list[] = {subjects.c_str()};
        cfg.Name = name.c_str();
        cfg.Subjects = subjects_list;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_FileStorage;
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
        INFO(nats_GetLastError(nullptr) << " (err_code " << code << ")");
        REQUIRE(s == NATS_OK);
        uint64_t count = info->State.Msgs;
        jsStreamInfo_Destroy(info);
        return count;
    }

    struct Read {
        std::string subject;
        ReceivedMessage message;
    };

    // The first `count` messages of the stream, in stream order, through an ordered consumer.
    std::vector<Read> read(const std::string& stream, const std::string& subjects, uint64_t count) {
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = stream.c_str();
        so.Ordered = true;
        natsSubscription* sub = nullptr;
        jsErrCode code = static_cast<jsErrCode>(0);
        natsStatus s = js_SubscribeSync(&sub, js_, subjects.c_str(), nullptr, &so, &code);
        INFO(nats_GetLastError(nullptr));
        REQUIRE(s == NATS_OK);
        std::unique_ptr<natsSubscription, void (*)(natsSubscription*)> owned(
            sub, &natsSubscription_Destroy);
        std::vector<Read> out;
        uint64_t last_sequence = 0;
        while (out.size() < count) {
            natsMsg* msg = nullptr;
            s = natsSubscription_NextMsg(&msg, sub, 10000);
            INFO("read " << out.size() << " of " << count << ": " << natsStatus_GetText(s));
            REQUIRE(s == NATS_OK);
            std::unique_ptr<natsMsg, void (*)(natsMsg*)> message_owned(msg, &natsMsg_Destroy);
            ReceivedMessage message;
            message.body.assign(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
            const char** keys = nullptr;
            int key_count = 0;
            if (natsMsgHeader_Keys(msg, &keys, &key_count) == NATS_OK) {
                for (int i = 0; i < key_count; ++i) {
                    const char* value = nullptr;
                    if (natsMsgHeader_Get(msg, keys[i], &value) == NATS_OK) {
                        message.headers[keys[i]] = value;
                    }
                }
                free(static_cast<void*>(keys));
            }
            jsMsgMetaData* meta = nullptr;
            REQUIRE(natsMsg_GetMetaData(&meta, msg) == NATS_OK);
            // An ordered consumer delivers the stream in sequence order, with no gap.
            CHECK(meta->Sequence.Stream == last_sequence + 1);
            last_sequence = meta->Sequence.Stream;
            jsMsgMetaData_Destroy(meta);
            out.push_back({natsMsg_GetSubject(msg), std::move(message)});
        }
        return out;
    }

  private:
    natsConnection* nc_ = nullptr;
    jsCtx* js_ = nullptr;
};

class NatsUnderTest : public BrokerUnderTest {
  public:
    NatsUnderTest() { NatsClient(server_).add_stream(kStream, kSubjects); }

    std::string kind() const override { return "nats"; }
    std::string sink_json() const override {
        return R"({"url": ")" + server_.url() + R"(", "subject": "outbox.${eventType}"})";
    }
    // Nats-Msg-Id is the Outbox id: the stream drops a re-publication within its duplicate
    // window (two minutes, far longer than the test).
    bool deduplicates() const override { return true; }
    void stop() override { server_.stop(); }
    void start() override { server_.start(); }

    std::vector<ReceivedMessage> read_all(size_t at_least,
                                          std::chrono::milliseconds timeout) override {
        INFO(server_.describe());
        NatsClient client(server_);
        uint64_t stored = 0;
        wait_until(
            [&] {
                stored = client.stream_messages(kStream);
                return stored >= at_least;
            },
            timeout, 200ms);
        std::vector<ReceivedMessage> messages;
        // What NATS adds to the headers of broker_message.h: the dedup id and the content type.
        long wrong_msg_id = 0, wrong_content_type = 0, wrong_subject = 0;
        for (auto& [subject, message] : client.read(kStream, kSubjects, stored)) {
            auto id = message.headers.find("outbox-id");
            auto msg_id = message.headers.find("Nats-Msg-Id");
            if (id == message.headers.end() || msg_id == message.headers.end() ||
                id->second != msg_id->second) {
                ++wrong_msg_id;
            }
            auto content_type = message.headers.find("Content-Type");
            if (content_type == message.headers.end() ||
                content_type->second != "application/json") {
                ++wrong_content_type;
            }
            if (subject != "outbox.shop.price") {
                ++wrong_subject;
            }
            messages.push_back(std::move(message));
        }
        CHECK(wrong_msg_id == 0);
        CHECK(wrong_content_type == 0);
        CHECK(wrong_subject == 0);
        return messages;
    }

    Rejection rejection() override {
        // A subject no stream captures: nothing answers the publication, and JetStream,
        // asked, knows no stream for it.
        return {R"({"url": ")" + server_.url() + R"(", "subject": "nostream.${eventType}"})",
                "no JetStream stream captures the subject"};
    }

  private:
    NatsServer server_;
};

} // namespace

TEST_CASE("nats: 5,000 events through a 10 s outage, each once, in key order, no duplicate",
          "[broker][nats][e2e]") {
    NatsUnderTest nats;
    relay_through_outage(nats);
}

TEST_CASE("nats: a subject no stream captures dead-letters the event with the reason",
          "[broker][nats][e2e]") {
    NatsUnderTest nats;
    permanent_rejection(nats);
}

TEST_CASE("nats: check-config --connect reaches the server", "[broker][nats][e2e]") {
    NatsUnderTest nats;
    check_connect(nats);
}
