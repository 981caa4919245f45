// Frames, messages and JSON helpers of the supervisor <-> handler process channel.
#include "common/json.h"
#include "common/protocol.h"
#include "worker/event_decode.h"

#include <catch2/catch.hpp>

#include <climits>
#include <cstdint>
#include <string>
#include <vector>

using namespace outbox;

namespace {

// An event object as the supervisor sends it: PostgreSQL's jsonb text (spaces after ':' and ','),
// with a payload number no double can hold, so that any re-serialisation would show.
const std::string kEventJson =
    R"({"id": "ob_1", "eventLogId": "el_1", "eventKey": "order-7", "tenantId": "t1", )"
    R"("projectId": null, "eventType": "shop.order.created", )"
    R"("payload": {"orderId": 12345678901234567890123, "note": "a \"quoted\" {brace}"}, )"
    R"("metadata": {"source": "api"}, "correlationId": "corr-9", )"
    R"("createdAt": "2024-05-01T12:00:00.000000Z", "attempt": 3})";

std::string header(uint32_t length) {
    std::string bytes(4, '\0');
    bytes[0] = static_cast<char>(length >> 24);
    bytes[1] = static_cast<char>(length >> 16);
    bytes[2] = static_cast<char>(length >> 8);
    bytes[3] = static_cast<char>(length);
    return bytes;
}

std::string raw_frame(char type, const std::string& body) {
    return header(static_cast<uint32_t>(body.size() + 1)) + type + body;
}

// Decodes a complete buffer, requiring that it holds only whole, valid frames.
std::vector<Frame> decode_all(const std::string& bytes) {
    FrameDecoder decoder;
    decoder.feed(bytes.data(), bytes.size());
    std::vector<Frame> frames;
    for (;;) {
        FrameDecoder::Next next = decoder.next();
        REQUIRE(next.status != FrameDecoder::Status::error);
        if (next.status == FrameDecoder::Status::need_more) {
            break;
        }
        frames.push_back(std::move(next.frame));
    }
    REQUIRE(decoder.buffered() == 0);
    return frames;
}

Frame decode_one(const std::string& bytes) {
    std::vector<Frame> frames = decode_all(bytes);
    REQUIRE(frames.size() == 1);
    return std::move(frames[0]);
}

// The error a decoder reports for `bytes`, or "" when it reports none.
std::string decoder_error(const std::string& bytes) {
    FrameDecoder decoder;
    decoder.feed(bytes.data(), bytes.size());
    for (;;) {
        FrameDecoder::Next next = decoder.next();
        if (next.status == FrameDecoder::Status::error) {
            return next.error;
        }
        if (next.status == FrameDecoder::Status::need_more) {
            return "";
        }
    }
}

bool valid_utf8(const std::string& text) {
    // Checked with a plain decoder independent of the one under test: lead byte, continuation
    // bytes, no overlong forms, no surrogates, at most U+10FFFF.
    size_t i = 0;
    while (i < text.size()) {
        const auto c = static_cast<unsigned char>(text[i]);
        size_t length = 0;
        uint32_t code = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            length = 2;
            code = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            length = 3;
            code = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            length = 4;
            code = c & 0x07;
        } else {
            return false;
        }
        if (i + length > text.size()) {
            return false;
        }
        for (size_t k = 1; k < length; ++k) {
            const auto next = static_cast<unsigned char>(text[i + k]);
            if ((next & 0xc0) != 0x80) {
                return false;
            }
            code = (code << 6) | (next & 0x3f);
        }
        const uint32_t minimum[] = {0, 0, 0x80, 0x800, 0x10000};
        if (code < minimum[length] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
            return false;
        }
        i += length;
    }
    return true;
}

ResultMsg sample_result(uint64_t seq, Outcome outcome) {
    ResultMsg result;
    result.seq = seq;
    result.outcome = outcome;
    result.error = outcome == Outcome::success ? "" : "subscriber code#0: \"bad\" \\ thing\n";
    result.retry_after_ms = outcome == Outcome::retry ? 1500 : 0;
    result.started_at_us = 1714564800123456;
    result.duration_us = 2750;
    return result;
}

} // namespace

