// The `nats` handler kind (SPEC 4, "Message brokers"): JetStream publications through the NATS C
// client (libnats), with asynchronous acknowledgements.
//
// One natsConnection and one JetStream context per sink, opened on the first publish() in the
// handler process (the client starts threads, which must not exist before fork()). A publication
// is a js_PublishMsgAsync: the message leaves at once and the stream's PubAck arrives later on
// the client's own thread, in the ack handler below. That handler only queues the outcome under a
// mutex and signals an eventfd (wait_fd()); poll() runs the Dones on the caller's thread, as
// worker/sink.h requires.
//
// Deduplication: every message carries Nats-Msg-Id = the Outbox id. A stream drops a second
// message with an id it has seen within its duplicate window (two minutes unless the stream says
// otherwise) and acknowledges it as a duplicate, so a re-publication after a lost acknowledgement
// (a timeout, a connection lost while waiting, a handler process that crashed between publish and
// record) is stored once. Past the window, a consumer drops repeats by the outbox-id header.
//
// Connections: the first connection is ours to make, with the capped backoff of worker/sink.h
// while it fails. Once connected, the client reconnects by itself; a custom reconnect delay gives
// it the same backoff. While the connection is down, publish() fails at once (retryable) instead
// of letting the client buffer the message for later, and the publications that were waiting for
// their acknowledgement when the connection dropped fail retryably as soon as the client reports
// the disconnection: their PubAcks, if the server sent any, went to the dead connection.
#include "common/backoff.h"
#include "common/fd.h"
#include "worker/sink.h"

#include <nats/nats.h>
#include <poll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace outbox {

namespace {

using Clock = std::chrono::steady_clock;

// How long publish() may block opening the first connection (bounded further by the
// publication timeout), as worker/sink.h allows.
constexpr long kConnectTimeoutMs = 3000;
// The client's limit of publications awaiting a PubAck. The handler process keeps about 128 in
// flight; the margin is for publications this sink already failed (a timeout, a lost
// connection) whose entries the client keeps until its own MaxWait expires. Reaching the limit
// would make js_PublishMsgAsync block (StallWait), which a sink must not do.
constexpr int64_t kMaxPendingAcks = 65536;
// How long the stream lookup that classifies "no responders" may block poll() (a local JetStream
// answers in well under a millisecond, a remote one in a round trip), and how long its verdict
// is reused: a burst of such failures usually shares its subject, and a JetStream that does not
// answer must not cost a full lookup timeout per failure.
constexpr long kStreamLookupTimeoutMs = 1000;
constexpr auto kStreamLookupReuse = std::chrono::seconds(1);

long ms_until(Clock::time_point when, Clock::time_point now) {
    if (when <= now) {
        return 0;
    }
    // Rounded up, so that a wait of this length does not wake up just before `when`.
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(when - now).count();
    return static_cast<long>((us + 999) / 1000);
}

// The client's description of the last error on this thread, else the status's own text. The
// client puts the place in its source first, "(conn.c:2088): No server available for
// connection", which says nothing to an operator: that part goes.
std::string error_text(natsStatus status) {
    const char* text = nats_GetLastError(nullptr);
    if (text == nullptr || *text == '\0') {
        return natsStatus_GetText(status);
    }
    std::string_view view(text);
    if (view.front() == '(') {
        size_t end = view.find("): ");
        if (end != std::string_view::npos) {
            view.remove_prefix(end + 3);
        }
    }
    return std::string(view);
}

// The URL without its password (or token), for error texts that end up in the database.
std::string masked_url(const std::string& url) {
    size_t scheme = url.find("://");
    size_t start = scheme == std::string::npos ? 0 : scheme + 3;
    size_t end = url.find_first_of("/?#", start);
    size_t at = url.rfind('@', end == std::string::npos ? url.size() : end);
    if (at == std::string::npos || at < start) {
        return url;
    }
    size_t colon = url.find(':', start);
    if (colon != std::string::npos && colon < at) {
        return url.substr(0, colon + 1) + "***" + url.substr(at);
    }
    return url.substr(0, start) + "***" + url.substr(at);
}

// Header values come from the database; a control character must not end the header line.
std::string header_safe(std::string_view value) {
    std::string out(value);
    for (char& c : out) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
            c = ' ';
        }
    }
    return out;
}

