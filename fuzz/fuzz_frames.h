// Fuzz entry for the channel protocol (common/protocol.h) and the event object the handler process
// writes for exec and http handlers (common/json.h). fuzz/fuzz_frames.cpp hands it libFuzzer's
// inputs; tests/unit/fuzz_regressions_test.cpp replays saved inputs through it.
//
// Every input is read three ways, so that one corpus serves every decoder:
// - as the bytes a channel delivered: fed to one FrameDecoder at once and to another in small
//   pieces, which must agree, and every frame goes through every decode_*(). The encoding is
//   canonical, so an accepted message must re-encode to exactly the bytes it came from;
// - as the fields of an EVENT (decode_event_delivery), which must re-encode to themselves too,
//   whose event object (Event::json) must be valid JSON holding the same fields whenever the
//   payload and metadata are valid JSON, and whose subscribersDone list the handler process must
//   read as it would read the same names written by json_quote;
// - as a string: bounded_error() and json_quote() on the same bytes.
// Every error text must be printable ASCII: decoders name fields and numbers, never echo bytes.
//
// cJSON appears here as the judge of the JSON text the code writes; the only JSON the code under
// test parses is the subscribersDone list (parse_subscribers_done), never the event.
#pragma once

#include "common/json.h"
#include "common/protocol.h"
#include "fuzz/fuzz_check.h"
#include "worker/worker_process.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox::fuzz {

namespace frames_detail {

// RFC 3629 UTF-8, written independently of json.cpp so that it can judge bounded_error() and
// json_quote().
inline bool is_valid_utf8(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size()) {
        const auto lead = static_cast<unsigned char>(text[i]);
        std::size_t length = 0;
        std::uint32_t code_point = 0;
        if (lead < 0x80) {
            ++i;
            continue;
        }
        if ((lead & 0xe0) == 0xc0) {
            length = 2;
            code_point = lead & 0x1f;
        } else if ((lead & 0xf0) == 0xe0) {
            length = 3;
            code_point = lead & 0x0f;
        } else if ((lead & 0xf8) == 0xf0) {
            length = 4;
            code_point = lead & 0x07;
        } else {
            return false;
        }
        if (i + length > text.size()) {
            return false;
        }
        for (std::size_t k = 1; k < length; ++k) {
            const auto next = static_cast<unsigned char>(text[i + k]);
            if ((next & 0xc0) != 0x80) {
                return false;
            }
            code_point = (code_point << 6) | (next & 0x3f);
        }
        static constexpr std::uint32_t kSmallestOfLength[] = {0, 0, 0x80, 0x800, 0x10000};
        if (code_point < kSmallestOfLength[length] || code_point > 0x10ffff ||
            (code_point >= 0xd800 && code_point <= 0xdfff)) {
            return false;
        }
        i += length;
    }
    return true;
}

inline bool is_printable_ascii(std::string_view text) {
    return !text.empty() &&
           std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

// A string that JSON carries unchanged through cJSON (which keeps strings NUL-terminated).
inline bool survives_cjson(std::string_view text) {
    return is_valid_utf8(text) && text.find('\0') == std::string_view::npos;
}

// Two JSON values are the same when cJSON prints them alike. cJSON_Compare would do, except that
// it looks members up by key, so an object with a repeated key never equals itself.
inline bool same_json(const cJSON* a, const cJSON* b) {
    return a != nullptr && b != nullptr && json_print(a) == json_print(b);
}

inline void check_bounded_error(std::string_view text) {
    for (const std::size_t max_bytes :
         {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{11}, std::size_t{12},
          std::size_t{13}, std::size_t{40}, kMaxErrorBytes}) {
        const std::string bounded = bounded_error(text, max_bytes);
        OUTBOX_FUZZ_CHECK(bounded.size() <= max_bytes, "bounded_error exceeded its bound");
        OUTBOX_FUZZ_CHECK(is_valid_utf8(bounded), "bounded_error returned invalid UTF-8");
        OUTBOX_FUZZ_CHECK(bounded.find('\0') == std::string::npos, "bounded_error kept a NUL byte");
        OUTBOX_FUZZ_CHECK(bounded_error(bounded, max_bytes) == bounded,
                          "bounded_error is not idempotent");
        if (text.size() <= max_bytes && survives_cjson(text)) {
            OUTBOX_FUZZ_CHECK(bounded == text, "bounded_error changed a string that was fine");
        }
    }
}

inline void check_json_quote(std::string_view text) {
    const std::string quoted = json_quote(text);
    OUTBOX_FUZZ_CHECK(is_valid_utf8(quoted), "json_quote returned invalid UTF-8");
    const Json parsed = json_parse(quoted);
    OUTBOX_FUZZ_CHECK(cJSON_IsString(parsed.get()), "json_quote did not write a JSON string");
    if (survives_cjson(text)) {
        OUTBOX_FUZZ_CHECK(parsed->valuestring == text, "json_quote changed a valid string");
    }
}

inline bool same_event(const Event& a, const Event& b) {
    return a.id == b.id && a.event_log_id == b.event_log_id && a.event_key == b.event_key &&
           a.tenant_id == b.tenant_id && a.project_id == b.project_id &&
           a.event_type == b.event_type && a.payload_json == b.payload_json &&
           a.metadata_json == b.metadata_json && a.correlation_id == b.correlation_id &&
           a.created_at == b.created_at && a.attempt == b.attempt &&
           a.ordering_key == b.ordering_key;
}

inline void check_string_member(const cJSON* object, const char* key,
                                const std::optional<std::string>& expected) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, key);
    OUTBOX_FUZZ_CHECK(item != nullptr, "the event object lacks a field");
    if (!expected) {
        OUTBOX_FUZZ_CHECK(cJSON_IsNull(item), "a null field is not null in the event object");
        return;
    }
    OUTBOX_FUZZ_CHECK(cJSON_IsString(item), "a string field is not a string in the event object");
    if (survives_cjson(*expected)) {
        OUTBOX_FUZZ_CHECK(item->valuestring == *expected,
                          "a string field changed on its way into the event object");
    }
}