TEST_CASE("HELLO round trip and frame layout", "[protocol]") {
    const std::string bytes = encode_hello(HelloMsg{4242, kProtocolVersion});
    REQUIRE(bytes.size() > 5);
    const uint32_t length = (uint32_t{static_cast<unsigned char>(bytes[0])} << 24) |
                            (uint32_t{static_cast<unsigned char>(bytes[1])} << 16) |
                            (uint32_t{static_cast<unsigned char>(bytes[2])} << 8) |
                            uint32_t{static_cast<unsigned char>(bytes[3])};
    CHECK(length == bytes.size() - 4);
    CHECK(bytes[4] == 'H');

    const Frame frame = decode_one(bytes);
    CHECK(frame.type == MessageType::hello);
    const auto hello = decode_hello(frame);
    REQUIRE(hello.ok());
    CHECK(hello.value().pid == 4242);
    CHECK(hello.value().protocol == 1);
}

TEST_CASE("QUIT is the smallest frame", "[protocol]") {
    const std::string bytes = encode_quit();
    CHECK(bytes == std::string("\0\0\0\3Q{}", 7));
    const Frame frame = decode_one(bytes);
    CHECK(frame.type == MessageType::quit);
    CHECK(decode_quit(frame).ok());
}

TEST_CASE("RESULT round trip for every outcome", "[protocol]") {
    for (const Outcome outcome : {Outcome::success, Outcome::retry, Outcome::permanent}) {
        const ResultMsg sent = sample_result(77, outcome);
        const Frame frame = decode_one(encode_result(sent));
        CHECK(frame.type == MessageType::result);
        const auto received = decode_result(frame);
        REQUIRE(received.ok());
        CHECK(received.value().seq == 77);
        CHECK(received.value().outcome == outcome);
        CHECK(received.value().error == sent.error);
        CHECK(received.value().retry_after_ms == sent.retry_after_ms);
        CHECK(received.value().started_at_us == sent.started_at_us);
        CHECK(received.value().duration_us == sent.duration_us);
    }
}

TEST_CASE("EVENT frames carry the event object verbatim", "[protocol]") {
    const std::string bytes = encode_event_frame(9007199254740991ULL, 30000, kEventJson);
    const Frame frame = decode_one(bytes);
    CHECK(frame.type == MessageType::event);
    const auto message = decode_event(frame);
    REQUIRE(message.ok());
    CHECK(message.value().seq == 9007199254740991ULL);
    CHECK(message.value().timeout_ms == 30000);
    // Byte for byte, spaces and the oversized integer included: nothing was re-serialised.
    CHECK(message.value().event_json == kEventJson);
    REQUIRE(message.value().event != nullptr);
    CHECK(json_string(message.value().event, "eventType") == "shop.order.created");

    // encode_event goes through the same path.
    EventMsg typed;
    typed.seq = 5;
    typed.timeout_ms = 100;
    typed.event_json = kEventJson;
    CHECK(encode_event(typed) == encode_event_frame(5, 100, kEventJson));
}

TEST_CASE("event_fits_in_frame is exact for the worst-case envelope", "[protocol]") {
    size_t fits = kMaxFrameBody;
    while (!event_fits_in_frame(fits)) {
        --fits;
    }
    CHECK_FALSE(event_fits_in_frame(fits + 1));
    CHECK(fits > kMaxFrameBody - 128);

    // The largest event that fits, with the longest seq and timeout, still decodes as a frame.
    std::string event = "{\"p\":\"";
    event.append(fits - event.size() - 2, 'x');
    event += "\"}";
    REQUIRE(event.size() == fits);
    const std::string bytes = encode_event_frame(UINT64_MAX, LONG_MIN, event);
    CHECK(bytes.size() == kFrameHeaderSize + kMaxFrameBody);
    FrameDecoder decoder;
    decoder.feed(bytes.data(), bytes.size());
    CHECK(decoder.next().status == FrameDecoder::Status::frame);
}

