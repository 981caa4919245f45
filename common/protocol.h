// The channel protocol between the supervisor and a handler process (docs/protocol.md).
//
// A channel is one SOCK_STREAM socketpair per handler process. Each message is a frame: a 4-byte
// unsigned big-endian length L, then L bytes of body; the body is one type byte followed by the
// message's fields in a fixed binary layout (big-endian integers, length-prefixed strings). No
// JSON crosses the channel: neither side needs a JSON parser to read a frame, and the event's
// payload and metadata travel as PostgreSQL wrote them, as opaque strings.
//
// Both sides use the encoders and decoders below, so the byte layout lives only here. Nothing in
// this header does I/O: the owner of the channel reads and writes, feeds what it read to a
// FrameDecoder and closes the channel when the decoder reports an error. Decoders trust nothing:
// every length, count, tag and range is checked, and an error names the message and the field.
// Error texts contain only ASCII (field names and numbers), never bytes of the frame.
//
// Everything here is usable from any thread; a FrameDecoder belongs to the one channel it decodes.
#pragma once

#include <outbox/outbox.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

// Bumped whenever a message changes incompatibly; HELLO carries it. Version 1 was JSON bodies;
// version 3 added subscribersDone to the event fields and fills RESULT's per-subscriber outcomes;
// version 4 adds orderingKey to the event fields and the STATUS message (broker sinks).
inline constexpr int kProtocolVersion = 4;

inline constexpr size_t kFrameHeaderSize = 4;
// The smallest body is a type byte alone (QUIT).
inline constexpr size_t kMinFrameBody = 1;
inline constexpr size_t kMaxFrameBody = 16 * 1024 * 1024;
// A RESULT's error is at most this many bytes of valid UTF-8 without NUL: encode_result makes it
// so (bounded_error) and decode_result rejects anything else as a protocol error.
inline constexpr size_t kMaxErrorBytes = 4096;
// Per-subscriber outcomes in a RESULT: at most this many, names at most this many bytes.
inline constexpr size_t kMaxSubscriberResults = 1024;
inline constexpr size_t kMaxSubscriberNameBytes = 1024;
// The longest subscribersDone list an EVENT carries (its JSON text). Far above any real list: a
// thousand names of a kilobyte each. encode_event_fields sends a longer one as null.
inline constexpr size_t kMaxSubscribersDoneBytes = 1024 * 1024;
// A STATUS reason is at most this many bytes of valid UTF-8 without NUL, made so by encode_status
// and checked by decode_status, as a RESULT's error is.
inline constexpr size_t kMaxStatusReasonBytes = 1024;

// Exit codes of a handler process: a contract between run_worker_process (and the forking code)
// and the supervisor, which decides from them whether and when to respawn. Any other exit code or
// a signal means the process crashed. Handlers run inside the process, so a handler that calls
// exit() itself can produce these codes too; the supervisor only treats kWorkerExitOk as a clean
// end when it had sent QUIT or closed the channel.
inline constexpr int kWorkerExitOk = 0;            // QUIT received, or the supervisor went away
inline constexpr int kWorkerExitProtocolError = 2; // malformed frame: do not respawn immediately
inline constexpr int kWorkerExitSetupError = 3;    // the process could not be prepared to run

enum class MessageType : char {
    hello = 'H',  // handler process -> supervisor, once, first
    event = 'E',  // supervisor -> handler process
    result = 'R', // handler process -> supervisor, one per EVENT it ran
    quit = 'Q',   // supervisor -> handler process
    status = 'S', // handler process -> supervisor, when a sink's connection state changes
};

// "HELLO", "EVENT", ... for log lines and error messages.
const char* message_type_name(MessageType type);

struct HelloMsg {
    long pid = 0;
    int protocol = kProtocolVersion;
};

