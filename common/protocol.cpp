#include "common/protocol.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace outbox {

namespace {

// cJSON keeps numbers as doubles, which hold every integer up to 2^53 exactly; larger values in a
// frame could only come from a bug, so they are rejected rather than rounded.
constexpr double kMaxExactInteger = 9007199254740992.0;

constexpr std::string_view kTruncatedMarker = " [truncated]";

// The fixed parts of an EVENT body around the two numbers and the event object. The worst case
// of each number is 20 characters (UINT64_MAX, or LONG_MIN with its sign).
constexpr std::string_view kEventPrefix = "{\"seq\":";
constexpr std::string_view kEventTimeout = ",\"timeoutMs\":";
constexpr std::string_view kEventObject = ",\"event\":";
constexpr std::string_view kEventSuffix = "}";
constexpr size_t kMaxNumberChars = 20;
constexpr size_t kEventFrameOverhead = 1 + kEventPrefix.size() + kMaxNumberChars +
                                       kEventTimeout.size() + kMaxNumberChars +
                                       kEventObject.size() + kEventSuffix.size();

bool is_known_type(char type) {
    switch (static_cast<MessageType>(type)) {
    case MessageType::hello:
    case MessageType::event:
    case MessageType::result:
    case MessageType::quit:
        return true;
    }
    return false;
}

std::string frame_bytes(MessageType type, std::string_view json_body) {
    const size_t length = 1 + json_body.size();
    std::string frame;
    frame.reserve(kFrameHeaderSize + length);
    frame += static_cast<char>((length >> 24) & 0xff);
    frame += static_cast<char>((length >> 16) & 0xff);
    frame += static_cast<char>((length >> 8) & 0xff);
    frame += static_cast<char>(length & 0xff);
    frame += static_cast<char>(type);
    frame += json_body;
    return frame;
}

// An integer member within [min, max]; the error names the field and what was expected.
Decoded<int64_t> integer_member(const cJSON* object, const char* key, int64_t min, int64_t max) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (item == nullptr) {
        return Decoded<int64_t>::failure(std::string("field \"") + key + "\" is missing");
    }
    const double value = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    // NAN fails every comparison below, so a non-number is rejected with the same message.
    if (!(std::floor(value) == value && value >= static_cast<double>(min) &&
          value <= static_cast<double>(max) && std::fabs(value) <= kMaxExactInteger)) {
        return Decoded<int64_t>::failure(std::string("field \"") + key +
                                         "\" must be an integer in [" + std::to_string(min) + ", " +
                                         std::to_string(max) + "]");
    }
    return Decoded<int64_t>::success(static_cast<int64_t>(value));
}

Decoded<std::string> string_member(const cJSON* object, const char* key) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (item == nullptr) {
        return Decoded<std::string>::failure(std::string("field \"") + key + "\" is missing");
    }
    if (!cJSON_IsString(item) || item->valuestring == nullptr) {
        return Decoded<std::string>::failure(std::string("field \"") + key + "\" must be a string");
    }
    return Decoded<std::string>::success(item->valuestring);
}

// Every decode_* error starts with the message name, so that a log line says which message of
// the conversation was wrong.
template <typename T>
Decoded<T> message_error(MessageType type, const std::string& error) {
    return Decoded<T>::failure(std::string(message_type_name(type)) + ": " + error);
}

template <typename T>
Decoded<T> wrong_type(MessageType expected, const Frame& frame) {
    return Decoded<T>::failure(std::string("expected a ") + message_type_name(expected) +
                               " frame, got " + message_type_name(frame.type));
}

