#include "worker/worker_process.h"

#include "common/json.h"
#include "common/protocol.h"
#include "worker/broker_message.h"
#include "worker/sink.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <poll.h>
#include <unistd.h>

namespace outbox {

namespace {

constexpr size_t kReadChunk = 64 * 1024;

int64_t realtime_us() {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    return int64_t{now.tv_sec} * 1000000 + now.tv_nsec / 1000;
}

int64_t monotonic_us() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return int64_t{now.tv_sec} * 1000000 + now.tv_nsec / 1000;
}

[[noreturn]] void exit_worker(int code) {
    // Handlers may have written to stdout through stdio or iostreams; _exit() would drop what is
    // still buffered.
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    if (auto* logger = spdlog::default_logger_raw()) {
        logger->flush();
    }
    _exit(code);
}

// Waits until `fd` is ready for `events`; used only when the channel is in non-blocking mode.
void wait_for(int fd, short events) {
    pollfd pfd{fd, events, 0};
    while (poll(&pfd, 1, -1) < 0 && errno == EINTR) {
    }
}

// The channel as the handler process sees it: frames in, frames out. Frames out are gathered and
// written together (flush), so that the RESULTs and STATUSes one turn of the loop produces cost
// one write.
class Channel {
  public:
    Channel(int fd, const WorkerProcessOptions& options) : fd_(fd), options_(options) {}

    int fd() const { return fd_; }

    void queue(const std::string& frame) { out_ += frame; }

    void flush() {
        if (out_.empty()) {
            return;
        }
        size_t written = 0;
        while (written < out_.size()) {
            const ssize_t n = ::write(fd_, out_.data() + written, out_.size() - written);
            if (n >= 0) {
                written += static_cast<size_t>(n);
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                wait_for(fd_, POLLOUT);
            } else if (errno == EPIPE || errno == ECONNRESET) {
                // The supervisor is gone; its successor will find the event's lease expired.
                spdlog::info("{}: the supervisor closed the channel, exiting",
                             options_.process_name);
                exit_worker(kWorkerExitOk);
            } else {
                channel_failure("write", errno);
            }
        }
        out_.clear();
    }

    // The next frame already received, if a whole one is. Exits on a protocol error.
    std::optional<Frame> buffered_frame() {
        FrameDecoder::Next next = decoder_.next();
        if (next.status == FrameDecoder::Status::frame) {
            return std::move(next.frame);
        }
        if (next.status == FrameDecoder::Status::error) {
            protocol_failure(next.error);
        }
        return std::nullopt;
    }

    // Reads what has arrived, blocking until something has (the descriptor is blocking unless
    // the forking code made it otherwise). Exits on end of file.
    void read_some() {
        char chunk[kReadChunk];
        for (;;) {
            const ssize_t n = ::read(fd_, chunk, sizeof chunk);
            if (n > 0) {
                decoder_.feed(chunk, static_cast<size_t>(n));
                return;
            }
            if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                spdlog::info("{}: the supervisor closed the channel, exiting",
                             options_.process_name);
                exit_worker(kWorkerExitOk);
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                wait_for(fd_, POLLIN);
                continue;
            }
            channel_failure("read", errno);
        }
    }

    [[noreturn]] void protocol_failure(const std::string& reason) {
        spdlog::error("{}: protocol error on the channel from the supervisor: {}; exiting with "
                      "code {}",
                      options_.process_name, reason, kWorkerExitProtocolError);
        exit_worker(kWorkerExitProtocolError);
    }

  private:
    [[noreturn]] void channel_failure(const char* operation, int error) {
        // An unusable channel is not something a respawn right now would fix either.
        spdlog::error("{}: {} on the channel failed: {}; exiting with code {}",
                      options_.process_name, operation, std::strerror(error),
                      kWorkerExitProtocolError);
        exit_worker(kWorkerExitProtocolError);
    }