// Why `subject` cannot be published to, or nullopt. The client sends the subject as it is, and
// the server parses the protocol line by whitespace: a subject with a space or a line break
// (from an event type that has one) would be read as other fields, or break the connection for
// every publication in flight. Wildcards and empty tokens are not subjects one can publish to.
std::optional<std::string> subject_problem(std::string_view subject) {
    if (subject.empty()) {
        return "the subject is empty";
    }
    for (char c : subject) {
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7F) {
            return "the subject contains whitespace or a control character";
        }
    }
    size_t start = 0;
    for (;;) {
        size_t dot = subject.find('.', start);
        std::string_view token = subject.substr(start, dot - start);
        if (token.empty()) {
            return "the subject has an empty token";
        }
        if (token == "*" || token == ">") {
            return "the subject has a wildcard token";
        }
        if (dot == std::string_view::npos) {
            return std::nullopt;
        }
        start = dot + 1;
    }
}

// What the client's threads hand over to the sink's thread.
struct Completion {
    uint64_t seq = 0;
    natsStatus status = NATS_OK; // NATS_OK: a PubAck
    jsErrCode code = static_cast<jsErrCode>(0);
    std::string text;
};

// The part of a sink that the client's threads see, behind a mutex.
struct Shared {
    std::mutex mutex;
    // Messages the client owns and has not answered yet, to the sequence number of their
    // publication. A message stays alive until the ack handler destroys it, so its address
    // identifies it until then.
    std::unordered_map<const natsMsg*, uint64_t> in_flight;
    std::vector<Completion> completions;
    // Counts the disconnections the client reported: a publication started in an earlier epoch
    // lost its acknowledgement with the connection.
    uint64_t epoch = 0;
    // When the client's next reconnection attempt is due (set by the reconnect-delay callback).
    Clock::time_point next_reconnect{};
    Backoff reconnect_backoff{
        BackoffPolicy{kSinkReconnectInitialMs, kSinkReconnectMaxMs, 2.0, 0.1}};
    UniqueFd event{eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};

    void signal() {
        uint64_t one = 1;
        // Only fails when the counter is about to overflow, which means it is readable anyway.
        [[maybe_unused]] ssize_t n = ::write(event.get(), &one, sizeof one);
    }
    void drain() {
        uint64_t count = 0;
        [[maybe_unused]] ssize_t n = ::read(event.get(), &count, sizeof count);
    }
};

// The client's callbacks get a closure pointer and may run after the sink is gone: the client
// delivers PubAcks on a detached thread and posts connection events asynchronously, with no way
// to wait for the last one. So the closure is not the sink but a number, looked up here; a sink
// removes its number when it is destroyed, after which its callbacks find nothing and only free
// the message. The registry itself is never destroyed (it is reachable from a static pointer),
// so a callback running during exit() does not touch a destroyed map.
class CallbackRegistry {
  public:
    static CallbackRegistry& instance() {
        static auto* registry = new CallbackRegistry;
        return *registry;
    }

    void* add(std::shared_ptr<Shared> shared) {
        std::lock_guard lock(mutex_);
        uintptr_t id = next_id_++;
        entries_.emplace(id, std::move(shared));
        return reinterpret_cast<void*>(id);
    }
    std::shared_ptr<Shared> find(void* closure) {
        std::lock_guard lock(mutex_);
        auto it = entries_.find(reinterpret_cast<uintptr_t>(closure));
        return it == entries_.end() ? nullptr : it->second;
    }
    void remove(void* closure) {
        std::lock_guard lock(mutex_);
        entries_.erase(reinterpret_cast<uintptr_t>(closure));
    }

  private:
    std::mutex mutex_;
    uintptr_t next_id_ = 1;
    std::unordered_map<uintptr_t, std::shared_ptr<Shared>> entries_;
};