// The fields of one event (SPEC 2) as views, for encode_event_fields. The nullable ones are
// nullopt for SQL NULL, which stays distinct from an empty string on the wire. payload_json and
// metadata_json are JSON texts and are carried as opaque bytes.
//
// subscribers_done_json is not part of the event a handler sees: it names the subscribers that
// already succeeded for this event ("Outbox"."subscribersDone", SPEC 2 "Several subscribers, one
// event"), so that the handler process runs only the others. nullopt for SQL NULL (none yet), else
// a JSON array of strings as PostgreSQL's to_json(text[]) prints it. The channel carries it as
// opaque bytes; only the handler process parses it (worker/worker_process.h).
struct EventFieldsView {
    std::string_view id;
    std::string_view event_log_id;
    std::optional<std::string_view> event_key;
    std::string_view tenant_id;
    std::optional<std::string_view> project_id;
    std::string_view event_type;
    std::string_view payload_json;
    std::optional<std::string_view> metadata_json;
    std::optional<std::string_view> correlation_id;
    std::string_view created_at;
    int attempt = 1;
    std::optional<std::string_view> subscribers_done_json;
    // "Outbox"."orderingKey" (SPEC 2a); nullopt for an unordered event. Handlers see it as
    // Event::ordering_key (broker sinks use it as the message key), not in the event object.
    std::optional<std::string_view> ordering_key;
};

// The event fields of an EVENT as the handler process decodes them: the event its handlers
// receive, and the delivery state that only the handler process reads.
struct EventDelivery {
    Event event;
    std::optional<std::string> subscribers_done_json; // as in EventFieldsView
};

struct EventMsg {
    uint64_t seq = 0;    // chosen by the supervisor, echoed in the RESULT
    long timeout_ms = 0; // enforced by the supervisor, which kills the process; informational here
    // The event's fields as encode_event_fields wrote them. In a decoded message it borrows from
    // the Frame it was decoded from and is valid only while that Frame lives; decode it with
    // decode_event_fields. In a message built for encoding it points at the bytes to send.
    std::string_view fields;
};

// What one subscriber made of the event. A RESULT lists every subscriber that ran in this attempt,
// in the order they ran; the supervisor records the names of the successful ones in the event
// (SPEC 2, "Several subscribers, one event"), and a later attempt skips them.
struct SubscriberOutcome {
    std::string name;
    Outcome outcome = Outcome::success;
};

struct ResultMsg {
    uint64_t seq = 0;
    Outcome outcome = Outcome::success;
    std::string error;
    long retry_after_ms = 0;
    int64_t started_at_us = 0; // CLOCK_REALTIME microseconds when the handlers started
    int64_t duration_us = 0;   // how long they ran
    std::vector<SubscriberOutcome> subscribers;
};

struct QuitMsg {};

// A broker sink's connection changed (worker/sink.h): the handler process sends one when a sink
// first connects or fails to, when it loses its connection and when it gets it back. `sink` is the
// subscriber's name as RESULT carries it; `reason` says what happened ("connected", or the
// connection error), bounded like a RESULT's error.
struct StatusMsg {
    std::string sink;
    bool connected = false;
    std::string reason;
};

// Reading the value of a failed Decoded: the caller skipped ok(), a programming error that is
// reported loudly (on stderr, then abort) rather than read as garbage.
[[noreturn]] void abort_on_failed_decode(const std::string& error);

// A recoverable error is a value: either a T or a reason. Reading the value of a failed result is
// a broken invariant and aborts.
template <typename T>
class [[nodiscard]] Decoded {
  public:
    static Decoded success(T value) {
        Decoded decoded;
        decoded.value_.emplace(std::move(value));
        return decoded;
    }
    static Decoded failure(std::string error) {
        Decoded decoded;
        decoded.error_ = std::move(error);
        return decoded;
    }

    bool ok() const { return value_.has_value(); }
    explicit operator bool() const { return ok(); }

    T& value() {
        check_ok();
        return *value_;
    }
    const T& value() const {
        check_ok();
        return *value_;
    }
    // Empty when ok().
    const std::string& error() const { return error_; }

  private:
    Decoded() = default;
    void check_ok() const {
        if (!value_) {
            abort_on_failed_decode(error_);
        }
    }

    std::optional<T> value_;
    std::string error_;
};

// One complete frame as FrameDecoder returns it: the type byte, and the bytes after it.
struct Frame {
    MessageType type = MessageType::quit;
    std::string body;
};

// Incremental decoder for one direction of one channel. Feed it whatever read() returned, then
// call next() until it says need_more. It checks the length as soon as the 4 header bytes are in
// and the type byte as soon as it arrives; message fields are checked by decode_*().
// After an error it stays failed, ignores further input, and the owner closes the channel.
class FrameDecoder {
  public:
    enum class Status { need_more, frame, error };
    struct Next {
        Status status = Status::need_more;
        Frame frame;       // valid when status == frame
        std::string error; // set when status == error
    };