    int fd_;
    const WorkerProcessOptions& options_;
    FrameDecoder decoder_;
    std::string out_;
};

// The subscribers an event names as done, parsed once; a list that is not what the supervisor
// sends is logged and taken as empty, so that every subscriber runs (at least once).
SubscriberNames done_subscribers(const EventDelivery& delivery,
                                 const WorkerProcessOptions& options) {
    if (!delivery.subscribers_done_json) {
        return {};
    }
    std::optional<SubscriberNames> done = parse_subscribers_done(*delivery.subscribers_done_json);
    if (!done) {
        spdlog::warn("{}: event {} ({}) attempt {}: its list of subscribers that already "
                     "succeeded is not a JSON array of strings ({} bytes); running every matching "
                     "subscriber",
                     options.process_name, delivery.event.id, delivery.event.event_type,
                     delivery.event.attempt, delivery.subscribers_done_json->size());
        return {};
    }
    return std::move(*done);
}

// A subscriber's handler, called as the handler process calls it: exceptions become retries.
Result call_handler(const Subscriber& subscriber, const Event& event) {
    try {
        return subscriber.handler(event);
    } catch (const std::exception& e) {
        return Result::retry(e.what());
    } catch (...) {
        return Result::retry("unknown exception");
    }
}

// Whether `subscriber` is named in the event's record of successes, compared by the name as
// RESULT carries it (that is what the supervisor recorded).
bool already_done(const Subscriber& subscriber, const SubscriberNames& done) {
    return !done.empty() && done.contains(bounded_error(subscriber.name, kMaxSubscriberNameBytes));
}

// The event's failure made of a subscriber's: "subscriber <name>: <error>", never empty, and no
// negative delay.
Result event_failure(const Subscriber& subscriber, Result result) {
    if (result.error.empty()) {
        result.error = "failed without an error message";
    }
    result.error = "subscriber " + subscriber.name + ": " + result.error;
    if (result.retry_after_ms < 0) {
        result.retry_after_ms = 0;
    }
    return result;
}

Result no_subscriber_matches(const Event& event) {
    return Result::retry("no subscriber matches event type " + event.event_type +
                         " in this handler process");
}

// How long the loop waits at most once a sink exists: every sink gets poll() at least this
// often, so that timers a sink keeps itself (publication timeouts, heartbeats, reconnection) run
// even when its descriptor stays quiet, and however busy the channel is.
constexpr int kSinkTickMs = 100;
// The wait when a sink with publications pending has no descriptor to wait on (Sink::wait_fd):
// its completions are noticed at most this late.
constexpr int kSinkPollWithoutFdMs = 2;

// The handler process's loop (docs/protocol.md, "Many publications in flight").
//
// Each EVENT becomes a PendingEvent that walks its matching subscribers in order. A synchronous
// subscriber (exec, http, log, code) runs inline, and only while its event is the oldest
// unanswered one: the supervisor charges a crash or a timeout to that event, so that is the only
// one that may run handler code that can crash or hang. A broker subscriber starts a publication
// on its sink, from any event: the event then waits for the publication's outcome before it moves
// to its next subscriber, and the loop goes on reading EVENT frames and starting their
// publications. RESULTs leave strictly in EVENT order.
//
// With no broker subscriber, every event is the oldest unanswered one when it arrives, runs to
// its end at once and is answered before the next frame is looked at: one read and one write
// per event, as the loop always did.
class HandlerLoop {
  public:
    HandlerLoop(int channel_fd, const std::vector<Subscriber>& subscribers,
                const WorkerProcessOptions& options)
        : channel_(channel_fd, options), subscribers_(subscribers), options_(options),
          sinks_(subscribers.size()) {}