// Length of the valid UTF-8 sequence at text[i], or 0 when the bytes there are not one (overlong
// forms, surrogates and code points above U+10FFFF included, following RFC 3629).
size_t utf8_sequence_length(std::string_view text, size_t i) {
    const auto byte = [&](size_t k) {
        return static_cast<unsigned char>(text[k]);
    };
    const unsigned char lead = byte(i);
    size_t length = 0;
    unsigned char second_min = 0x80;
    unsigned char second_max = 0xbf;
    if (lead < 0x80) {
        return 1;
    } else if (lead >= 0xc2 && lead <= 0xdf) {
        length = 2;
    } else if (lead >= 0xe0 && lead <= 0xef) {
        length = 3;
        if (lead == 0xe0) {
            second_min = 0xa0;
        } else if (lead == 0xed) {
            second_max = 0x9f;
        }
    } else if (lead >= 0xf0 && lead <= 0xf4) {
        length = 4;
        if (lead == 0xf0) {
            second_min = 0x90;
        } else if (lead == 0xf4) {
            second_max = 0x8f;
        }
    } else {
        return 0;
    }
    if (i + length > text.size()) {
        return 0;
    }
    if (byte(i + 1) < second_min || byte(i + 1) > second_max) {
        return 0;
    }
    for (size_t k = 2; k < length; ++k) {
        if (byte(i + k) < 0x80 || byte(i + k) > 0xbf) {
            return 0;
        }
    }
    return length;
}

bool is_json_whitespace(char c) {
    // cJSON skips every byte up to and including the space as whitespace; the member scanner
    // must accept the same texts that cJSON accepted.
    return static_cast<unsigned char>(c) <= 0x20;
}

size_t skip_whitespace(std::string_view text, size_t i) {
    while (i < text.size() && is_json_whitespace(text[i])) {
        ++i;
    }
    return i;
}

// One past the closing quote of the string that opens at text[i], or npos.
size_t skip_string(std::string_view text, size_t i) {
    for (++i; i < text.size(); ++i) {
        if (text[i] == '\\') {
            ++i;
        } else if (text[i] == '"') {
            return i + 1;
        }
    }
    return std::string_view::npos;
}

// One past the end of the JSON value that starts at text[i], or npos.
size_t skip_value(std::string_view text, size_t i) {
    if (i >= text.size()) {
        return std::string_view::npos;
    }
    if (text[i] == '"') {
        return skip_string(text, i);
    }
    if (text[i] == '{' || text[i] == '[') {
        size_t depth = 0;
        while (i < text.size()) {
            const char c = text[i];
            if (c == '"') {
                i = skip_string(text, i);
                if (i == std::string_view::npos) {
                    return i;
                }
                continue;
            }
            if (c == '{' || c == '[') {
                ++depth;
            } else if (c == '}' || c == ']') {
                if (--depth == 0) {
                    return i + 1;
                }
            }
            ++i;
        }
        return std::string_view::npos;
    }
    // A number or a literal runs to the next delimiter.
    while (i < text.size() && text[i] != ',' && text[i] != '}' && text[i] != ']' &&
           !is_json_whitespace(text[i])) {
        ++i;
    }
    return i;
}

bool key_equals(std::string_view raw_key, std::string_view key) {
    if (raw_key.find('\\') == std::string_view::npos) {
        // cJSON keeps keys as C strings, so a raw NUL byte in a key ends the key it looks up by;
        // comparing past it would skip the member cJSON finds and return a later one.
        return raw_key.substr(0, raw_key.find('\0')) == key;
    }
    // An escaped key is rare enough to let cJSON unescape it.
    const Json parsed = json_parse("\"" + std::string(raw_key) + "\"");
    return parsed && cJSON_IsString(parsed.get()) && key == parsed->valuestring;
}

} // namespace

void abort_on_failed_decode(const std::string& error) {
    std::fprintf(stderr, "outbox: value() read from a failed decode: %s\n", error.c_str());
    std::abort();
}

const char* message_type_name(MessageType type) {
    switch (type) {
    case MessageType::hello:
        return "HELLO";
    case MessageType::event:
        return "EVENT";
    case MessageType::result:
        return "RESULT";
    case MessageType::quit:
        return "QUIT";
    }
    return "UNKNOWN";
}

const char* outcome_name(Outcome outcome) {
    switch (outcome) {
    case Outcome::success:
        return "success";
    case Outcome::retry:
        return "retry";
    case Outcome::permanent:
        return "permanent";
    }
    return "unknown";
}

// ---- FrameDecoder --------------------------------------------------------------------------

