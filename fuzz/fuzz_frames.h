// Fuzz entry for the channel protocol (common/protocol.h) and the event object decoder
// (worker/event_decode.h). fuzz/fuzz_frames.cpp hands it libFuzzer's inputs;
// tests/unit/fuzz_regressions_test.cpp replays saved inputs through it.
//
// Every input is read two ways, so that one corpus serves both decoders:
// - as the bytes a channel delivered: fed to one FrameDecoder at once and to another in small
//   pieces, which must agree, and every frame goes through every decode_*();
// - as the text of an event object, as the worker receives it: decode_event_json(), plus the
//   member scanner json_member_text() and bounded_error() on the same bytes.
#pragma once

#include "common/json.h"
#include "common/protocol.h"
#include "fuzz/fuzz_check.h"
#include "worker/event_decode.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox::fuzz {

namespace frames_detail {

// RFC 3629 UTF-8, written independently of protocol.cpp so that it can judge bounded_error().
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

inline bool starts_with_bom(std::string_view text) {
    return text.substr(0, 3) == "\xef\xbb\xbf";
}

// Two JSON values are the same when cJSON prints them alike. cJSON_Compare would do, except that
// it looks members up by key, so an object with a repeated key never equals itself.
inline bool same_json(const cJSON* a, const cJSON* b) {
    return a != nullptr && b != nullptr && json_print(a) == json_print(b);
}

// json_member_text() must hand on exactly the member that cJSON_GetObjectItemCaseSensitive()
// finds, or a handler would receive a different payload from the one the event holds. `object`
// is `text` parsed. The scanner may fail to find a member (decode_event then reports an error)
// only where it is documented not to follow cJSON: a text that starts with a byte order mark.
inline void check_member_texts(const cJSON* object, std::string_view text) {
    for (const cJSON* item = object->child; item != nullptr; item = item->next) {
        if (item->string == nullptr) {
            continue;
        }
        const cJSON* first = cJSON_GetObjectItemCaseSensitive(object, item->string);
        const auto found = json_member_text(text, item->string);
        if (!found) {
            OUTBOX_FUZZ_CHECK(starts_with_bom(text),
                              "json_member_text missed a member that cJSON found");
            continue;
        }
        const Json reparsed = json_parse(*found);
        OUTBOX_FUZZ_CHECK(same_json(reparsed.get(), first),
                          "json_member_text returned another value than cJSON's member");
    }
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
        if (text.size() <= max_bytes && is_valid_utf8(text) &&
            text.find('\0') == std::string_view::npos) {
            OUTBOX_FUZZ_CHECK(bounded == text, "bounded_error changed a string that was fine");
        }
    }
}

inline bool same_event(const Event& a, const Event& b) {
    return a.id == b.id && a.event_log_id == b.event_log_id && a.event_key == b.event_key &&
           a.tenant_id == b.tenant_id && a.project_id == b.project_id &&
           a.event_type == b.event_type && a.payload_json == b.payload_json &&
           a.metadata_json == b.metadata_json && a.correlation_id == b.correlation_id &&
           a.created_at == b.created_at && a.attempt == b.attempt && a.json == b.json;
}

// What a decoded event promises: payload and metadata are verbatim members of its text.
inline void check_decoded_event(const Event& event, const cJSON* object, std::string_view text) {
    OUTBOX_FUZZ_CHECK(event.json == text, "Event::json is not the text it was decoded from");
    OUTBOX_FUZZ_CHECK(event.attempt >= 1, "Event::attempt below 1");
    const Json payload = json_parse(event.payload_json);
    OUTBOX_FUZZ_CHECK(same_json(payload.get(), cJSON_GetObjectItemCaseSensitive(object, "payload")),
                      "Event::payload_json differs from the event's payload");
    const cJSON* metadata = cJSON_GetObjectItemCaseSensitive(object, "metadata");
    if (metadata == nullptr || cJSON_IsNull(metadata)) {
        OUTBOX_FUZZ_CHECK(event.metadata_json == "null", "absent metadata is not \"null\"");
    } else {
        const Json parsed = json_parse(event.metadata_json);
        OUTBOX_FUZZ_CHECK(same_json(parsed.get(), metadata),
                          "Event::metadata_json differs from the event's metadata");
    }
}

// The single frame in `bytes`, which an encoder produced.
inline Frame decode_encoded(const std::string& bytes) {
    FrameDecoder decoder;
    decoder.feed(bytes.data(), bytes.size());
    FrameDecoder::Next next = decoder.next();
    OUTBOX_FUZZ_CHECK(next.status == FrameDecoder::Status::frame,
                      "an encoded frame did not decode");
    OUTBOX_FUZZ_CHECK(decoder.buffered() == 0, "an encoded frame left bytes behind");
    return std::move(next.frame);
}