TEST_CASE("frames split at every byte boundary decode the same", "[protocol]") {
    const std::string stream = encode_hello(HelloMsg{17, kProtocolVersion}) +
                               encode_event_frame(1, 250, kEventJson) +
                               encode_result(sample_result(1, Outcome::retry)) + encode_quit();
    const std::vector<Frame> expected = decode_all(stream);
    REQUIRE(expected.size() == 4);

    SECTION("one byte at a time") {
        FrameDecoder decoder;
        std::vector<Frame> frames;
        for (size_t i = 0; i < stream.size(); ++i) {
            decoder.feed(&stream[i], 1);
            for (;;) {
                FrameDecoder::Next next = decoder.next();
                REQUIRE(next.status != FrameDecoder::Status::error);
                if (next.status == FrameDecoder::Status::need_more) {
                    break;
                }
                frames.push_back(std::move(next.frame));
            }
        }
        REQUIRE(frames.size() == expected.size());
        for (size_t i = 0; i < frames.size(); ++i) {
            CHECK(frames[i].type == expected[i].type);
            CHECK(frames[i].body == expected[i].body);
        }
        CHECK(decoder.buffered() == 0);
    }

    SECTION("two pieces, split anywhere") {
        for (size_t split = 0; split <= stream.size(); ++split) {
            FrameDecoder decoder;
            std::vector<Frame> frames;
            const auto drain = [&] {
                for (;;) {
                    FrameDecoder::Next next = decoder.next();
                    REQUIRE(next.status != FrameDecoder::Status::error);
                    if (next.status == FrameDecoder::Status::need_more) {
                        return;
                    }
                    frames.push_back(std::move(next.frame));
                }
            };
            decoder.feed(stream.data(), split);
            drain();
            decoder.feed(stream.data() + split, stream.size() - split);
            drain();
            REQUIRE(frames.size() == expected.size());
            for (size_t i = 0; i < frames.size(); ++i) {
                REQUIRE(frames[i].body == expected[i].body);
            }
        }
    }
}

TEST_CASE("many frames in one buffer decode in order and in linear time", "[protocol]") {
    // 200000 frames in one buffer: a decoder that erased the consumed prefix after every frame
    // would move about 10^12 bytes here and time the test out.
    constexpr uint64_t kFrames = 200000;
    std::string stream;
    for (uint64_t seq = 0; seq < kFrames; ++seq) {
        stream += encode_result(sample_result(seq, Outcome::success));
    }
    FrameDecoder decoder;
    decoder.feed(stream.data(), stream.size());
    uint64_t expected_seq = 0;
    for (;;) {
        FrameDecoder::Next next = decoder.next();
        REQUIRE(next.status != FrameDecoder::Status::error);
        if (next.status == FrameDecoder::Status::need_more) {
            break;
        }
        const auto result = decode_result(next.frame);
        REQUIRE(result.ok());
        REQUIRE(result.value().seq == expected_seq);
        ++expected_seq;
    }
    CHECK(expected_seq == kFrames);
}

TEST_CASE("a bad length is rejected as soon as the header arrives", "[protocol]") {
    SECTION("too long") {
        FrameDecoder decoder;
        const std::string bytes = header(kMaxFrameBody + 1);
        decoder.feed(bytes.data(), 3);
        CHECK(decoder.next().status == FrameDecoder::Status::need_more);
        decoder.feed(bytes.data() + 3, 1);
        const FrameDecoder::Next next = decoder.next();
        REQUIRE(next.status == FrameDecoder::Status::error);
        CHECK_THAT(next.error, Catch::Contains("16777217") && Catch::Contains("16777216"));
        // Nothing more is buffered, and the decoder stays failed even when valid frames follow.
        const std::string quit = encode_quit();
        decoder.feed(quit.data(), quit.size());
        CHECK(decoder.buffered() == 0);
        CHECK(decoder.failed());
        CHECK(decoder.next().status == FrameDecoder::Status::error);
    }
    SECTION("exactly the limit is accepted as far as the header goes") {
        FrameDecoder decoder;
        const std::string bytes = header(kMaxFrameBody) + "E";
        decoder.feed(bytes.data(), bytes.size());
        CHECK(decoder.next().status == FrameDecoder::Status::need_more);
    }
    SECTION("zero and too short") {
        for (uint32_t length : {0U, 1U, 2U}) {
            const std::string error = decoder_error(header(length) + std::string(length, 'Q'));
            CHECK_THAT(error, Catch::Contains("frame length " + std::to_string(length)));
        }
        CHECK(decoder_error(raw_frame('Q', "{}")).empty());
    }
}