void FrameDecoder::feed(const char* data, size_t size) {
    if (failed_) {
        return;
    }
    buffer_.append(data, size);
}

FrameDecoder::Next FrameDecoder::fail(std::string reason) {
    failed_ = true;
    error_ = std::move(reason);
    // The channel is going to be closed; whatever else arrived is of no use.
    buffer_.clear();
    buffer_.shrink_to_fit();
    offset_ = 0;
    Next next;
    next.status = Status::error;
    next.error = error_;
    return next;
}

FrameDecoder::Next FrameDecoder::next() {
    if (failed_) {
        Next next;
        next.status = Status::error;
        next.error = error_;
        return next;
    }
    const size_t available = buffer_.size() - offset_;
    const auto* bytes = reinterpret_cast<const unsigned char*>(buffer_.data() + offset_);
    if (available >= kFrameHeaderSize) {
        const uint32_t length = (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) |
                                (uint32_t{bytes[2]} << 8) | uint32_t{bytes[3]};
        // Checked before any of the body arrives, so a bogus length never makes us buffer it.
        if (length < kMinFrameBody || length > kMaxFrameBody) {
            return fail("frame length " + std::to_string(length) +
                        " is outside the allowed range [" + std::to_string(kMinFrameBody) + ", " +
                        std::to_string(kMaxFrameBody) + "]");
        }
        if (available > kFrameHeaderSize && !is_known_type(static_cast<char>(bytes[4]))) {
            char code[8];
            std::snprintf(code, sizeof code, "0x%02x", bytes[4]);
            return fail(std::string("unknown message type byte ") + code);
        }
        if (available - kFrameHeaderSize >= length) {
            const std::string_view body(buffer_.data() + offset_ + kFrameHeaderSize + 1,
                                        length - 1);
            Next next;
            next.status = Status::frame;
            next.frame.type = static_cast<MessageType>(bytes[4]);
            next.frame.json = json_parse(body);
            if (!next.frame.json) {
                return fail(std::string(message_type_name(next.frame.type)) +
                            " frame body is not valid JSON");
            }
            if (!cJSON_IsObject(next.frame.json.get())) {
                return fail(std::string(message_type_name(next.frame.type)) +
                            " frame body is not a JSON object");
            }
            next.frame.body.assign(body);
            offset_ += kFrameHeaderSize + length;
            if (offset_ == buffer_.size()) {
                buffer_.clear();
                offset_ = 0;
            }
            return next;
        }
    }
    // Waiting for more bytes: move the partial frame to the front, so that the consumed prefix
    // does not grow without bound. Each byte is moved at most once per frame boundary it crosses.
    if (offset_ > 0) {
        buffer_.erase(0, offset_);
        offset_ = 0;
    }
    return Next{};
}

// ---- encoders ------------------------------------------------------------------------------

std::string encode_hello(const HelloMsg& hello) {
    return frame_bytes(MessageType::hello, "{\"pid\":" + std::to_string(hello.pid) +
                                               ",\"protocol\":" + std::to_string(hello.protocol) +
                                               "}");
}

std::string encode_result(const ResultMsg& result) {
    std::string body = "{\"seq\":" + std::to_string(result.seq) + ",\"outcome\":\"" +
                       outcome_name(result.outcome) +
                       "\",\"error\":" + json_quote(bounded_error(result.error)) +
                       ",\"retryAfterMs\":" + std::to_string(result.retry_after_ms) +
                       ",\"startedAtUs\":" + std::to_string(result.started_at_us) +
                       ",\"durationUs\":" + std::to_string(result.duration_us) + "}";
    return frame_bytes(MessageType::result, body);
}

std::string encode_quit() {
    return frame_bytes(MessageType::quit, "{}");
}

std::string encode_event(const EventMsg& event) {
    return encode_event_frame(event.seq, event.timeout_ms, event.event_json);
}

bool event_fits_in_frame(size_t event_json_size) {
    return event_json_size <= kMaxFrameBody - kEventFrameOverhead;
}

