// The `kafka` handler kind's sink (SPEC 4, "Message brokers"): one librdkafka idempotent producer
// per handler process and subscriber.
//
// librdkafka does the protocol work on threads of its own (one per broker, plus a main thread):
// batching (linger.ms), retries, per-partition ordering and exactly-once writes per partition
// (enable.idempotence: the broker drops a retried batch it already has). What it hands back, the
// delivery reports, errors and log lines, it puts on its main queue, and the callbacks for them run
// only inside rd_kafka_poll() on the thread that calls it. So the delivery-report callback runs on
// the handler process's thread already; it only moves the outcome to `ready_`, and poll() runs the
// Dones once rd_kafka_poll() has returned, so that a Done may call publish() again and no
// exception can cross librdkafka's C frames. The main queue writes one byte to a pipe when it gets
// an event after having been served (rd_kafka_queue_io_event_enable); that pipe is wait_fd().
//
// Whether some broker is up (connected()) comes from librdkafka's on_broker_state_change
// interceptor, called on the broker threads at each state change: exact and immediate, where the
// statistics callback would mean parsing a JSON document every interval and the delivery reports
// say nothing while nothing is being published. The first broker up and the last one down also
// write to the wake pipe, so that an idle process notices the change.
//
// A cluster that is gone must cost each event one quick, retryable attempt, not a wait for the
// whole timeout: the handler process answers events in order, so a publication that waits holds
// up the events behind it, other subscribers' too. When every broker is down librdkafka raises
// ALL_BROKERS_DOWN. The sink then purges what librdkafka holds unsent (rd_kafka_purge with
// RD_KAFKA_PURGE_F_QUEUE: messages never sent, and those whose request died with the connection,
// which may have been written), failing each retryably at once, and until a broker is up again
// publish() fails at once. The purge leaves a gap in the idempotent producer's sequence numbers;
// the broker answers the next message with OUT_OF_ORDER_SEQUENCE_NUMBER and librdkafka recovers
// by bumping the producer's epoch, as it does after a message timeout. librdkafka keeps trying to
// reconnect by itself (to a random broker about once a second while none is up), with the backoff
// of sink.h (reconnect.backoff.ms and reconnect.backoff.max.ms).
//
// librdkafka checks message timeouts late while it waits to reconnect (seconds late, with a
// reconnection backoff of seconds), and a publication that outlived the handler timeout would get
// its process killed. So every publication also has a deadline of its own, timeout_ms after
// publish(): poll() fails what is still unacknowledged then, and drops librdkafka's late report.
//
// A fatal error of the idempotent producer (the broker and the producer disagree about sequence
// numbers) leaves a producer that accepts nothing more: every pending publication fails
// retryably, the producer is destroyed, and the next publish() creates a new one.
#include "worker/sink.h"

#include "common/check.h"
#include "common/fd.h"