inline void check_hello(const Frame& frame) {
    const auto hello = decode_hello(frame);
    if (!hello) {
        return;
    }
    OUTBOX_FUZZ_CHECK(hello.value().pid >= 1 && hello.value().protocol == kProtocolVersion,
                      "HELLO decoded out of range");
    const auto again = decode_hello(decode_encoded(encode_hello(hello.value())));
    OUTBOX_FUZZ_CHECK(again && again.value().pid == hello.value().pid,
                      "HELLO does not survive a re-encoding");
}

inline void check_event(const Frame& frame) {
    const auto message = decode_event(frame);
    if (!message) {
        return;
    }
    const EventMsg& event = message.value();
    const Json verbatim = json_parse(event.event_json);
    OUTBOX_FUZZ_CHECK(same_json(verbatim.get(), event.event),
                      "EVENT event_json is not the event member");

    // The worker decodes from the frame's tree and text; both routes must give the same Event.
    const auto from_object = decode_event_object(event.event, event.event_json);
    const auto from_text = decode_event_json(event.event_json);
    OUTBOX_FUZZ_CHECK(from_object.ok() == from_text.ok(),
                      "decode_event_object and decode_event_json disagree");
    if (from_object) {
        OUTBOX_FUZZ_CHECK(same_event(from_object.value(), from_text.value()),
                          "decode_event_object and decode_event_json decode differently");
        check_decoded_event(from_object.value(), event.event, event.event_json);
    }

    if (event_fits_in_frame(event.event_json.size())) {
        const Frame frame_again = decode_encoded(encode_event(event));
        const auto again = decode_event(frame_again);
        OUTBOX_FUZZ_CHECK(again && again.value().seq == event.seq &&
                              again.value().timeout_ms == event.timeout_ms &&
                              again.value().event_json == event.event_json,
                          "EVENT does not survive a re-encoding");
    }
}

inline void check_result(const Frame& frame) {
    const auto result = decode_result(frame);
    if (!result) {
        return;
    }
    const ResultMsg& message = result.value();
    OUTBOX_FUZZ_CHECK(message.error.size() <= kMaxErrorBytes && is_valid_utf8(message.error) &&
                          message.error.find('\0') == std::string::npos,
                      "RESULT error is not bounded and sanitised");
    const auto again = decode_result(decode_encoded(encode_result(message)));
    OUTBOX_FUZZ_CHECK(again && again.value().seq == message.seq &&
                          again.value().outcome == message.outcome &&
                          again.value().error == message.error &&
                          again.value().retry_after_ms == message.retry_after_ms &&
                          again.value().started_at_us == message.started_at_us &&
                          again.value().duration_us == message.duration_us,
                      "RESULT does not survive a re-encoding");
}

inline void check_frame(const Frame& frame) {
    OUTBOX_FUZZ_CHECK(cJSON_IsObject(frame.json.get()), "a frame's body is not an object");
    const Json reparsed = json_parse(frame.body);
    OUTBOX_FUZZ_CHECK(same_json(reparsed.get(), frame.json.get()),
                      "a frame's json is not its body");
    check_member_texts(frame.json.get(), frame.body);

    // Only the decoder of the frame's own type may accept it (and may still refuse its fields).
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::hello || !decode_hello(frame).ok(),
                      "decode_hello accepted another type");
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::event || !decode_event(frame).ok(),
                      "decode_event accepted another type");
    OUTBOX_FUZZ_CHECK(frame.type == MessageType::result || !decode_result(frame).ok(),
                      "decode_result accepted another type");
    OUTBOX_FUZZ_CHECK((frame.type == MessageType::quit) == decode_quit(frame).ok(),
                      "decode_quit disagrees with the frame type");

    check_hello(frame);
    check_event(frame);
    check_result(frame);
}

struct StreamOutcome {
    std::vector<std::pair<MessageType, std::string>> frames;
    bool failed = false;
    std::string error;
    std::size_t buffered = 0;
};

// Feeds `input` in pieces of the given sizes (repeated), taking every frame after each piece the
// way a channel owner does after each read. An empty `pieces` feeds everything at once. Each
// frame is handed to `on_frame` before the next one is decoded, because an EVENT's parsed event
// borrows from its Frame.
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
                OUTBOX_FUZZ_CHECK(!next.error.empty(), "a decoder error without a reason");
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

    // The same bytes as an event object's text.
    const auto decoded = decode_event_json(input);
    const Json object = json_parse(input);
    if (decoded) {
        OUTBOX_FUZZ_CHECK(cJSON_IsObject(object.get()), "decoded an event that is not an object");
        check_decoded_event(decoded.value(), object.get(), input);
    } else {
        OUTBOX_FUZZ_CHECK(!decoded.error().empty(), "an event decode error without a reason");
    }
    if (cJSON_IsObject(object.get())) {
        check_member_texts(object.get(), input);
    }
    check_bounded_error(input);
}

} // namespace outbox::fuzz