TEST_CASE("unknown type bytes are rejected before the body arrives", "[protocol]") {
    FrameDecoder decoder;
    const std::string bytes = raw_frame('Z', "{}");
    decoder.feed(bytes.data(), 5);
    const FrameDecoder::Next next = decoder.next();
    REQUIRE(next.status == FrameDecoder::Status::error);
    CHECK_THAT(next.error, Catch::Contains("0x5a"));
    CHECK_THAT(decoder_error(raw_frame('\0', "{}")), Catch::Contains("0x00"));
}

TEST_CASE("bodies that are not one JSON object are rejected", "[protocol]") {
    CHECK_THAT(decoder_error(raw_frame('R', "[1,2]")), Catch::Contains("not a JSON object"));
    CHECK_THAT(decoder_error(raw_frame('R', "\"s\"")), Catch::Contains("not a JSON object"));
    CHECK_THAT(decoder_error(raw_frame('R', "{\"seq\":")), Catch::Contains("not valid JSON"));
    CHECK_THAT(decoder_error(raw_frame('R', "{} {}")), Catch::Contains("not valid JSON"));
    CHECK(decoder_error(raw_frame('R', " {} ")).empty());
}

TEST_CASE("messages with missing or mistyped fields are rejected", "[protocol]") {
    const auto result_error = [](const std::string& body) {
        const auto decoded = decode_result(decode_one(raw_frame('R', body)));
        return decoded.ok() ? std::string() : decoded.error();
    };
    const std::string good = R"("outcome":"retry","error":"e","retryAfterMs":0,)"
                             R"("startedAtUs":1,"durationUs":2)";
    CHECK(result_error("{\"seq\":1," + good + "}").empty());
    CHECK_THAT(result_error("{" + good + "}"), Catch::Contains("\"seq\" is missing"));
    CHECK_THAT(result_error("{\"seq\":1.5," + good + "}"), Catch::Contains("\"seq\" must be"));
    CHECK_THAT(result_error("{\"seq\":-1," + good + "}"), Catch::Contains("\"seq\" must be"));
    CHECK_THAT(result_error("{\"seq\":\"1\"," + good + "}"), Catch::Contains("\"seq\" must be"));
    CHECK_THAT(result_error(R"({"seq":1,"outcome":"maybe","error":"","retryAfterMs":0,)"
                            R"("startedAtUs":1,"durationUs":2})"),
               Catch::Contains("\"outcome\""));
    CHECK_THAT(result_error(R"({"seq":1,"outcome":"retry","error":7,"retryAfterMs":0,)"
                            R"("startedAtUs":1,"durationUs":2})"),
               Catch::Contains("\"error\" must be a string"));
    CHECK_THAT(result_error(R"({"seq":1,"outcome":"retry","error":"","retryAfterMs":0,)"
                            R"("startedAtUs":1})"),
               Catch::Contains("\"durationUs\" is missing"));
    CHECK_THAT(result_error("{" + good + "}"), Catch::StartsWith("RESULT: "));

    const auto event_error = [](const std::string& body) {
        const auto decoded = decode_event(decode_one(raw_frame('E', body)));
        return decoded.ok() ? std::string() : decoded.error();
    };
    CHECK(event_error(R"({"seq":1,"timeoutMs":5,"event":{}})").empty());
    CHECK_THAT(event_error(R"({"timeoutMs":5,"event":{}})"), Catch::Contains("\"seq\" is missing"));
    CHECK_THAT(event_error(R"({"seq":1,"timeoutMs":"5","event":{}})"),
               Catch::Contains("\"timeoutMs\" must be"));
    CHECK_THAT(event_error(R"({"seq":1,"timeoutMs":5})"), Catch::Contains("\"event\" is missing"));
    CHECK_THAT(event_error(R"({"seq":1,"timeoutMs":5,"event":[]})"),
               Catch::Contains("\"event\" must be an object"));

    const auto hello_error = [](const std::string& body) {
        const auto decoded = decode_hello(decode_one(raw_frame('H', body)));
        return decoded.ok() ? std::string() : decoded.error();
    };
    CHECK(hello_error(R"({"pid":10,"protocol":1})").empty());
    CHECK_THAT(hello_error(R"({"protocol":1})"), Catch::Contains("\"pid\" is missing"));
    CHECK_THAT(hello_error(R"({"pid":0,"protocol":1})"), Catch::Contains("\"pid\" must be"));
    CHECK_THAT(hello_error(R"({"pid":10,"protocol":2})"), Catch::Contains("protocol version 2"));

    // A frame of another type is an error too, not a crash or a misread.
    const Frame quit = decode_one(encode_quit());
    const auto not_a_result = decode_result(quit);
    REQUIRE_FALSE(not_a_result.ok());
    CHECK_THAT(not_a_result.error(), Catch::Contains("expected a RESULT frame, got QUIT"));
    CHECK_FALSE(decode_event(quit).ok());
    CHECK_FALSE(decode_hello(quit).ok());
    CHECK_FALSE(decode_quit(decode_one(encode_hello(HelloMsg{1, 1}))).ok());
}