#include <librdkafka/rdkafka.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace outbox {
namespace {

// How long librdkafka waits to fill a batch (linger.ms). The handler process keeps a bounded
// number of publications in flight (about 128), so a publication's round trip, linger included,
// bounds the throughput: against the mock cluster with 128 in flight, 1 ms gave about 70,000
// messages/s, librdkafka's default of 5 ms about 17,000, and 0 (a request per message) 30,000.
constexpr long kLingerMs = 1;

// librdkafka waits this long (its default is 30 s) before it believes a topic that the cluster
// says does not exist, in case the topic was just created and has not reached every broker yet.
// It must end well within the message timeout, or an unknown topic would only ever show as a
// timeout.
long metadata_propagation_ms(long timeout_ms) {
    return std::clamp<long>(timeout_ms / 2, 1, 30000);
}

// What the broker or librdkafka rejects for good: retrying the same message cannot succeed.
// Everything else (timeouts, transport errors, brokers down, leader changes, a full queue) is
// retryable.
bool is_permanent(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    // librdkafka retries UNKNOWN_TOPIC_OR_PART itself while the topic may still appear (see
    // metadata_propagation_ms); when it reports it, it has given up.
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

// spdlog levels for librdkafka's syslog levels. Its errors are mostly connection failures that
// the sink reports as the failure of each attempt, so they are logged as warnings.
spdlog::level::level_enum log_level_of(int syslog_level) {
    if (syslog_level <= 4) {
        return spdlog::level::warn;
    }
    if (syslog_level <= 6) {
        return spdlog::level::info;
    }
    return spdlog::level::debug;
}

class KafkaSink final : public Sink {
  public:
    explicit KafkaSink(KafkaSinkOptions options) : options_(std::move(options)) {
        int fds[2];
        OUTBOX_CHECK(pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0);
        wake_read_.reset(fds[0]);
        wake_write_.reset(fds[1]);
    }

    ~KafkaSink() override {
        // The process is ending or the subscriber is going away: pending publications get no
        // callback (sink.h). Whatever librdkafka still holds is dropped, not flushed.
        in_flight_.clear();
        ready_.clear();
        destroy_producer();
    }

    KafkaSink(const KafkaSink&) = delete;
    KafkaSink& operator=(const KafkaSink&) = delete;

    void publish(const BrokerMessage& message, Done done) override;
    void poll(int timeout_ms) override;
    [[nodiscard]] size_t pending() const override { return in_flight_.size() + ready_.size(); }
    [[nodiscard]] int wait_fd() const override { return wake_read_.get(); }
    [[nodiscard]] bool connected() const override {
        return producer_ != nullptr && brokers_up_.load() > 0;
    }
    [[nodiscard]] std::optional<std::string> check(long timeout_ms) override;

  private:
    // Creates the producer when there is none. nullopt, or why it cannot be created (a
    // property librdkafka refuses).
    std::optional<std::string> ensure_producer();
    // Destroys the producer at once, without waiting for deliveries and without any callback.
    void destroy_producer();
    // After a fatal error: fails everything pending (retryably) and drops the producer.
    void recover_from_fatal_error();
    // Sets fatal_ when librdkafka has raised a fatal error.
    void note_fatal_error(rd_kafka_t* rk);
    // Fails the publications whose deadline has passed.
    void expire_overdue();
    // Milliseconds until the first deadline, at most `limit`.
    int until_next_deadline(int limit) const;
    void drain_wake_pipe();
    // Serves librdkafka's main queue: the callbacks below run from here.
    void serve(int timeout_ms);
    // Whether publications fail at once: librdkafka said every broker is down, no broker has
    // come up since, and none is up now. ALL_BROKERS_DOWN is queued before the interceptor hears
    // of the last broker going down, and a broker may come up before the event is served, so
    // neither the event nor the count of brokers up alone is enough.
    bool all_brokers_down() {
        if (all_brokers_down_ && brokers_came_up_.load() != brokers_came_up_at_down_) {
            all_brokers_down_ = false;
        }
        return all_brokers_down_ && brokers_up_.load() == 0;
    }

    static void on_delivery(rd_kafka_t* rk, const rd_kafka_message_t* message, void* opaque);
    static void on_error(rd_kafka_t* rk, int err, const char* reason, void* opaque);
    static void on_log(const rd_kafka_t* rk, int level, const char* facility, const char* text);
    static rd_kafka_resp_err_t on_new(rd_kafka_t* rk, const rd_kafka_conf_t* conf, void* ic_opaque,
                                      char* errstr, size_t errstr_size);
    static rd_kafka_resp_err_t on_broker_state_change(rd_kafka_t* rk, int32_t broker_id,
                                                      const char* secproto, const char* name,
                                                      int port, const char* state, void* ic_opaque);

    KafkaSinkOptions options_;
    UniqueFd wake_read_;
    UniqueFd wake_write_;
    rd_kafka_t* producer_ = nullptr;
    rd_kafka_queue_t* main_queue_ = nullptr;

    // Publications handed to librdkafka, by the id that travels as the message's opaque. Ids
    // grow and every publication has the same timeout, so the first is the next to expire.
    struct Publication {
        Done done;
        std::string topic; // for the error texts that do not come from a delivery report
        std::chrono::steady_clock::time_point deadline;
    };
    std::map<uint64_t, Publication> in_flight_;
    uint64_t next_id_ = 1;
    // Outcomes known and not yet reported: poll() runs them.
    std::vector<std::pair<Done, Result>> ready_;

    // Set by ALL_BROKERS_DOWN, cleared once a broker has come up since.
    bool all_brokers_down_ = false;
    bool purge_requested_ = false;         // by ALL_BROKERS_DOWN, done once rd_kafka_poll() returns
    uint64_t brokers_came_up_at_down_ = 0; // brokers_came_up_ when ALL_BROKERS_DOWN was served
    std::string down_reason_;              // "all brokers are down: 3/3 brokers are down"
    std::string last_error_;               // librdkafka's last error, e.g. a refused connection
    bool fatal_ = false;
    std::string fatal_reason_;
    bool quiet_ = false; // logs nothing (the producer of check())

    // Written by librdkafka's broker threads (on_broker_state_change), read by ours.
    std::mutex broker_states_mutex_;
    std::map<std::string, bool> broker_up_; // "host:port" -> whether in state UP or UPDATE
    std::atomic<int> brokers_up_{0};
    std::atomic<uint64_t> brokers_came_up_{0}; // transitions of a broker to up, ever
};

std::optional<std::string> KafkaSink::ensure_producer() {
    if (producer_ != nullptr) {
        return std::nullopt;
    }
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    auto set = [&](const std::string& name,
                   const std::string& value) -> std::optional<std::string> {
        if (rd_kafka_conf_set(conf, name.c_str(), value.c_str(), errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
            return "kafka: property " + name + "=" + value + ": " + errstr;
        }
        return std::nullopt;
    };
    long timeout_ms = std::max<long>(options_.timeout_ms, 1);
    std::vector<std::pair<std::string, std::string>> settings = {
        {"bootstrap.servers", options_.brokers},
        {"client.id", "outbox-worker"},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"message.timeout.ms", std::to_string(timeout_ms)},
        {"linger.ms", std::to_string(std::min(kLingerMs, timeout_ms - 1))},
        {"reconnect.backoff.ms", std::to_string(kSinkReconnectInitialMs)},
        {"reconnect.backoff.max.ms", std::to_string(kSinkReconnectMaxMs)},
        {"topic.metadata.propagation.max.ms", std::to_string(metadata_propagation_ms(timeout_ms))},
        // Log lines are queued to the main queue and logged from rd_kafka_poll(), on this thread:
        // the process's logger is single-threaded.
        {"log.queue", "true"},
        // Brokers close idle connections (connections.max.idle.ms, 10 minutes by default), which
        // is no failure worth a log line; a broker that is really gone shows in the failures.
        {"log.connection.close", "false"},
    };
    // The handlers file's properties come last: they may tune anything but the three settings
    // the loader refuses (bootstrap.servers, enable.idempotence, acks).
    settings.insert(settings.end(), options_.properties.begin(), options_.properties.end());
    for (const auto& [name, value] : settings) {
        if (auto error = set(name, value)) {
            rd_kafka_conf_destroy(conf);
            return error;
        }
    }
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_dr_msg_cb(conf, &KafkaSink::on_delivery);
    rd_kafka_conf_set_error_cb(conf, &KafkaSink::on_error);
    rd_kafka_conf_set_log_cb(conf, &KafkaSink::on_log);
    rd_kafka_conf_interceptor_add_on_new(conf, "outbox-kafka-sink", &KafkaSink::on_new, this);

    {
        std::lock_guard lock(broker_states_mutex_);
        broker_up_.clear();
        brokers_up_ = 0;
        brokers_came_up_ = 0;
    }
    all_brokers_down_ = false;
    fatal_ = false;
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == nullptr) {
        rd_kafka_conf_destroy(conf);
        return std::string("kafka: cannot create a producer: ") + errstr;
    }
    producer_ = rk;
    rd_kafka_set_log_queue(producer_, nullptr);
    main_queue_ = rd_kafka_queue_get_main(producer_);
    static const char kWakeByte = 1;
    rd_kafka_queue_io_event_enable(main_queue_, wake_write_.get(), &kWakeByte, 1);
    return std::nullopt;
}

void KafkaSink::destroy_producer() {
    if (producer_ == nullptr) {
        return;
    }
    rd_kafka_queue_io_event_enable(main_queue_, -1, nullptr, 0);
    rd_kafka_queue_destroy(main_queue_);
    main_queue_ = nullptr;
    // Purged messages get delivery reports only if someone polls, which no one will; in_flight_
    // is empty by now, so on_delivery would ignore them anyway. Without the purge
    // rd_kafka_destroy() would wait for the queued messages to be delivered or to time out.
    rd_kafka_purge(producer_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                                  RD_KAFKA_PURGE_F_NON_BLOCKING);
    rd_kafka_t* rk = std::exchange(producer_, nullptr);
    rd_kafka_destroy(rk);
    drain_wake_pipe();
}

void KafkaSink::recover_from_fatal_error() {
    spdlog::warn("kafka: {}: the producer failed ({}); a new one takes over", options_.brokers,
                 fatal_reason_);
    for (auto& [id, publication] : in_flight_) {
        ready_.emplace_back(std::move(publication.done),
                            Result::retry("kafka: publish to " + publication.topic +
                                          ": the producer failed (" + fatal_reason_ +
                                          ") and is replaced; the message may have been written"));
    }
    in_flight_.clear();
    destroy_producer();
}

void KafkaSink::drain_wake_pipe() {
    char buffer[64];
    while (read(wake_read_.get(), buffer, sizeof buffer) > 0) {
    }
}

void KafkaSink::serve(int timeout_ms) {
    if (producer_ == nullptr) {
        return;
    }
    // Drained before serving: an event that arrives after rd_kafka_poll() has served the queue
    // writes a new byte (librdkafka writes one per unserved period), so none is missed.
    drain_wake_pipe();
    rd_kafka_poll(producer_, timeout_ms);
    if (fatal_) {
        recover_from_fatal_error();
        return;
    }
    if (purge_requested_) {
        bool down = all_brokers_down();
        if (!all_brokers_down_) {
            // A broker came back in the meantime: the messages may go out after all.
            purge_requested_ = false;
        } else if (down) {
            purge_requested_ = false;
            rd_kafka_purge(producer_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_NON_BLOCKING);
            // The delivery reports of the purged messages are on the main queue now, or soon
            // (each broker thread purges its own): the wake pipe brings the process back.
            rd_kafka_poll(producer_, 0);
        }
        // Otherwise the interceptor has not heard of the last broker going down yet; it wakes
        // the process when it does, and the purge happens then.
    }
}

void KafkaSink::expire_overdue() {
    auto now = std::chrono::steady_clock::now();
    while (!in_flight_.empty() && in_flight_.begin()->second.deadline <= now) {
        Publication& publication = in_flight_.begin()->second;
        std::string why = "kafka: publish to " + publication.topic +
                          ": no acknowledgement within " + std::to_string(options_.timeout_ms) +
                          " ms";
        if (all_brokers_down()) {
            why += " (" + down_reason_ + ")";
        }
        why += "; the message may have been written";
        ready_.emplace_back(std::move(publication.done), Result::retry(why));
        in_flight_.erase(in_flight_.begin());
    }
}

int KafkaSink::until_next_deadline(int limit) const {
    if (in_flight_.empty()) {
        return limit;
    }
    auto left = std::chrono::ceil<std::chrono::milliseconds>(in_flight_.begin()->second.deadline -
                                                             std::chrono::steady_clock::now());
    return static_cast<int>(std::clamp<int64_t>(left.count(), 0, limit));
}

void KafkaSink::publish(const BrokerMessage& message, Done done) {
    if (fatal_) {
        recover_from_fatal_error();
    }
    if (auto error = ensure_producer()) {
        done(Result::retry(*error));
        return;
    }
    if (all_brokers_down()) {
        std::string why = "kafka: not connected to " + options_.brokers + ": " + down_reason_;
        if (!last_error_.empty()) {
            why += " (last error: " + last_error_ + ")";
        }
        why += "; librdkafka keeps reconnecting";
        done(Result::retry(why));
        return;
    }

    uint64_t id = next_id_++;
    std::vector<rd_kafka_vu_t> fields;
    fields.reserve(7);
    auto add = [&](rd_kafka_vtype_t type) -> rd_kafka_vu_t& {
        rd_kafka_vu_t& vu = fields.emplace_back();
        std::memset(&vu, 0, sizeof vu);
        vu.vtype = type;
        return vu;
    };
    add(RD_KAFKA_VTYPE_TOPIC).u.cstr = message.destination.c_str();
    if (message.key) {
        auto& key = add(RD_KAFKA_VTYPE_KEY);
        key.u.mem.ptr = const_cast<char*>(message.key->data());
        key.u.mem.size = message.key->size();
    }
    auto& value = add(RD_KAFKA_VTYPE_VALUE);
    value.u.mem.ptr = const_cast<char*>(message.body.data());
    value.u.mem.size = message.body.size();
    add(RD_KAFKA_VTYPE_MSGFLAGS).u.i = RD_KAFKA_MSG_F_COPY;
    // The headers go as one list that the sink owns until librdkafka has accepted the message.
    // (rd_kafka_produceva of librdkafka 2.0.2 frees a list it built itself from single headers
    // twice when the topic turns out not to exist: librdkafka issue #4628.)
    std::unique_ptr<rd_kafka_headers_t, void (*)(rd_kafka_headers_t*)> headers(
        nullptr, &rd_kafka_headers_destroy);
    if (!message.headers.empty()) {
        headers.reset(rd_kafka_headers_new(message.headers.size()));
        for (const auto& [name, header_value] : message.headers) {
            rd_kafka_header_add(headers.get(), name.data(), static_cast<ssize_t>(name.size()),
                                header_value.data(), static_cast<ssize_t>(header_value.size()));
        }
        add(RD_KAFKA_VTYPE_HEADERS).u.headers = headers.get();
    }
    // The opaque is the publication's id, not a pointer: a delivery report that arrives for a
    // publication this sink no longer tracks (purged at destruction) finds nothing.
    add(RD_KAFKA_VTYPE_OPAQUE).u.ptr = reinterpret_cast<void*>(static_cast<uintptr_t>(id));

    rd_kafka_error_t* error = rd_kafka_produceva(producer_, fields.data(), fields.size());
    if (error != nullptr) {
        rd_kafka_resp_err_t code = rd_kafka_error_code(error);
        rd_kafka_error_destroy(error);
        std::string why =
            "kafka: publish to " + message.destination + ": " + rd_kafka_err2str(code);
        if (code == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            why += " (back-pressure: too many messages waiting in the producer)";
        }
        note_fatal_error(producer_);
        done(is_permanent(code) && !fatal_ ? Result::permanent(why) : Result::retry(why));
        return;
    }
    (void)headers.release(); // the message's now
    in_flight_.emplace(id, Publication{std::move(done), message.destination,
                                       std::chrono::steady_clock::now() +
                                           std::chrono::milliseconds(options_.timeout_ms)});
}

void KafkaSink::poll(int timeout_ms) {
    if (fatal_) {
        recover_from_fatal_error();
    }
    bool wait = ready_.empty() && !in_flight_.empty();
    serve(wait ? until_next_deadline(std::max(timeout_ms, 0)) : 0);
    expire_overdue();
    // Swapped out first: a Done may publish again, and what that adds waits for the next poll.
    std::vector<std::pair<Done, Result>> ready;
    ready.swap(ready_);
    for (auto& [done, result] : ready) {
        done(std::move(result));
    }
}

std::optional<std::string> KafkaSink::check(long timeout_ms) {
    // A producer of its own, with the same settings, so that a property librdkafka refuses
    // shows here too; it is gone when check() returns.
    KafkaSink probe(options_);
    // What went wrong ends up in the one line returned; librdkafka's log lines would repeat it.
    probe.quiet_ = true;
    if (auto error = probe.ensure_producer()) {
        return error;
    }
    const rd_kafka_metadata_t* metadata = nullptr;
    rd_kafka_resp_err_t err =
        rd_kafka_metadata(probe.producer_, 0, nullptr, &metadata,
                          static_cast<int>(std::clamp<long>(timeout_ms, 1, INT_MAX)));
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        probe.serve(0); // collects the connection errors behind the failure
        std::string why = "kafka: cannot reach " + options_.brokers + " within " +
                          std::to_string(timeout_ms) + " ms: " + rd_kafka_err2str(err);
        if (!probe.last_error_.empty()) {
            why += " (last error: " + probe.last_error_ + ")";
        }
        return why;
    }
    int brokers = metadata->broker_cnt;
    rd_kafka_metadata_destroy(metadata);
    if (brokers == 0) {
        return "kafka: " + options_.brokers + " answered, but with no brokers in the cluster";
    }
    spdlog::debug("kafka: reached {} ({} brokers)", options_.brokers, brokers);
    return std::nullopt;
}