    [[noreturn]] void run() {
        HelloMsg hello;
        hello.pid = static_cast<long>(getpid());
        channel_.queue(encode_hello(hello));
        channel_.flush();
        for (;;) {
            while (!quit_requested_) {
                std::optional<Frame> frame = channel_.buffered_frame();
                if (!frame) {
                    break;
                }
                handle_frame(std::move(*frame));
            }
            report_sink_states();
            channel_.flush();
            if (quit_requested_ && pending_.empty()) {
                quit();
            }
            if (pending_.empty() && !has_sinks_) {
                // No broker subscriber has run here: wait for the supervisor alone, as a process
                // of exec, http, log and code subscribers always does.
                channel_.read_some();
            } else {
                wait_and_drive_sinks();
            }
        }
    }

  private:
    // A broker subscriber's sink in this process, created on its first event.
    struct SinkSlot {
        std::unique_ptr<Sink> sink;
        size_t outstanding = 0;       // publications started here and not completed
        int64_t last_poll_us = 0;     // monotonic time of the last Sink::poll
        std::optional<bool> reported; // the connection state last sent in a STATUS
        // The latest retryable failure since the sink was last reported connected: connection
        // failures are retryable, so it is the best reason to give for a connection that is down.
        std::string last_error;
    };

    struct PendingEvent {
        uint64_t seq = 0;
        int64_t started_at_us = 0; // CLOCK_REALTIME, for RESULT
        int64_t start = 0;         // monotonic, for the duration
        std::optional<EventDelivery> delivery;
        SubscriberNames done;
        size_t next = 0; // the subscriber to look at next
        bool matched = false;
        size_t skipped = 0;
        bool publishing = false; // waiting for the outcome of subscribers[next]'s publication
        bool finished = false;
        Result result; // the event's outcome, once finished
        std::vector<SubscriberOutcome> ran;
    };

    struct Completion {
        uint64_t publication;
        Result result;
    };

    void handle_frame(Frame&& frame) {
        switch (frame.type) {
        case MessageType::quit:
            if (const Decoded<QuitMsg> quit = decode_quit(frame); !quit) {
                channel_.protocol_failure(quit.error());
            }
            // Frames are handled in order: every EVENT sent before the QUIT is pending or
            // answered, and the process exits once all are answered. The supervisor sends
            // nothing after a QUIT.
            spdlog::debug("{}: QUIT received{}", options_.process_name,
                          pending_.empty() ? ", exiting" : "; finishing the events in flight");
            quit_requested_ = true;
            return;
        case MessageType::event: {
            const Decoded<EventMsg> message = decode_event(frame);
            if (!message) {
                channel_.protocol_failure(message.error());
            }
            start_event(message.value());
            settle();
            return;
        }
        case MessageType::hello:
        case MessageType::result:
        case MessageType::status:
            channel_.protocol_failure(std::string("unexpected ") + message_type_name(frame.type) +
                                      " frame from the supervisor");
        }
    }

    void start_event(const EventMsg& message) {
        PendingEvent& pending = pending_.emplace_back();
        pending.seq = message.seq;
        pending.started_at_us = realtime_us();
        pending.start = monotonic_us();
        Decoded<EventDelivery> delivery = decode_event_delivery(message.fields);
        if (!delivery) {
            // The envelope was fine and the frame's length framed it, so the channel can be
            // trusted; only this event is unusable, and since it would be just as unusable next
            // time, it fails permanently.
            spdlog::error("{}: malformed event in EVENT seq {}: {}", options_.process_name,
                          message.seq, delivery.error());
            pending.result =
                Result::permanent("malformed event from the supervisor: " + delivery.error());
            pending.finished = true;
            return;
        }
        pending.delivery.emplace(std::move(delivery.value()));
        pending.done = done_subscribers(*pending.delivery, options_);
        advance(pending);
    }

    bool is_oldest(const PendingEvent& pending) const { return &pending_.front() == &pending; }