// How deeply a parsed value nests (a scalar is 0). cJSON built it, so it is at most cJSON's limit.
inline int nesting(const cJSON* item) {
    int deepest = 0;
    for (const cJSON* child = item->child; child != nullptr; child = child->next) {
        deepest = std::max(deepest, nesting(child));
    }
    return item->child != nullptr || cJSON_IsArray(item) || cJSON_IsObject(item) ? deepest + 1 : 0;
}

// Whether cJSON reads `text` alike on its own and as a member value: it skips a byte order mark
// only at the start of a document, and the event object adds one level of nesting to its limit.
inline bool comparable_member(const Json& parsed, std::string_view text) {
    return parsed && text.substr(0, 3) != "\xef\xbb\xbf" && nesting(parsed.get()) < 999;
}

// The event object of a decoded event: valid JSON with SPEC 2's fields, payload and metadata the
// very values the fields held, whenever those are JSON texts cJSON can read.
inline void check_event_object(const Event& event) {
    const Json payload = json_parse(event.payload_json);
    const Json metadata = json_parse(event.metadata_json);
    const std::string& text = event.json();
    OUTBOX_FUZZ_CHECK(text == event_object_json(event), "Event::json() is not the event object");
    if (!comparable_member(payload, event.payload_json) ||
        !comparable_member(metadata, event.metadata_json)) {
        return; // not JSON as cJSON reads it: nothing to compare with
    }
    const Json object = json_parse(text);
    OUTBOX_FUZZ_CHECK(cJSON_IsObject(object.get()), "the event object is not valid JSON");
    check_string_member(object.get(), "id", event.id);
    check_string_member(object.get(), "eventLogId", event.event_log_id);
    check_string_member(object.get(), "eventKey", event.event_key);
    check_string_member(object.get(), "tenantId", event.tenant_id);
    check_string_member(object.get(), "projectId", event.project_id);
    check_string_member(object.get(), "eventType", event.event_type);
    check_string_member(object.get(), "correlationId", event.correlation_id);
    check_string_member(object.get(), "createdAt", event.created_at);
    OUTBOX_FUZZ_CHECK(
        same_json(cJSON_GetObjectItemCaseSensitive(object.get(), "payload"), payload.get()),
        "the event object's payload is not the payload");
    OUTBOX_FUZZ_CHECK(
        same_json(cJSON_GetObjectItemCaseSensitive(object.get(), "metadata"), metadata.get()),
        "the event object's metadata is not the metadata");
    const cJSON* attempt = cJSON_GetObjectItemCaseSensitive(object.get(), "attempt");
    OUTBOX_FUZZ_CHECK(cJSON_IsNumber(attempt) && attempt->valuedouble == event.attempt,
                      "the event object's attempt is not the attempt");
}

// The subscribers an EVENT names as done, read the way the handler process reads them. Names
// written back as a JSON array by json_quote (as PostgreSQL's to_json writes them) must read the
// same, whenever cJSON can carry them unchanged.
inline void check_subscribers_done(std::string_view json) {
    const std::optional<SubscriberNames> names = parse_subscribers_done(json);
    if (!names) {
        return;
    }
    std::string again = "[";
    for (const std::string& name : *names) {
        if (!survives_cjson(name)) {
            return;
        }
        again += (again.size() > 1 ? "," : "") + json_quote(name);
    }
    again += "]";
    const std::optional<SubscriberNames> reread = parse_subscribers_done(again);
    OUTBOX_FUZZ_CHECK(reread && *reread == *names,
                      "subscribersDone names do not survive being written as JSON");
}