    void feed(const char* data, size_t size);
    [[nodiscard]] Next next();

    bool failed() const { return failed_; }
    // Bytes received but not yet returned as frames.
    size_t buffered() const { return buffer_.size() - offset_; }

  private:
    Next fail(std::string reason);

    // Frames are consumed by advancing offset_; the consumed prefix is erased only when no complete
    // frame is left, so that at most one partial frame moves and many small frames in one read
    // cost linear time.
    std::string buffer_;
    size_t offset_ = 0;
    bool failed_ = false;
    std::string error_;
};

// Encoders return the complete frame bytes, header included.
std::string encode_hello(const HelloMsg& hello);
// Makes result.error and the subscriber names safe here, once (bounded_error): this is the only
// place where a handler's error text is sanitised. Negative numbers are sent as 0.
std::string encode_result(const ResultMsg& result);
std::string encode_quit();
std::string encode_event(const EventMsg& event);
// Makes the sink name (kMaxSubscriberNameBytes) and the reason (kMaxStatusReasonBytes) safe, as
// encode_result does for its texts.
std::string encode_status(const StatusMsg& status);

// The event's fields in their wire encoding: what the supervisor builds once per claimed event
// (supervisor/claimed_event.h) and hands to encode_event_frame for every delivery. Aborts if a
// string is 4 GiB or longer, which no PostgreSQL value can be. A subscribers_done_json longer
// than kMaxSubscribersDoneBytes is sent as null, and an empty one too (it is no JSON text): the
// handler process then runs every matching subscriber again, which at-least-once delivery
// allows, where a list the decoder must refuse would fail the event for good.
std::string encode_event_fields(const EventFieldsView& fields);
// The same fields from a decoded Event (metadata_json "null" becomes null; ordering_key as the
// event has it), with no subscribersDone, or from a decoded delivery, with its subscribersDone.
EventFieldsView event_fields_of(const Event& event);
EventFieldsView event_fields_of(const EventDelivery& delivery);

// The EVENT frame: the envelope (seq, timeout) prepended to already encoded fields.
// Preconditions: `fields` came from encode_event_fields and event_fits_in_frame(fields.size());
// the process aborts when the size does not fit. An oversized event must instead be failed
// permanently by the caller, with a clear error. A negative timeout is sent as 0.
std::string encode_event_frame(uint64_t seq, long timeout_ms, std::string_view fields);
// Whether encoded event fields of this many bytes fit in an EVENT frame.
bool event_fits_in_frame(size_t fields_size);

// Field checks for each message type. A frame of another type is an error too, so a caller can
// pass whatever it received. decode_hello also rejects a protocol version other than ours.
[[nodiscard]] Decoded<HelloMsg> decode_hello(const Frame& frame);
// Checks the envelope (seq, timeout) and that fields follow; the fields themselves are checked by
// decode_event_fields, so that a handler process can answer an unusable event with a RESULT.
[[nodiscard]] Decoded<EventMsg> decode_event(const Frame& frame);
[[nodiscard]] Decoded<ResultMsg> decode_result(const Frame& frame);
[[nodiscard]] Decoded<QuitMsg> decode_quit(const Frame& frame);
// Rejects a sink name or reason that is too long, not UTF-8 or holds a NUL, and a connected byte
// other than 0 or 1.
[[nodiscard]] Decoded<StatusMsg> decode_status(const Frame& frame);

// The event's fields into an EventDelivery, copying each string once and parsing no JSON. Checks
// every length and tag, that the payload (and metadata and subscribersDone when present) is not
// empty, that subscribersDone is at most kMaxSubscribersDoneBytes, that attempt is at least 1,
// and that nothing follows the last field. The error names the field.
[[nodiscard]] Decoded<EventDelivery> decode_event_delivery(std::string_view fields);
// The same, keeping only the event.
[[nodiscard]] Decoded<Event> decode_event_fields(std::string_view fields);

// "success", "retry", "permanent" for logs.
const char* outcome_name(Outcome outcome);

// Makes a string safe to store: invalid UTF-8 and NUL bytes become U+FFFD, and a string longer
// than max_bytes is cut at a UTF-8 boundary and marked " [truncated]" (within max_bytes).
// Idempotent: a string it returned comes back unchanged.
std::string bounded_error(std::string_view error, size_t max_bytes = kMaxErrorBytes);

} // namespace outbox