    // Walks the event's subscribers as far as it can: synchronous ones run when the event is the
    // oldest unanswered one, a broker one starts its publication and the event waits for it.
    void advance(PendingEvent& pending) {
        if (pending.finished || pending.publishing) {
            return;
        }
        const Event& event = pending.delivery->event;
        while (pending.next < subscribers_.size()) {
            const Subscriber& subscriber = subscribers_[pending.next];
            if (!subscriber.matches(event.event_type)) {
                ++pending.next;
                continue;
            }
            pending.matched = true;
            if (already_done(subscriber, pending.done)) {
                ++pending.skipped;
                ++pending.next;
                continue;
            }
            if (subscriber.broker) {
                start_publication(pending, subscriber);
                return;
            }
            if (!is_oldest(pending)) {
                return; // runs once the events before it are answered
            }
            // The supervisor starts this event's timeout when the previous RESULT arrives, and
            // blames a crash on the oldest event it has not seen answered: what is answered must
            // be out before handler code runs.
            channel_.flush();
            if (!subscriber_done(pending, subscriber, call_handler(subscriber, event))) {
                return;
            }
        }
        pending.result = pending.matched ? Result::ok() : no_subscriber_matches(event);
        pending.finished = true;
    }

    // Records the outcome of the subscriber at pending.next. False when it failed, which ends
    // the event.
    bool subscriber_done(PendingEvent& pending, const Subscriber& subscriber, Result result) {
        pending.ran.push_back({subscriber.name, result.outcome});
        ++pending.next;
        if (result.outcome == Outcome::success) {
            return true;
        }
        pending.result = event_failure(subscriber, std::move(result));
        pending.finished = true;
        return false;
    }

    void start_publication(PendingEvent& pending, const Subscriber& subscriber) {
        SinkSlot& slot = sinks_[pending.next];
        std::string error;
        std::optional<BrokerMessage> message =
            build_broker_message(subscriber.broker->message, pending.delivery->event, error);
        if (!message) {
            // The event will never make a different message: a permanent failure.
            subscriber_done(pending, subscriber, Result::permanent(error));
            return;
        }
        if (!slot.sink) {
            try {
                slot.sink = subscriber.broker->make_sink();
            } catch (const std::exception& e) {
                error = e.what();
            } catch (...) {
                error = "unknown exception";
            }
            if (!slot.sink) {
                subscriber_done(
                    pending, subscriber,
                    Result::retry("cannot create the " + subscriber.broker->kind +
                                  " sink: " + (error.empty() ? "no sink returned" : error)));
                return;
            }
            has_sinks_ = true;
        }
        const uint64_t publication = next_publication_++;
        publications_.emplace(publication, &pending);
        pending.publishing = true;
        ++slot.outstanding;
        // The sink calls this exactly once, on this thread: from publish() itself or from
        // poll(). It only queues the outcome; settle() applies it, so that no event advances
        // inside a sink's call.
        auto done = [this, publication](Result result) {
            completions_.push_back({publication, std::move(result)});
        };
        try {
            slot.sink->publish(*message, std::move(done));
        } catch (const std::exception& e) {
            completions_.push_back({publication, Result::retry(e.what())});
        } catch (...) {
            completions_.push_back({publication, Result::retry("unknown exception")});
        }
    }

    // Applies the publications' outcomes, answers the events that are finished in EVENT order,
    // and lets the oldest unanswered event run its synchronous subscribers, until nothing moves.
    void settle() {
        for (;;) {
            if (!completions_.empty()) {
                // Applying an outcome may start another publication, whose outcome may be known
                // at once: it is queued for the next round, not into the list being walked.
                applying_.swap(completions_);
                for (Completion& completion : applying_) {
                    publication_done(completion);
                }
                applying_.clear();
                continue;
            }
            if (!pending_.empty() && pending_.front().finished) {
                answer(pending_.front());
                pending_.pop_front();
                if (!pending_.empty()) {
                    advance(pending_.front());
                }
                continue;
            }
            return;
        }
    }