void KafkaSink::on_delivery(rd_kafka_t* rk, const rd_kafka_message_t* message, void* opaque) {
    auto* sink = static_cast<KafkaSink*>(opaque);
    auto id = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(message->_private));
    auto it = sink->in_flight_.find(id);
    if (it == sink->in_flight_.end()) {
        return;
    }
    Done done = std::move(it->second.done);
    sink->in_flight_.erase(it);
    if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        sink->ready_.emplace_back(std::move(done), Result::ok());
        return;
    }
    std::string why = std::string("kafka: publish to ") + rd_kafka_topic_name(message->rkt) + ": " +
                      rd_kafka_err2str(message->err);
    if (message->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT) {
        why += " (no acknowledgement within " + std::to_string(sink->options_.timeout_ms) + " ms";
        if (sink->all_brokers_down()) {
            why += "; " + sink->down_reason_;
        }
        why += ")";
    } else if (message->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE) {
        why = std::string("kafka: publish to ") + rd_kafka_topic_name(message->rkt) +
              ": not sent, " + sink->down_reason_;
        if (!sink->last_error_.empty()) {
            why += " (last error: " + sink->last_error_ + ")";
        }
    }
    // The delivery report of the message that caused a fatal error may be served before the
    // error itself.
    sink->note_fatal_error(rk);
    if (sink->fatal_) {
        why += "; the producer failed (" + sink->fatal_reason_ + ") and is replaced";
    }
    // A consumer may see such a message although its publication failed: the Outbox id header
    // lets it drop the copy that the retry publishes.
    if (rd_kafka_message_status(message) == RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED) {
        why += "; the message may have been written";
    }
    bool permanent = is_permanent(message->err) && !sink->fatal_;
    sink->ready_.emplace_back(std::move(done),
                              permanent ? Result::permanent(why) : Result::retry(why));
}