// The callbacks run on the client's threads: they only queue and signal. No exception may leave
// them (they are called from C); losing a completion to an allocation failure costs a timeout.
void on_pub_ack(jsCtx*, natsMsg* msg, jsPubAck* ack, jsPubAckErr* error, void* closure) {
    try {
        if (auto shared = CallbackRegistry::instance().find(closure)) {
            Completion completion;
            if (ack == nullptr && error != nullptr) {
                completion.status = error->Err == NATS_OK ? NATS_ERR : error->Err;
                completion.code = error->ErrCode;
                completion.text = error->ErrText != nullptr ? error->ErrText : "";
            }
            std::lock_guard lock(shared->mutex);
            auto it = shared->in_flight.find(msg);
            // Not found: the sink already failed this publication (timeout, lost connection).
            if (it != shared->in_flight.end()) {
                completion.seq = it->second;
                shared->in_flight.erase(it);
                shared->completions.push_back(std::move(completion));
                shared->signal();
            }
        }
    } catch (...) {
    }
    // With an ack handler, the application owns the message from here on.
    natsMsg_Destroy(msg);
}

void on_disconnected(natsConnection*, void* closure) {
    if (auto shared = CallbackRegistry::instance().find(closure)) {
        std::lock_guard lock(shared->mutex);
        ++shared->epoch;
        shared->signal();
    }
}

// Reconnections and the final close change connected(); wake the caller so it looks.
void on_connection_event(natsConnection*, void* closure) {
    if (auto shared = CallbackRegistry::instance().find(closure)) {
        shared->signal();
    }
}

// The client's reconnection loop asks for its delay before attempt `attempts` (1, 2, ...): the
// sinks' common backoff, recorded so that publish() can say when the next attempt is due.
int64_t reconnect_delay(natsConnection*, int attempts, void* closure) {
    auto shared = CallbackRegistry::instance().find(closure);
    if (!shared) {
        return kSinkReconnectMaxMs;
    }
    std::lock_guard lock(shared->mutex);
    long delay = shared->reconnect_backoff.delay_ms(attempts);
    shared->next_reconnect = Clock::now() + std::chrono::milliseconds(delay);
    return delay;
}

class NatsSink final : public Sink {
  public:
    explicit NatsSink(NatsSinkOptions options)
        : options_(std::move(options)), where_(masked_url(options_.url)),
          shared_(std::make_shared<Shared>()), closure_(CallbackRegistry::instance().add(shared_)) {
    }

    ~NatsSink() override {
        // From here on the callbacks find nothing. Pending publications get no callback.
        CallbackRegistry::instance().remove(closure_);
        close_connection();
    }

    NatsSink(const NatsSink&) = delete;
    NatsSink& operator=(const NatsSink&) = delete;

    void publish(const BrokerMessage& message, Done done) override;
    void poll(int timeout_ms) override;
    [[nodiscard]] size_t pending() const override { return pending_.size(); }
    [[nodiscard]] int wait_fd() const override { return shared_->event.get(); }
    [[nodiscard]] bool connected() const override {
        return nc_ != nullptr && natsConnection_Status(nc_) == NATS_CONN_STATUS_CONNECTED;
    }
    [[nodiscard]] std::optional<std::string> check(long timeout_ms) override;

  private:
    struct Pending {
        Done done;
        std::string subject;
        Clock::time_point deadline;
        uint64_t epoch = 0;
        const natsMsg* msg = nullptr; // its key in Shared::in_flight
    };
    enum class StreamLookup { found, none, unavailable };

    bool connect_now(long timeout_ms);
    void close_connection();
    std::optional<std::string> not_connected();
    // Also records next_attempt_ms_ for the Result.
    std::string not_connected_text(long next_attempt_ms);
    Result publish_error(natsStatus status, const std::string& subject, size_t size);
    Result classify(const Completion& completion, const std::string& subject);
    StreamLookup lookup_stream(const std::string& subject, std::string& detail);

    NatsSinkOptions options_;
    std::string where_; // the URL without its password
    std::shared_ptr<Shared> shared_;
    void* closure_;
    natsConnection* nc_ = nullptr;
    jsCtx* js_ = nullptr;

    // Publications awaiting their outcome, by sequence number: the order they were started in.
    std::map<uint64_t, Pending> pending_;
    uint64_t next_seq_ = 1;

