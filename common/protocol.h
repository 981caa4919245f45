// The channel protocol between the supervisor and a handler process (docs/protocol.md).
//
// A channel is one SOCK_STREAM socketpair per handler process. Each message is a frame: a 4-byte
// unsigned big-endian length L, then L bytes of body; the body is one type byte followed by a JSON
// object. Both sides use the encoders and the FrameDecoder below, so the byte layout lives only
// here. Nothing in this header does I/O: the owner of the channel reads and writes, feeds what it
// read to a FrameDecoder and closes the channel when the decoder reports an error.
//
// Everything here is usable from any thread; a FrameDecoder belongs to the one channel it decodes.
#pragma once

#include "common/json.h"
#include <outbox/outbox.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace outbox {

// Bumped whenever a message changes incompatibly; HELLO carries it.
inline constexpr int kProtocolVersion = 1;

inline constexpr size_t kFrameHeaderSize = 4;
// The smallest body is a type byte plus "{}".
inline constexpr size_t kMinFrameBody = 3;
inline constexpr size_t kMaxFrameBody = 16 * 1024 * 1024;
// RESULT error strings are cut to at most this many bytes (at a UTF-8 boundary) by the encoder,
// and again by the decoder, so that the supervisor never stores an unbounded error.
inline constexpr size_t kMaxErrorBytes = 4096;

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
};

// "HELLO", "EVENT", ... for log lines and error messages.
const char* message_type_name(MessageType type);

struct HelloMsg {
    long pid = 0;
    int protocol = kProtocolVersion;
};

struct EventMsg {
    uint64_t seq = 0;    // chosen by the supervisor, echoed in the RESULT
    long timeout_ms = 0; // enforced by the supervisor, which kills the process; informational here
    std::string event_json; // the event object of SPEC 2, verbatim as the supervisor sent it
    // The same object parsed, borrowed from the Frame it was decoded from and valid only while
    // that Frame lives; nullptr in a message built for encoding (encoders use event_json).
    const cJSON* event = nullptr;
};

struct ResultMsg {
    uint64_t seq = 0;
    Outcome outcome = Outcome::success;
    std::string error;
    long retry_after_ms = 0;
    int64_t started_at_us = 0; // CLOCK_REALTIME microseconds when the handlers started
    int64_t duration_us = 0;   // how long they ran
};

struct QuitMsg {};

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

// One complete frame as FrameDecoder returns it. `json` is `body` already parsed (always a JSON
// object), so that decoders do not parse a large EVENT twice; `body` is kept because an EVENT's
// event object is handed on verbatim.
struct Frame {
    MessageType type = MessageType::quit;
    std::string body; // the JSON text after the type byte
    Json json;
};

// Incremental decoder for one direction of one channel. Feed it whatever read() returned, then
// call next() until it says need_more. It checks the length as soon as the 4 header bytes are in,
// the type byte, and that the body is a JSON object; message fields are checked by decode_*().
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
std::string encode_result(const ResultMsg& result); // truncates and sanitises result.error
std::string encode_quit();
std::string encode_event(const EventMsg& event);

// The supervisor holds the event object as JSON text straight from PostgreSQL, so the EVENT frame
// is built by concatenation, without parsing it. Preconditions: event_json is one JSON object, and
// event_fits_in_frame(event_json.size()); the process aborts when the size does not fit. An
// oversized event must instead be failed permanently by the caller, with a clear error.
std::string encode_event_frame(uint64_t seq, long timeout_ms, std::string_view event_json);
// Whether an event object of this many bytes fits in an EVENT frame whatever seq and timeout are.
bool event_fits_in_frame(size_t event_json_size);

// Field checks for each message type. A frame of another type is an error too, so a caller can
// pass whatever it received. decode_hello also rejects a protocol version other than ours.
[[nodiscard]] Decoded<HelloMsg> decode_hello(const Frame& frame);
[[nodiscard]] Decoded<EventMsg> decode_event(const Frame& frame);
[[nodiscard]] Decoded<ResultMsg> decode_result(const Frame& frame);
[[nodiscard]] Decoded<QuitMsg> decode_quit(const Frame& frame);

// "success", "retry", "permanent" as RESULT spells them.
const char* outcome_name(Outcome outcome);

// Makes an error string safe to store: invalid UTF-8 and NUL bytes become U+FFFD, and a string
// longer than max_bytes is cut at a UTF-8 boundary and marked " [truncated]" (within max_bytes).
std::string bounded_error(std::string_view error, size_t max_bytes = kMaxErrorBytes);

// The verbatim text of the value of member `key` of a JSON object text, or nullopt when the
// member is absent (or the text is not an object). The first member wins when a key repeats, as in
// cJSON_GetObjectItemCaseSensitive. Used to hand on payloads without a cJSON round trip, which
// would reformat numbers beyond double precision. Precondition: object_text is valid JSON.
std::optional<std::string_view> json_member_text(std::string_view object_text,
                                                 std::string_view key);

} // namespace outbox