std::string encode_event_frame(uint64_t seq, long timeout_ms, std::string_view event_json) {
    if (!event_fits_in_frame(event_json.size())) {
        std::fprintf(stderr,
                     "outbox: encode_event_frame called with a %zu-byte event, which does not fit "
                     "in a frame; the caller must check event_fits_in_frame first\n",
                     event_json.size());
        std::abort();
    }
    const std::string seq_text = std::to_string(seq);
    const std::string timeout_text = std::to_string(timeout_ms);
    std::string body;
    body.reserve(kEventFrameOverhead + event_json.size());
    body += kEventPrefix;
    body += seq_text;
    body += kEventTimeout;
    body += timeout_text;
    body += kEventObject;
    body += event_json;
    body += kEventSuffix;
    return frame_bytes(MessageType::event, body);
}

// ---- decoders ------------------------------------------------------------------------------

Decoded<HelloMsg> decode_hello(const Frame& frame) {
    if (frame.type != MessageType::hello) {
        return wrong_type<HelloMsg>(MessageType::hello, frame);
    }
    const auto pid = integer_member(frame.json.get(), "pid", 1, INT32_MAX);
    if (!pid) {
        return message_error<HelloMsg>(frame.type, pid.error());
    }
    const auto protocol = integer_member(frame.json.get(), "protocol", 0, INT32_MAX);
    if (!protocol) {
        return message_error<HelloMsg>(frame.type, protocol.error());
    }
    if (protocol.value() != kProtocolVersion) {
        return message_error<HelloMsg>(frame.type, "handler process speaks protocol version " +
                                                       std::to_string(protocol.value()) +
                                                       ", the supervisor speaks version " +
                                                       std::to_string(kProtocolVersion));
    }
    HelloMsg hello;
    hello.pid = static_cast<long>(pid.value());
    hello.protocol = static_cast<int>(protocol.value());
    return Decoded<HelloMsg>::success(hello);
}

Decoded<EventMsg> decode_event(const Frame& frame) {
    if (frame.type != MessageType::event) {
        return wrong_type<EventMsg>(MessageType::event, frame);
    }
    const cJSON* object = frame.json.get();
    const auto seq = integer_member(object, "seq", 0, INT64_MAX);
    if (!seq) {
        return message_error<EventMsg>(frame.type, seq.error());
    }
    const auto timeout = integer_member(object, "timeoutMs", 0, INT64_MAX);
    if (!timeout) {
        return message_error<EventMsg>(frame.type, timeout.error());
    }
    const cJSON* event = cJSON_GetObjectItemCaseSensitive(object, "event");
    if (event == nullptr) {
        return message_error<EventMsg>(frame.type, "field \"event\" is missing");
    }
    if (!cJSON_IsObject(event)) {
        return message_error<EventMsg>(frame.type, "field \"event\" must be an object");
    }
    const auto event_text = json_member_text(frame.body, "event");
    if (!event_text) {
        // cJSON found the member, so the scanner must too; if not, the two disagree about the text.
        return message_error<EventMsg>(frame.type,
                                       "field \"event\" could not be located in the body");
    }
    EventMsg message;
    message.seq = static_cast<uint64_t>(seq.value());
    message.timeout_ms = static_cast<long>(timeout.value());
    message.event_json.assign(*event_text);
    message.event = event;
    return Decoded<EventMsg>::success(std::move(message));
}