    // Our own attempts at the first connection (the client reconnects by itself afterwards).
    Backoff connect_backoff_{BackoffPolicy{kSinkReconnectInitialMs, kSinkReconnectMaxMs, 2.0, 0.1}};
    int failed_connects_ = 0;
    Clock::time_point next_connect_{};
    std::string last_error_;
    long next_attempt_ms_ = 0; // as of the last not_connected_text()

    // Recent stream lookups by subject (see classify()).
    struct Lookup {
        StreamLookup verdict = StreamLookup::unavailable;
        std::string detail;
        Clock::time_point expires;
    };
    std::map<std::string, Lookup> lookups_;
};

bool NatsSink::connect_now(long timeout_ms) {
    close_connection();
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) {
        s = natsOptions_SetURL(opts, options_.url.c_str());
    }
    if (s == NATS_OK) {
        s = natsOptions_SetTimeout(opts, std::max(1L, timeout_ms));
    }
    if (s == NATS_OK) {
        s = natsOptions_SetName(opts, "outbox-worker");
    }
    if (s == NATS_OK) {
        // Reconnect for ever: the sink's life is the handler process's, and a broker that is
        // away for a long time costs retryable attempts, not a sink that stopped trying.
        s = natsOptions_SetMaxReconnect(opts, -1);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetCustomReconnectDelay(opts, reconnect_delay, closure_);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, closure_);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetReconnectedCB(opts, on_connection_event, closure_);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetClosedCB(opts, on_connection_event, closure_);
    }
    if (s == NATS_OK) {
        // A half-open connection (a peer that vanished without closing) shows up after two
        // unanswered pings instead of the default two minutes each.
        s = natsOptions_SetPingInterval(opts, 10000);
    }
    if (s == NATS_OK) {
        s = natsOptions_SetMaxPingsOut(opts, 2);
    }
    if (s == NATS_OK) {
        s = natsConnection_Connect(&nc_, opts);
        if (s != NATS_OK) {
            nc_ = nullptr;
        }
    }
    if (s == NATS_OK) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = std::max(1L, options_.timeout_ms);
        jo.PublishAsync.MaxPending = kMaxPendingAcks;
        jo.PublishAsync.AckHandler = on_pub_ack;
        jo.PublishAsync.AckHandlerClosure = closure_;
        s = natsConnection_JetStream(&js_, nc_, &jo);
        if (s != NATS_OK) {
            js_ = nullptr;
        }
    }
    std::string error = s == NATS_OK ? std::string() : error_text(s);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        close_connection();
        last_error_ = error;
        ++failed_connects_;
        next_connect_ =
            Clock::now() + std::chrono::milliseconds(connect_backoff_.delay_ms(failed_connects_));
        return false;
    }
    failed_connects_ = 0;
    last_error_.clear();
    return true;
}

void NatsSink::close_connection() {
    if (js_ != nullptr) {
        jsCtx_Destroy(js_);
        js_ = nullptr;
    }
    if (nc_ != nullptr) {
        natsConnection_Destroy(nc_);
        nc_ = nullptr;
    }
}

std::string NatsSink::not_connected_text(long next_attempt_ms) {
    next_attempt_ms_ = next_attempt_ms;
    std::string text = "nats: not connected to " + where_ + ": " +
                       (last_error_.empty() ? std::string("connection lost") : last_error_);
    if (next_attempt_ms > 0) {
        text += "; next attempt in " + std::to_string(next_attempt_ms) + " ms";
    } else {
        text += "; reconnecting now";
    }
    return text;
}