void KafkaSink::note_fatal_error(rd_kafka_t* rk) {
    if (fatal_) {
        return;
    }
    char reason[512];
    rd_kafka_resp_err_t original = rd_kafka_fatal_error(rk, reason, sizeof reason);
    if (original != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fatal_ = true;
        fatal_reason_ = std::string(rd_kafka_err2name(original)) + ": " + reason;
    }
}

void KafkaSink::on_error(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    auto* sink = static_cast<KafkaSink*>(opaque);
    auto code = static_cast<rd_kafka_resp_err_t>(err);
    if (code == RD_KAFKA_RESP_ERR__FATAL) {
        sink->note_fatal_error(rk);
        return;
    }
    if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        sink->all_brokers_down_ = true;
        sink->purge_requested_ = true;
        sink->brokers_came_up_at_down_ = sink->brokers_came_up_.load();
        sink->down_reason_ = std::string("all brokers are down: ") + reason;
        if (!sink->quiet_) {
            spdlog::warn("kafka: {}: {}", sink->options_.brokers, sink->down_reason_);
        }
        return;
    }
    sink->last_error_ = reason;
}

void KafkaSink::on_log(const rd_kafka_t* rk, int level, const char* facility, const char* text) {
    if (static_cast<const KafkaSink*>(rd_kafka_opaque(rk))->quiet_) {
        return;
    }
    spdlog::log(log_level_of(level), "kafka: {}: {}", facility, text);
}