Decoded<ResultMsg> decode_result(const Frame& frame) {
    if (frame.type != MessageType::result) {
        return wrong_type<ResultMsg>(MessageType::result, frame);
    }
    const cJSON* object = frame.json.get();
    const auto seq = integer_member(object, "seq", 0, INT64_MAX);
    if (!seq) {
        return message_error<ResultMsg>(frame.type, seq.error());
    }
    const auto outcome = string_member(object, "outcome");
    if (!outcome) {
        return message_error<ResultMsg>(frame.type, outcome.error());
    }
    ResultMsg result;
    if (outcome.value() == "success") {
        result.outcome = Outcome::success;
    } else if (outcome.value() == "retry") {
        result.outcome = Outcome::retry;
    } else if (outcome.value() == "permanent") {
        result.outcome = Outcome::permanent;
    } else {
        return message_error<ResultMsg>(
            frame.type, "field \"outcome\" must be \"success\", \"retry\" or \"permanent\"");
    }
    const auto error = string_member(object, "error");
    if (!error) {
        return message_error<ResultMsg>(frame.type, error.error());
    }
    const auto retry_after = integer_member(object, "retryAfterMs", 0, INT64_MAX);
    if (!retry_after) {
        return message_error<ResultMsg>(frame.type, retry_after.error());
    }
    const auto started_at = integer_member(object, "startedAtUs", 0, INT64_MAX);
    if (!started_at) {
        return message_error<ResultMsg>(frame.type, started_at.error());
    }
    const auto duration = integer_member(object, "durationUs", 0, INT64_MAX);
    if (!duration) {
        return message_error<ResultMsg>(frame.type, duration.error());
    }
    result.seq = static_cast<uint64_t>(seq.value());
    // The encoder already bounds the error; bounding it again keeps the limit an invariant of
    // everything the supervisor stores, whatever the other end sent.
    result.error = bounded_error(error.value());
    result.retry_after_ms = static_cast<long>(retry_after.value());
    result.started_at_us = started_at.value();
    result.duration_us = duration.value();
    return Decoded<ResultMsg>::success(std::move(result));
}

Decoded<QuitMsg> decode_quit(const Frame& frame) {
    if (frame.type != MessageType::quit) {
        return wrong_type<QuitMsg>(MessageType::quit, frame);
    }
    return Decoded<QuitMsg>::success(QuitMsg{});
}

// ---- helpers -------------------------------------------------------------------------------

std::string bounded_error(std::string_view error, size_t max_bytes) {
    static constexpr std::string_view kReplacement = "\xef\xbf\xbd"; // U+FFFD
    std::string out;
    out.reserve(std::min(error.size(), max_bytes) + kReplacement.size());
    size_t i = 0;
    // Sanitising stops as soon as the output is over the bound: the rest would be cut anyway.
    while (i < error.size() && out.size() <= max_bytes) {
        const size_t length = error[i] == '\0' ? 0 : utf8_sequence_length(error, i);
        if (length == 0) {
            out += kReplacement;
            ++i;
        } else {
            out.append(error, i, length);
            i += length;
        }
    }
    if (i == error.size() && out.size() <= max_bytes) {
        return out;
    }
    // Too long: cut so that the marker fits, backing off to the start of a UTF-8 sequence (the
    // output is valid UTF-8 by now, so stepping over continuation bytes finds one).
    const bool marker_fits = max_bytes >= kTruncatedMarker.size();
    size_t cut = marker_fits ? max_bytes - kTruncatedMarker.size() : max_bytes;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xc0) == 0x80) {
        --cut;
    }
    out.resize(cut);
    if (marker_fits) {
        out += kTruncatedMarker;
    }
    return out;
}

std::optional<std::string_view> json_member_text(std::string_view object_text,
                                                 std::string_view key) {
    size_t i = skip_whitespace(object_text, 0);
    if (i >= object_text.size() || object_text[i] != '{') {
        return std::nullopt;
    }
    i = skip_whitespace(object_text, i + 1);
    while (i < object_text.size() && object_text[i] == '"') {
        const size_t key_end = skip_string(object_text, i);
        if (key_end == std::string_view::npos) {
            return std::nullopt;
        }
        const bool wanted = key_equals(object_text.substr(i + 1, key_end - i - 2), key);
        i = skip_whitespace(object_text, key_end);
        if (i >= object_text.size() || object_text[i] != ':') {
            return std::nullopt;
        }
        const size_t value_start = skip_whitespace(object_text, i + 1);
        const size_t value_end = skip_value(object_text, value_start);
        if (value_end == std::string_view::npos) {
            return std::nullopt;
        }
        if (wanted) {
            return object_text.substr(value_start, value_end - value_start);
        }
        i = skip_whitespace(object_text, value_end);
        if (i >= object_text.size() || object_text[i] != ',') {
            return std::nullopt;
        }
        i = skip_whitespace(object_text, i + 1);
    }
    return std::nullopt;
}

} // namespace outbox