// nullopt when the connection is up (opening it first when it is time to); else why not.
std::optional<std::string> NatsSink::not_connected() {
    auto now = Clock::now();
    if (nc_ != nullptr) {
        natsConnStatus status = natsConnection_Status(nc_);
        if (status == NATS_CONN_STATUS_CONNECTED) {
            return std::nullopt;
        }
        if (status != NATS_CONN_STATUS_CLOSED) {
            // The client is reconnecting (with the delays of reconnect_delay above). Publishing
            // now would only fill its reconnect buffer with messages whose outcome arrives, at
            // best, after the reconnection: fail at once instead, retryably.
            Clock::time_point next;
            {
                std::lock_guard lock(shared_->mutex);
                next = shared_->next_reconnect;
            }
            last_error_ = "connection lost";
            return not_connected_text(ms_until(next, now));
        }
        // Closed for good (it does not happen with unlimited reconnects, but the client may
        // still give up, for instance on an authorization error): start over with our own
        // connection attempts.
        close_connection();
        last_error_ = "connection closed";
        ++failed_connects_;
        next_connect_ =
            now + std::chrono::milliseconds(connect_backoff_.delay_ms(failed_connects_));
    }
    if (now < next_connect_) {
        return not_connected_text(ms_until(next_connect_, now));
    }
    if (connect_now(std::min(kConnectTimeoutMs, std::max(1L, options_.timeout_ms)))) {
        return std::nullopt;
    }
    return not_connected_text(ms_until(next_connect_, Clock::now()));
}

Result NatsSink::publish_error(natsStatus status, const std::string& subject, size_t size) {
    std::string where = "nats: publish to " + subject + ": ";
    switch (status) {
    case NATS_MAX_PAYLOAD:
        // The server's max_payload bounds every message on the connection: the same message
        // will never fit.
        return Result::permanent(where + "message of " + std::to_string(size) +
                                 " bytes exceeds the server's maximum payload (" +
                                 std::to_string(nc_ ? natsConnection_GetMaxPayload(nc_) : 0) +
                                 " bytes)");
    case NATS_INVALID_SUBJECT:
    case NATS_INVALID_ARG:
        return Result::permanent(where + "invalid subject: " + error_text(status));
    case NATS_TIMEOUT:
        return Result::retry(
            where + "too many publications awaiting acknowledgement: " + error_text(status));
    default:
        return Result::retry(where + error_text(status));
    }
}

void NatsSink::publish(const BrokerMessage& message, Done done) {
    const std::string& subject = message.destination;
    if (auto problem = subject_problem(subject)) {
        done(Result::permanent("nats: publish to " + header_safe(subject) +
                               ": invalid subject: " + *problem));
        return;
    }
    if (message.body.size() > static_cast<size_t>(INT_MAX)) {
        done(publish_error(NATS_MAX_PAYLOAD, subject, message.body.size()));
        return;
    }
    if (auto why = not_connected()) {
        // No use retrying before the next connection attempt: say when that is.
        done(Result::retry(*why, next_attempt_ms_));
        return;
    }
    natsMsg* msg = nullptr;
    natsStatus s = natsMsg_Create(&msg, subject.c_str(), nullptr, message.body.data(),
                                  static_cast<int>(message.body.size()));
    for (const auto& [name, value] : message.headers) {
        if (s == NATS_OK) {
            s = natsMsgHeader_Set(msg, name.c_str(), header_safe(value).c_str());
        }
    }
    if (s == NATS_OK) {
        s = natsMsgHeader_Set(msg, "Content-Type", header_safe(message.content_type).c_str());
    }
    if (s != NATS_OK) {
        Result result = publish_error(s, subject, message.body.size());
        natsMsg_Destroy(msg);
        done(std::move(result));
        return;
    }

    jsPubOptions po;
    jsPubOptions_Init(&po);
    std::string msg_id = header_safe(message.id);
    po.MsgId = msg_id.c_str(); // the Nats-Msg-Id header
    // The client's own timeout for this PubAck. The sink enforces the same deadline itself (in
    // poll()); the client's timer also wakes wait_fd() when it expires and lets the client
    // forget the message.
    po.MaxWait = std::max(1L, options_.timeout_ms);

    uint64_t seq = next_seq_++;
    const natsMsg* key = msg;
    uint64_t epoch = 0;
    {
        // Registered before the publication: the PubAck can arrive before js_PublishMsgAsync
        // returns.
        // insert_or_assign: an entry left behind by a connection that was destroyed with
        // messages in flight may carry the address of this new message.
        std::lock_guard lock(shared_->mutex);
        shared_->in_flight.insert_or_assign(key, seq);
        epoch = shared_->epoch;
    }
    pending_.emplace(seq, Pending{std::move(done), subject,
                                  Clock::now() + std::chrono::milliseconds(options_.timeout_ms),
                                  epoch, key});
    s = js_PublishMsgAsync(js_, &msg, &po);
    if (s != NATS_OK) {
        // The client did not take the message, and will not call back for it.
        {
            std::lock_guard lock(shared_->mutex);
            shared_->in_flight.erase(key);
        }
        Result result = publish_error(s, subject, message.body.size());
        natsMsg_Destroy(msg);
        auto node = pending_.extract(seq);
        node.mapped().done(std::move(result));
    }
}