rd_kafka_resp_err_t KafkaSink::on_new(rd_kafka_t* rk, const rd_kafka_conf_t* /*conf*/,
                                      void* ic_opaque, char* /*errstr*/, size_t /*errstr_size*/) {
    return rd_kafka_interceptor_add_on_broker_state_change(
        rk, "outbox-kafka-sink", &KafkaSink::on_broker_state_change, ic_opaque);
}

rd_kafka_resp_err_t KafkaSink::on_broker_state_change(rd_kafka_t* /*rk*/, int32_t /*broker_id*/,
                                                      const char* /*secproto*/, const char* name,
                                                      int port, const char* state,
                                                      void* ic_opaque) {
    auto* sink = static_cast<KafkaSink*>(ic_opaque);
    bool up = std::strcmp(state, "UP") == 0 || std::strcmp(state, "UPDATE") == 0;
    // Keyed by address, not id: a bootstrap broker (id -1) learns its id from the metadata and
    // stays the same broker. librdkafka's internal broker (no address) is no connection.
    if (port <= 0) {
        return RD_KAFKA_RESP_ERR_NO_ERROR;
    }
    std::string broker = std::string(name) + ":" + std::to_string(port);
    std::lock_guard lock(sink->broker_states_mutex_);
    bool& was_up = sink->broker_up_[broker];
    if (up != was_up) {
        was_up = up;
        int before = sink->brokers_up_.fetch_add(up ? 1 : -1);
        if (up) {
            ++sink->brokers_came_up_;
        }
        // The first broker up or the last one down changes connected(): wake the process so
        // that it reports the change even when it has nothing to publish.
        if ((before == 0) == up) {
            static const char kWakeByte = 1;
            ssize_t written = write(sink->wake_write_.get(), &kWakeByte, 1);
            (void)written; // a full pipe is awake already
        }
    }
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

} // namespace

std::unique_ptr<Sink> make_kafka_sink(const KafkaSinkOptions& options) {
    return std::make_unique<KafkaSink>(options);
}

} // namespace outbox