    void publication_done(Completion& completion) {
        auto it = publications_.find(completion.publication);
        if (it == publications_.end()) {
            // A sink broke its contract (one outcome per publication); the first one counted.
            spdlog::error("{}: a sink reported a publication's outcome twice; ignored",
                          options_.process_name);
            return;
        }
        PendingEvent& pending = *it->second;
        publications_.erase(it);
        SinkSlot& slot = sinks_[pending.next];
        --slot.outstanding;
        if (completion.result.outcome == Outcome::retry) {
            slot.last_error = completion.result.error;
        }
        pending.publishing = false;
        if (subscriber_done(pending, subscribers_[pending.next], std::move(completion.result))) {
            advance(pending);
        }
    }

    void answer(PendingEvent& pending) {
        ResultMsg result;
        result.seq = pending.seq;
        result.started_at_us = pending.started_at_us;
        result.duration_us = monotonic_us() - pending.start;
        result.outcome = pending.result.outcome;
        result.error = std::move(pending.result.error);
        result.retry_after_ms =
            result.outcome == Outcome::success ? 0 : pending.result.retry_after_ms;
        result.subscribers = std::move(pending.ran);
        if (pending.delivery) {
            const Event& event = pending.delivery->event;
            if (pending.skipped > 0 && result.subscribers.empty() &&
                result.outcome == Outcome::success) {
                spdlog::debug("{}: event {} ({}) attempt {}: all {} matching subscribers had "
                              "already succeeded; nothing to run",
                              options_.process_name, event.id, event.event_type, event.attempt,
                              pending.skipped);
            } else {
                spdlog::debug("{}: event {} ({}) attempt {}: {} in {} us ({} subscribers ran, {} "
                              "skipped as already successful)",
                              options_.process_name, event.id, event.event_type, event.attempt,
                              outcome_name(result.outcome), result.duration_us,
                              result.subscribers.size(), pending.skipped);
            }
        }
        channel_.queue(encode_result(result));
    }

    // Sends a STATUS for every sink whose connection state differs from the one last reported.
    // A sink is first reported after its first publication, which is when it first connects.
    void report_sink_states() {
        if (!has_sinks_) {
            return;
        }
        for (size_t i = 0; i < sinks_.size(); ++i) {
            SinkSlot& slot = sinks_[i];
            if (!slot.sink) {
                continue;
            }
            const bool connected = slot.sink->connected();
            if (slot.reported == connected) {
                continue;
            }
            StatusMsg status;
            status.sink = subscribers_[i].name;
            status.connected = connected;
            if (connected) {
                status.reason = "connected";
                slot.last_error.clear();
                spdlog::info("{}: sink {} ({}) connected", options_.process_name,
                             subscribers_[i].name, subscribers_[i].broker->description);
            } else {
                if (!slot.last_error.empty()) {
                    status.reason = slot.last_error;
                } else {
                    status.reason = slot.reported.has_value() ? "connection lost" : "not connected";
                }
                spdlog::warn("{}: sink {} ({}) not connected: {}", options_.process_name,
                             subscribers_[i].name, subscribers_[i].broker->description,
                             status.reason);
            }
            slot.reported = connected;
            channel_.queue(encode_status(status));
        }
    }

