#include "worker/worker_process.h"

#include "common/json.h"
#include "common/protocol.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <iostream>
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

// The channel as the handler process sees it: frames in, frames out.
class Channel {
  public:
    Channel(int fd, const WorkerProcessOptions& options) : fd_(fd), options_(options) {}

    void send(const std::string& frame) {
        size_t written = 0;
        while (written < frame.size()) {
            const ssize_t n = ::write(fd_, frame.data() + written, frame.size() - written);
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
    }

    // The next frame, blocking until it is complete. Exits on end of file and on a protocol error.
    Frame next_frame() {
        for (;;) {
            FrameDecoder::Next next = decoder_.next();
            if (next.status == FrameDecoder::Status::frame) {
                return std::move(next.frame);
            }
            if (next.status == FrameDecoder::Status::error) {
                protocol_failure(next.error);
            }
            read_some();
        }
    }

    [[noreturn]] void protocol_failure(const std::string& reason) {
        spdlog::error("{}: protocol error on the channel from the supervisor: {}; exiting with "
                      "code {}",
                      options_.process_name, reason, kWorkerExitProtocolError);
        exit_worker(kWorkerExitProtocolError);
    }

  private:
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

ResultMsg run_event(const EventMsg& message, const std::vector<Subscriber>& subscribers,
                    const WorkerProcessOptions& options) {
    ResultMsg result;
    result.seq = message.seq;
    result.started_at_us = realtime_us();
    const int64_t start = monotonic_us();

    Decoded<EventDelivery> delivery = decode_event_delivery(message.fields);
    DispatchResult dispatched;
    if (!delivery) {
        // The envelope was fine and the frame's length framed it, so the channel can be trusted;
        // only this event is unusable, and since it would be just as unusable next time, it
        // fails permanently.
        spdlog::error("{}: malformed event in EVENT seq {}: {}", options.process_name, message.seq,
                      delivery.error());
        dispatched.result =
            Result::permanent("malformed event from the supervisor: " + delivery.error());
    } else {
        const SubscriberNames done = done_subscribers(delivery.value(), options);
        dispatched = dispatch_event(subscribers, delivery.value().event, done);
    }

    result.duration_us = monotonic_us() - start;
    Result& outcome = dispatched.result;
    result.outcome = outcome.outcome;
    result.error = std::move(outcome.error);
    result.retry_after_ms = outcome.outcome == Outcome::success ? 0 : outcome.retry_after_ms;
    result.subscribers = std::move(dispatched.ran);
    if (delivery) {
        const Event& event = delivery.value().event;
        if (dispatched.skipped > 0 && result.subscribers.empty() &&
            result.outcome == Outcome::success) {
            spdlog::debug("{}: event {} ({}) attempt {}: all {} matching subscribers had already "
                          "succeeded; nothing to run",
                          options.process_name, event.id, event.event_type, event.attempt,
                          dispatched.skipped);
        } else {
            spdlog::debug("{}: event {} ({}) attempt {}: {} in {} us ({} subscribers ran, {} "
                          "skipped as already successful)",
                          options.process_name, event.id, event.event_type, event.attempt,
                          outcome_name(result.outcome), result.duration_us,
                          result.subscribers.size(), dispatched.skipped);
        }
    }
    return result;
}

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
        if (!done.empty() &&
            done.contains(bounded_error(subscriber.name, kMaxSubscriberNameBytes))) {
            ++dispatched.skipped;
            continue;
        }
        Result result;
        try {
            result = subscriber.handler(event);
        } catch (const std::exception& e) {
            result = Result::retry(e.what());
        } catch (...) {
            result = Result::retry("unknown exception");
        }
        dispatched.ran.push_back({subscriber.name, result.outcome});
        if (result.outcome == Outcome::success) {
            continue;
        }
        if (result.error.empty()) {
            result.error = "failed without an error message";
        }
        result.error = "subscriber " + subscriber.name + ": " + result.error;
        if (result.retry_after_ms < 0) {
            result.retry_after_ms = 0;
        }
        dispatched.result = std::move(result);
        return dispatched;
    }
    if (!matched) {
        dispatched.result = Result::retry("no subscriber matches event type " + event.event_type +
                                          " in this handler process");
    }
    return dispatched;
}

void run_worker_process(int channel_fd, const std::vector<Subscriber>& subscribers,
                        const WorkerProcessOptions& options) {
    // A write to a closed channel must be an EPIPE we can handle, not a signal that kills the
    // process and looks like a crash to whoever reaps it.
    std::signal(SIGPIPE, SIG_IGN);

    Channel channel(channel_fd, options);
    HelloMsg hello;
    hello.pid = static_cast<long>(getpid());
    channel.send(encode_hello(hello));

    for (;;) {
        const Frame frame = channel.next_frame();
        switch (frame.type) {
        case MessageType::quit:
            if (const Decoded<QuitMsg> quit = decode_quit(frame); !quit) {
                channel.protocol_failure(quit.error());
            }
            // Frames are handled in order, so every EVENT sent before the QUIT has been answered.
            spdlog::debug("{}: QUIT received, exiting", options.process_name);
            exit_worker(kWorkerExitOk);
        case MessageType::event: {
            const Decoded<EventMsg> message = decode_event(frame);
            if (!message) {
                channel.protocol_failure(message.error());
            }
            channel.send(encode_result(run_event(message.value(), subscribers, options)));
            break;
        }
        case MessageType::hello:
        case MessageType::result:
        case MessageType::status:
            channel.protocol_failure(std::string("unexpected ") + message_type_name(frame.type) +
                                     " frame from the supervisor");
        }
    }
}

} // namespace outbox