inline void check_event_fields(std::string_view fields) {
    const auto decoded = decode_event_delivery(fields);
    if (!decoded) {
        OUTBOX_FUZZ_CHECK(is_printable_ascii(decoded.error()),
                          "an event field error is not printable ASCII");
        const auto event_only = decode_event_fields(fields);
        OUTBOX_FUZZ_CHECK(!event_only && event_only.error() == decoded.error(),
                          "decode_event_fields and decode_event_delivery disagree");
        return;
    }
    const EventDelivery& delivery = decoded.value();
    const Event& event = delivery.event;
    OUTBOX_FUZZ_CHECK(event.attempt >= 1, "Event::attempt below 1");
    OUTBOX_FUZZ_CHECK(!event.payload_json.empty() && !event.metadata_json.empty(),
                      "an event with an empty payload or metadata was accepted");
    OUTBOX_FUZZ_CHECK(!delivery.subscribers_done_json ||
                          (!delivery.subscribers_done_json->empty() &&
                           delivery.subscribers_done_json->size() <= kMaxSubscribersDoneBytes),
                      "an empty or oversized subscribersDone was accepted");
    const std::string again = encode_event_fields(event_fields_of(delivery));
    // Metadata that is the JSON text "null" comes back as SQL NULL, the one encoding that is
    // not canonical; the event it decodes to is the same.
    if (event.metadata_json != "null") {
        OUTBOX_FUZZ_CHECK(again == fields, "event fields do not re-encode to themselves");
    }
    const auto redecoded = decode_event_delivery(again);
    OUTBOX_FUZZ_CHECK(redecoded && same_event(redecoded.value().event, event) &&
                          redecoded.value().subscribers_done_json == delivery.subscribers_done_json,
                      "event fields do not survive a re-encoding");
    const auto event_only = decode_event_fields(fields);
    OUTBOX_FUZZ_CHECK(event_only && same_event(event_only.value(), event),
                      "decode_event_fields and decode_event_delivery disagree");
    if (delivery.subscribers_done_json) {
        check_subscribers_done(*delivery.subscribers_done_json);
    }
    check_event_object(event);
}

// The bytes of `frame` as they came off the channel.
inline std::string frame_bytes(const Frame& frame) {
    const auto length = static_cast<std::uint32_t>(frame.body.size() + 1);
    std::string bytes;
    for (int shift = 24; shift >= 0; shift -= 8) {
        bytes += static_cast<char>((length >> shift) & 0xff);
    }
    bytes += static_cast<char>(frame.type);
    bytes += frame.body;
    return bytes;
}

template <typename T>
void check_decode_error(const Decoded<T>& decoded) {
    if (!decoded) {
        OUTBOX_FUZZ_CHECK(is_printable_ascii(decoded.error()),
                          "a decode error is not printable ASCII");
    }
}

inline void check_frame(const Frame& frame) {
    const auto hello = decode_hello(frame);
    const auto event = decode_event(frame);
    const auto result = decode_result(frame);
    const auto quit = decode_quit(frame);
    const auto status = decode_status(frame);
    check_decode_error(hello);
    check_decode_error(event);
    check_decode_error(result);
    check_decode_error(quit);
    check_decode_error(status);

    // Only the decoder of the frame's own type may accept it (and may still refuse its fields).
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::hello || !hello.ok(),
                      "decode_hello accepted another type");
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::event || !event.ok(),
                      "decode_event accepted another type");
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::result || !result.ok(),
                      "decode_result accepted another type");
    OUTBOX_FUZZ_CHECK(quit.ok() == (frame.type == MessageType::quit && frame.body.empty()),
                      "decode_quit disagrees with the frame");
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::status || !status.ok(),
                      "decode_status accepted another type");

    const std::string bytes = frame_bytes(frame);
    if (hello) {
        OUTBOX_FUZZ_CHECK(hello.value().pid >= 1 && hello.value().protocol == kProtocolVersion,
                          "HELLO decoded out of range");
        OUTBOX_FUZZ_CHECK(encode_hello(hello.value()) == bytes,
                          "HELLO does not re-encode to itself");
    }
    if (event) {
        OUTBOX_FUZZ_CHECK(event.value().timeout_ms >= 0, "EVENT timeout decoded negative");
        OUTBOX_FUZZ_CHECK(encode_event(event.value()) == bytes,
                          "EVENT does not re-encode to itself");
        check_event_fields(event.value().fields);
    }
    if (result) {
        const ResultMsg& message = result.value();
        OUTBOX_FUZZ_CHECK(message.error.size() <= kMaxErrorBytes && survives_cjson(message.error),
                          "RESULT error is not bounded and valid UTF-8 without NUL");
        OUTBOX_FUZZ_CHECK(bounded_error(message.error) == message.error,
                          "RESULT error would change if the supervisor sanitised it again");
        OUTBOX_FUZZ_CHECK(message.retry_after_ms >= 0 && message.started_at_us >= 0 &&
                              message.duration_us >= 0,
                          "RESULT numbers decoded negative");
        OUTBOX_FUZZ_CHECK(message.subscribers.size() <= kMaxSubscriberResults,
                          "RESULT holds too many subscriber outcomes");
        for (const SubscriberOutcome& subscriber : message.subscribers) {
            OUTBOX_FUZZ_CHECK(subscriber.name.size() <= kMaxSubscriberNameBytes &&
                                  survives_cjson(subscriber.name),
                              "RESULT subscriber name is not bounded and valid UTF-8");
        }
        OUTBOX_FUZZ_CHECK(encode_result(message) == bytes, "RESULT does not re-encode to itself");
    }
    if (status) {
        const StatusMsg& message = status.value();
        OUTBOX_FUZZ_CHECK(
            message.sink.size() <= kMaxSubscriberNameBytes && survives_cjson(message.sink) &&
                message.reason.size() <= kMaxStatusReasonBytes && survives_cjson(message.reason),
            "STATUS texts are not bounded and valid UTF-8 without NUL");
        OUTBOX_FUZZ_CHECK(encode_status(message) == bytes, "STATUS does not re-encode to itself");
    }
}