NatsSink::StreamLookup NatsSink::lookup_stream(const std::string& subject, std::string& detail) {
    if (js_ == nullptr) {
        detail = "not connected";
        return StreamLookup::unavailable;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = std::min(kStreamLookupTimeoutMs, std::max(1L, options_.timeout_ms));
    jo.Stream.Info.SubjectsFilter = subject.c_str();
    jsStreamNamesList* list = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_StreamNames(&list, js_, &jo, &code);
    if (s == NATS_OK) {
        detail = list != nullptr && list->Count > 0 ? list->List[0] : "";
        jsStreamNamesList_Destroy(list);
        return StreamLookup::found;
    }
    if (s == NATS_NOT_FOUND) {
        return StreamLookup::none;
    }
    detail = error_text(s);
    return StreamLookup::unavailable;
}

Result NatsSink::classify(const Completion& completion, const std::string& subject) {
    std::string where = "nats: publish to " + subject + ": ";
    switch (completion.status) {
    case NATS_OK:
        // The PubAck: the stream stored the message (or had stored it already: a duplicate).
        return Result::ok();
    case NATS_TIMEOUT:
        return Result::retry(where + "no acknowledgement within " +
                             std::to_string(options_.timeout_ms) + " ms");
    case NATS_NO_RESPONDERS: {
        // Nothing was subscribed to the subject when the server routed the publication. Two
        // causes look alike here: no stream captures the subject, which is a configuration
        // error that no retry fixes (permanent); or JetStream has not finished starting (just
        // after a server restart it can take a moment before streams are recovered and listen
        // again), which passes (retry). The JetStream API tells them apart: asked for the
        // streams that capture the subject, it answers "none" only in the first case, and does
        // not answer at all (no responders, timeout) while JetStream is not ready. A stream
        // found now means it appeared (or came back) since: retry.
        auto now = Clock::now();
        auto it = lookups_.find(subject);
        if (it == lookups_.end() || it->second.expires <= now) {
            if (lookups_.size() > 1000) {
                lookups_.clear(); // subjects from event types: bounded, but not by us
            }
            Lookup fresh;
            fresh.verdict = lookup_stream(subject, fresh.detail);
            fresh.expires = Clock::now() + kStreamLookupReuse;
            it = lookups_.insert_or_assign(subject, std::move(fresh)).first;
        }
        const StreamLookup verdict = it->second.verdict;
        const std::string detail = it->second.detail;
        if (verdict == StreamLookup::none) {
            return Result::permanent(where + "no responders: no JetStream stream captures the "
                                             "subject (is there a stream for the subject?)");
        }
        if (verdict == StreamLookup::found) {
            return Result::retry(where + "no responders although stream " + detail +
                                 " captures the subject (stream not ready yet?)");
        }
        return Result::retry(where + "no responders, and JetStream does not answer (" + detail +
                             "): JetStream not ready or not enabled");
    }
    case NATS_ERR: {
        std::string reason = completion.text + " (err_code " +
                             std::to_string(static_cast<int>(completion.code)) + ")";
        switch (completion.code) {
        // What the stream rejects for good: a message larger than its max_msg_size, a stream
        // that is gone or sealed. Anything else the stream answers (its limits reached with
        // DiscardNew, a store failure, a cluster in transition) may pass: retry.
        case JSStreamMessageExceedsMaximumErr:
        case JSStreamNotFoundErr:
        case JSStreamSealedErr:
            return Result::permanent(where + "rejected by the stream: " + reason);
        default:
            return Result::retry(where + "rejected by the stream: " + reason);
        }
    }
    default:
        return Result::retry(where + (completion.text.empty()
                                          ? natsStatus_GetText(completion.status)
                                          : completion.text));
    }
}

void NatsSink::poll(int timeout_ms) {
    auto until = Clock::now() + std::chrono::milliseconds(std::max(0, timeout_ms));
    std::vector<std::pair<Done, Result>> ready;
    for (;;) {
        shared_->drain();
        std::vector<Completion> completions;
        uint64_t epoch = 0;
        {
            std::lock_guard lock(shared_->mutex);
            completions.swap(shared_->completions);
            epoch = shared_->epoch;
        }
        for (const Completion& completion : completions) {
            auto node = pending_.extract(completion.seq);
            if (!node.empty()) {
                Result result = classify(completion, node.mapped().subject);
                ready.emplace_back(std::move(node.mapped().done), std::move(result));
            }
        }

        // Publications whose acknowledgement cannot come any more (the connection they were
        // sent on is gone) or did not come in time fail retryably. Their messages stay with the
        // client until its MaxWait; a late PubAck then finds nothing to complete. Re-publishing
        // them is safe: the stream drops the copy by its Nats-Msg-Id.
        auto now = Clock::now();
        for (auto it = pending_.begin(); it != pending_.end();) {
            Pending& p = it->second;
            std::optional<Result> failure;
            if (p.epoch < epoch) {
                failure = Result::retry("nats: publish to " + p.subject + ": connection to " +
                                        where_ + " lost before the acknowledgement");
            } else if (p.deadline <= now) {
                failure =
                    Result::retry("nats: publish to " + p.subject + ": no acknowledgement within " +
                                  std::to_string(options_.timeout_ms) + " ms");
            }
            if (failure) {
                {
                    std::lock_guard lock(shared_->mutex);
                    auto m = shared_->in_flight.find(p.msg);
                    if (m != shared_->in_flight.end() && m->second == it->first) {
                        shared_->in_flight.erase(m);
                    }
                }
                ready.emplace_back(std::move(p.done), std::move(*failure));
                it = pending_.erase(it);
            } else {
                ++it;
            }
        }

        if (!ready.empty() || pending_.empty() || now >= until) {
            break;
        }
        // Deadlines grow with the sequence number (one timeout for all), so the first pending
        // publication's is the earliest.
        Clock::time_point wake = std::min(until, pending_.begin()->second.deadline);
        long wait = ms_until(wake, now);
        struct pollfd pfd = {shared_->event.get(), POLLIN, 0};
        int rc = ::poll(&pfd, 1, static_cast<int>(std::min<long>(wait, INT_MAX)));
        if (rc < 0 && errno != EINTR) {
            break;
        }
    }
    for (auto& [done, result] : ready) {
        done(std::move(result));
    }
}

std::optional<std::string> NatsSink::check(long timeout_ms) {
    if (!connected()) {
        if (nc_ != nullptr && natsConnection_Status(nc_) != NATS_CONN_STATUS_CLOSED) {
            return not_connected();
        }
        if (!connect_now(std::max(1L, timeout_ms))) {
            return "nats: cannot connect to " + where_ + ": " + last_error_;
        }
    }
    char server_id[128] = "";
    natsConnection_GetConnectedServerId(nc_, server_id, sizeof server_id);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = std::max(1L, timeout_ms);
    jsAccountInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_GetAccountInfo(&info, js_, &jo, &code);
    if (s == NATS_OK) {
        jsAccountInfo_Destroy(info);
        return std::nullopt;
    }
    std::string server = where_ + " (server " + server_id + ")";
    if (s == NATS_NO_RESPONDERS || s == NATS_TIMEOUT) {
        return "nats: connected to " + server + ", but JetStream does not answer (" +
               error_text(s) + "): is the server running with JetStream enabled?";
    }
    if (code == JSNotEnabledForAccountErr || code == JSNotEnabledErr) {
        return "nats: connected to " + server + ", but JetStream is not enabled for the account";
    }
    return "nats: JetStream account information from " + server + " failed: " + error_text(s);
}

} // namespace

std::unique_ptr<Sink> make_nats_sink(const NatsSinkOptions& options) {
    return std::make_unique<NatsSink>(options);
}

} // namespace outbox