TEST_CASE("RESULT errors are bounded at a UTF-8 boundary", "[protocol]") {
    SECTION("through the encoder") {
        std::string error;
        while (error.size() < 3 * kMaxErrorBytes) {
            error += "\xe2\x82\xac"; // the euro sign, 3 bytes
        }
        const auto decoded =
            decode_result(decode_one(encode_result(ResultMsg{1, Outcome::retry, error, 0, 1, 1})));
        REQUIRE(decoded.ok());
        const std::string& received = decoded.value().error;
        CHECK(received.size() <= kMaxErrorBytes);
        CHECK(received.size() > kMaxErrorBytes - 16);
        CHECK(valid_utf8(received));
        CHECK_THAT(received, Catch::EndsWith(" [truncated]"));
        const std::string kept = received.substr(0, received.size() - 12);
        CHECK(error.compare(0, kept.size(), kept) == 0);
    }
    SECTION("every alignment of every sequence length") {
        for (const std::string character : {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"}) {
            for (size_t pad = 0; pad < 4; ++pad) {
                std::string error(pad, 'a');
                while (error.size() < 200) {
                    error += character;
                }
                const std::string bounded = bounded_error(error, 64);
                CHECK(bounded.size() <= 64);
                CHECK(bounded.size() >= 64 - 12 - 3);
                CHECK(valid_utf8(bounded));
                const std::string kept = bounded.substr(0, bounded.size() - 12);
                CHECK(error.compare(0, kept.size(), kept) == 0);
            }
        }
    }
    SECTION("short strings are kept, invalid bytes replaced") {
        CHECK(bounded_error("plain é text") == "plain é text");
        const std::string replacement = "\xef\xbf\xbd";
        CHECK(bounded_error("a\xff"
                            "b") == "a" + replacement + "b");
        CHECK(bounded_error(std::string("a\0b", 3)) == "a" + replacement + "b");
        CHECK(bounded_error("\xc0\xaf") == replacement + replacement); // overlong '/'
        CHECK(bounded_error("\xed\xa0\x80") ==
              replacement + replacement + replacement);                       // surrogate
        CHECK(bounded_error("x\xe2\x82") == "x" + replacement + replacement); // cut short
        CHECK(bounded_error(std::string(kMaxErrorBytes, 'z')) == std::string(kMaxErrorBytes, 'z'));
    }
}

TEST_CASE("json_quote escapes what JSON requires and passes UTF-8 through", "[json]") {
    CHECK(json_quote("") == "\"\"");
    CHECK(json_quote("say \"hi\"") == R"("say \"hi\"")");
    CHECK(json_quote("C:\\dir") == R"("C:\\dir")");
    CHECK(json_quote("a\nb\tc\rd\be\ff") == R"("a\nb\tc\rd\be\ff")");
    CHECK(json_quote(std::string("\0\x01\x1f", 3)) == R"("\u0000\u0001\u001f")");
    CHECK(json_quote("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80") ==
          "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"");
    CHECK(json_quote("/\x7f") == "\"/\x7f\"");

    // Every control character survives a round trip through a real JSON parser.
    std::string all;
    for (int c = 1; c < 0x20; ++c) {
        all += static_cast<char>(c);
    }
    all += "\"\\ end";
    const Json parsed = json_parse(json_quote(all));
    REQUIRE(parsed);
    REQUIRE(cJSON_IsString(parsed.get()));
    CHECK(std::string(parsed->valuestring) == all);
}

TEST_CASE("json_member_text finds top-level members verbatim", "[json]") {
    const std::string text =
        R"( { "a" : {"x": "}", "y": [1, {"z": "\"]"}]} , "b":12345678901234567890, )"
        R"("c": "q\"uote", "n" : null , "a": "second", "e\u0073c": true } )";
    CHECK(json_member_text(text, "a") == R"({"x": "}", "y": [1, {"z": "\"]"}]})");
    CHECK(json_member_text(text, "b") == "12345678901234567890");
    CHECK(json_member_text(text, "c") == R"("q\"uote")");
    CHECK(json_member_text(text, "n") == "null");
    CHECK(json_member_text(text, "esc") == "true");
    CHECK_FALSE(json_member_text(text, "x").has_value()); // nested, not top-level
    CHECK_FALSE(json_member_text(text, "missing").has_value());
    CHECK_FALSE(json_member_text("[1]", "a").has_value());
    CHECK_FALSE(json_member_text("{}", "a").has_value());
}