struct StreamOutcome {
    std::vector<std::pair<MessageType, std::string>> frames;
    bool failed = false;
    std::string error;
    std::size_t buffered = 0;
};

// Feeds `input` in pieces of the given sizes (repeated), taking every frame after each piece the
// way a channel owner does after each read. An empty `pieces` feeds everything at once. Each
// frame is handed to `on_frame` before the next one is decoded, as a channel owner would.
template <typename OnFrame>
StreamOutcome decode_stream(std::string_view input, const std::vector<std::size_t>& pieces,
                            OnFrame&& on_frame) {
    StreamOutcome outcome;
    FrameDecoder decoder;
    std::size_t offset = 0;
    std::size_t piece = 0;
    while (offset < input.size() && !outcome.failed) {
        std::size_t size = input.size() - offset;
        if (!pieces.empty()) {
            size = std::min(size, pieces[piece++ % pieces.size()]);
        }
        decoder.feed(input.data() + offset, size);
        offset += size;
        for (;;) {
            FrameDecoder::Next next = decoder.next();
            if (next.status == FrameDecoder::Status::need_more) {
                break;
            }
            if (next.status == FrameDecoder::Status::error) {
                OUTBOX_FUZZ_CHECK(is_printable_ascii(next.error),
                                  "a decoder error is not printable ASCII");
                OUTBOX_FUZZ_CHECK(decoder.failed() && decoder.buffered() == 0,
                                  "a failed decoder still holds input");
                // Failure is final: the owner closes the channel, later input changes nothing.
                decoder.feed(input.data(), input.size());
                const FrameDecoder::Next after = decoder.next();
                OUTBOX_FUZZ_CHECK(after.status == FrameDecoder::Status::error &&
                                      after.error == next.error,
                                  "a failed decoder recovered");
                outcome.failed = true;
                outcome.error = next.error;
                break;
            }
            on_frame(next.frame);
            outcome.frames.emplace_back(next.frame.type, std::move(next.frame.body));
        }
    }
    outcome.buffered = decoder.buffered();
    return outcome;
}

} // namespace frames_detail

inline void fuzz_frames(std::string_view input) {
    using namespace frames_detail;

    // The whole input in one read, checking every frame on the way.
    const StreamOutcome whole =
        decode_stream(input, {}, [](const Frame& frame) { check_frame(frame); });
    // The same bytes as reads of awkward sizes, splitting headers and bodies anywhere: the
    // decoder must not care where one read ends.
    const StreamOutcome pieces =
        decode_stream(input, {1, 3, 2, 7, 4, 1, 64, 5, 1024, 13}, [](const Frame&) {});
    OUTBOX_FUZZ_CHECK(whole.frames == pieces.frames,
                      "the frames depend on how the input was split into reads");
    OUTBOX_FUZZ_CHECK(whole.failed == pieces.failed && whole.error == pieces.error,
                      "the decoder's verdict depends on how the input was split into reads");
    OUTBOX_FUZZ_CHECK(whole.buffered == pieces.buffered,
                      "the bytes left over depend on how the input was split into reads");

    // The same bytes as an EVENT's fields, and as a string.
    check_event_fields(input);
    check_bounded_error(input);
    check_json_quote(input);
}

} // namespace outbox::fuzz