    // Waits for the channel (until QUIT) and the sinks, and runs what is ready. Every sink is
    // watched, not only those with publications pending, so that a connection lost while idle is
    // reported, and a sink's own timers (heartbeats, reconnection) run.
    void wait_and_drive_sinks() {
        fds_.clear();
        polled_.clear();
        int timeout = kSinkTickMs;
        if (!quit_requested_) {
            fds_.push_back({channel_.fd(), POLLIN, 0});
        }
        for (size_t i = 0; i < sinks_.size(); ++i) {
            SinkSlot& slot = sinks_[i];
            if (!slot.sink) {
                continue;
            }
            const int fd = slot.sink->wait_fd();
            polled_.push_back({i, fd >= 0 ? static_cast<int>(fds_.size()) : -1});
            if (fd >= 0) {
                fds_.push_back({fd, POLLIN, 0});
            } else if (slot.outstanding > 0) {
                timeout = kSinkPollWithoutFdMs;
            }
        }
        if (::poll(fds_.data(), fds_.size(), timeout) < 0 && errno != EINTR) {
            spdlog::error("{}: poll failed: {}", options_.process_name, std::strerror(errno));
        }
        if (!quit_requested_ && fds_[0].revents != 0) {
            channel_.read_some();
        }
        const int64_t now = monotonic_us();
        for (const auto& [index, fd_index] : polled_) {
            SinkSlot& slot = sinks_[index];
            const bool ready = fd_index >= 0 ? fds_[static_cast<size_t>(fd_index)].revents != 0
                                             : slot.outstanding > 0;
            if (ready || now - slot.last_poll_us >= int64_t{kSinkTickMs} * 1000) {
                slot.last_poll_us = now;
                slot.sink->poll(0);
            }
        }
        settle();
    }

    [[noreturn]] void quit() {
        // Every event is answered: nothing is pending in any sink. Closing the connections
        // lets the brokers see a clean goodbye rather than a reset.
        sinks_.clear();
        spdlog::debug("{}: every event answered after QUIT, exiting", options_.process_name);
        exit_worker(kWorkerExitOk);
    }

    Channel channel_;
    const std::vector<Subscriber>& subscribers_;
    const WorkerProcessOptions& options_;
    std::vector<SinkSlot> sinks_; // by subscriber index; empty slots for the others
    // Events received and not answered, in EVENT order. A deque keeps references to its
    // elements valid across push_back and pop_front, which publications_ relies on.
    std::deque<PendingEvent> pending_;
    std::unordered_map<uint64_t, PendingEvent*> publications_; // by publication number
    std::vector<Completion> completions_;                      // queued by the sinks' callbacks
    std::vector<Completion> applying_;                         // being applied by settle()
    uint64_t next_publication_ = 1;
    bool has_sinks_ = false; // some broker subscriber has run: the loop watches its sink too
    bool quit_requested_ = false;
    std::vector<pollfd> fds_;                    // reused by wait_and_drive_sinks
    std::vector<std::pair<size_t, int>> polled_; // (sink index, index in fds_ or -1)
};

} // namespace

std::optional<SubscriberNames> parse_subscribers_done(std::string_view json) {
    const Json list = json_parse(json);
    if (!cJSON_IsArray(list.get())) {
        return std::nullopt;
    }
    SubscriberNames names;
    for (const cJSON* item = list->child; item != nullptr; item = item->next) {
        if (!cJSON_IsString(item) || item->valuestring == nullptr) {
            return std::nullopt;
        }
        names.emplace(item->valuestring);
    }
    return names;
}

DispatchResult dispatch_event(const std::vector<Subscriber>& subscribers, const Event& event,
                              const SubscriberNames& done) {
    DispatchResult dispatched;
    bool matched = false;
    for (const Subscriber& subscriber : subscribers) {
        if (!subscriber.matches(event.event_type)) {
            continue;
        }
        matched = true;
        if (already_done(subscriber, done)) {
            ++dispatched.skipped;
            continue;
        }
        Result result = call_handler(subscriber, event);
        dispatched.ran.push_back({subscriber.name, result.outcome});
        if (result.outcome != Outcome::success) {
            dispatched.result = event_failure(subscriber, std::move(result));
            return dispatched;
        }
    }
    if (!matched) {
        dispatched.result = no_subscriber_matches(event);
    }
    return dispatched;
}

void run_worker_process(int channel_fd, const std::vector<Subscriber>& subscribers,
                        const WorkerProcessOptions& options) {
    // A write to a closed channel must be an EPIPE we can handle, not a signal that kills the
    // process and looks like a crash to whoever reaps it.
    std::signal(SIGPIPE, SIG_IGN);
    HandlerLoop loop(channel_fd, subscribers, options);
    loop.run();
}

} // namespace outbox