TEST_CASE("event objects decode into outbox::Event", "[event]") {
    const auto decoded = decode_event_json(kEventJson);
    REQUIRE(decoded.ok());
    const Event& event = decoded.value();
    CHECK(event.id == "ob_1");
    CHECK(event.event_log_id == "el_1");
    CHECK(event.event_key == "order-7");
    CHECK(event.tenant_id == "t1");
    CHECK(event.project_id.empty());
    CHECK(event.event_type == "shop.order.created");
    CHECK(event.payload_json ==
          R"({"orderId": 12345678901234567890123, "note": "a \"quoted\" {brace}"})");
    CHECK(event.metadata_json == R"({"source": "api"})");
    CHECK(event.correlation_id == "corr-9");
    CHECK(event.created_at == "2024-05-01T12:00:00.000000Z");
    CHECK(event.attempt == 3);
    CHECK(event.json == kEventJson);

    const std::string minimal =
        R"({"id":"i","eventLogId":"l","eventKey":null,"tenantId":"t","projectId":"p",)"
        R"("eventType":"x","payload":[1],"correlationId":null,"createdAt":"c","attempt":1})";
    const auto decoded_minimal = decode_event_json(minimal);
    REQUIRE(decoded_minimal.ok());
    CHECK(decoded_minimal.value().event_key.empty());
    CHECK(decoded_minimal.value().project_id == "p");
    CHECK(decoded_minimal.value().metadata_json == "null");
    CHECK(decoded_minimal.value().payload_json == "[1]");

    const auto error_of = [&](const std::string& from, const std::string& to) {
        std::string text = kEventJson;
        const size_t at = text.find(from);
        REQUIRE(at != std::string::npos);
        text.replace(at, from.size(), to);
        const auto result = decode_event_json(text);
        return result.ok() ? std::string() : result.error();
    };
    CHECK_THAT(error_of(R"("eventType": "shop.order.created", )", ""),
               Catch::Contains("\"eventType\" is missing"));
    CHECK_THAT(error_of(R"("tenantId": "t1")", R"("tenantId": 5)"),
               Catch::Contains("\"tenantId\" must be a string"));
    CHECK_THAT(error_of(R"("attempt": 3)", R"("attempt": 0)"), Catch::Contains("\"attempt\""));
    CHECK_THAT(error_of(R"("id": "ob_1", )", ""), Catch::Contains("\"id\" is missing"));
    CHECK_THAT(error_of(R"("eventKey": "order-7", )", ""), Catch::Contains("\"eventKey\""));
    CHECK_FALSE(decode_event_json("[]").ok());
    CHECK_FALSE(decode_event_json("{").ok());
}
