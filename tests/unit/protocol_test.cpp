// Frames and messages of the supervisor <-> handler process channel, the event's wire fields, and
// the JSON text the handler process writes for exec and http handlers.
#include "common/json.h"
#include "common/protocol.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

using namespace outbox;

namespace {

// Big-endian integers and length-prefixed strings, written independently of protocol.cpp so that
// the tests pin the byte layout of docs/protocol.md rather than whatever the encoder does.
std::string be32(uint32_t value) {
    std::string bytes(4, '\0');
    for (int i = 0; i < 4; ++i) {
        bytes[static_cast<size_t>(i)] = static_cast<char>(value >> (24 - 8 * i));
    }
    return bytes;
}

std::string be64(uint64_t value) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) {
        bytes[static_cast<size_t>(i)] = static_cast<char>(value >> (56 - 8 * i));
    }
    return bytes;
}

std::string str(const std::string& text) {
    return be32(static_cast<uint32_t>(text.size())) + text;
}

std::string byte(uint8_t value) {
    return std::string(1, static_cast<char>(value));
}

std::string null_str() {
    return byte(0);
}

std::string some_str(const std::string& text) {
    return std::string(1, '\1') + str(text);
}

std::string raw_frame(char type, const std::string& body) {
    return be32(static_cast<uint32_t>(body.size() + 1)) + type + body;
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

// Error texts go to logs and, for a handler process killed for a bad frame, into "lastError":
// they must be plain text whatever bytes the frame held.
bool printable_ascii(const std::string& text) {
    for (const char c : text) {
        if (c < 0x20 || c > 0x7e) {
            return false;
        }
    }
    return !text.empty();
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

// An event as a claim returns it: PostgreSQL's jsonb text (spaces after ':' and ','), with a
// payload number no double can hold, so that any re-serialisation would show.
Event sample_event() {
    Event event;
    event.id = "ob_1";
    event.event_log_id = "el_1";
    event.event_key = "order-7";
    event.tenant_id = "t1";
    event.project_id = std::nullopt;
    event.event_type = "shop.order.created";
    event.payload_json = R"({"note": "a \"quoted\" {brace}", "orderId": 12345678901234567890123})";
    event.metadata_json = R"({"source": "api"})";
    event.correlation_id = "";
    event.created_at = "2024-05-01T12:00:00.000000Z";
    event.attempt = 3;
    return event;
}

// The wire fields of sample_event() up to attempt, spelled out byte by byte: what version 2 sent.
std::string sample_fields_through_attempt() {
    const Event e = sample_event();
    return str(e.id) + str(e.event_log_id) + some_str(*e.event_key) + str(e.tenant_id) +
           null_str() + str(e.event_type) + str(e.payload_json) + some_str(e.metadata_json) +
           some_str("") + str(e.created_at) + be32(3);
}

// All the wire fields of sample_event(): no subscribersDone, no orderingKey.
std::string sample_fields_bytes() {
    return sample_fields_through_attempt() + null_str() + null_str();
}

bool same_event(const Event& a, const Event& b) {
    return a.id == b.id && a.event_log_id == b.event_log_id && a.event_key == b.event_key &&
           a.tenant_id == b.tenant_id && a.project_id == b.project_id &&
           a.event_type == b.event_type && a.payload_json == b.payload_json &&
           a.metadata_json == b.metadata_json && a.correlation_id == b.correlation_id &&
           a.created_at == b.created_at && a.attempt == b.attempt &&
           a.ordering_key == b.ordering_key;
}

std::string result_body(const std::string& error = "e", uint8_t outcome = 1,
                        const std::string& subscribers = be32(0)) {
    return be64(1) + std::string(1, static_cast<char>(outcome)) + str(error) + be64(0) + be64(1) +
           be64(2) + subscribers;
}

std::string hello_error(const std::string& body) {
    const auto decoded = decode_hello(decode_one(raw_frame('H', body)));
    return decoded.ok() ? std::string() : decoded.error();
}

std::string event_error(const std::string& body) {
    const auto decoded = decode_event(decode_one(raw_frame('E', body)));
    return decoded.ok() ? std::string() : decoded.error();
}

std::string result_error(const std::string& body) {
    const auto decoded = decode_result(decode_one(raw_frame('R', body)));
    return decoded.ok() ? std::string() : decoded.error();
}

std::string status_error(const std::string& body) {
    const auto decoded = decode_status(decode_one(raw_frame('S', body)));
    return decoded.ok() ? std::string() : decoded.error();
}

std::string status_body(const std::string& sink = "orders-to-kafka", uint8_t connected = 1,
                        const std::string& reason = "connected") {
    return str(sink) + byte(connected) + str(reason);
}

std::string fields_error(const std::string& fields) {
    const auto decoded = decode_event_fields(fields);
    return decoded.ok() ? std::string() : decoded.error();
}

} // namespace

TEST_CASE("HELLO round trip and byte layout", "[protocol]") {
    const std::string bytes = encode_hello(HelloMsg{4242, kProtocolVersion});
    CHECK(bytes == be32(9) + "H" + be32(4) + be32(4242));

    const Frame frame = decode_one(bytes);
    CHECK(frame.type == MessageType::hello);
    const auto hello = decode_hello(frame);
    REQUIRE(hello.ok());
    CHECK(hello.value().pid == 4242);
    CHECK(hello.value().protocol == 4);
}

TEST_CASE("QUIT is the smallest frame", "[protocol]") {
    const std::string bytes = encode_quit();
    CHECK(bytes == std::string("\0\0\0\1Q", 5));
    const Frame frame = decode_one(bytes);
    CHECK(frame.type == MessageType::quit);
    CHECK(decode_quit(frame).ok());
}

TEST_CASE("RESULT round trip for every outcome, and its byte layout", "[protocol]") {
    for (const Outcome outcome : {Outcome::success, Outcome::retry, Outcome::permanent}) {
        ResultMsg sent = sample_result(77, outcome);
        sent.subscribers = {{"code#0", Outcome::success}, {"billing", outcome}};
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
        REQUIRE(received.value().subscribers.size() == 2);
        CHECK(received.value().subscribers[0].name == "code#0");
        CHECK(received.value().subscribers[0].outcome == Outcome::success);
        CHECK(received.value().subscribers[1].name == "billing");
        CHECK(received.value().subscribers[1].outcome == outcome);
    }

    ResultMsg result = sample_result(5, Outcome::permanent);
    result.error = "no";
    result.subscribers = {{"s", Outcome::retry}};
    const std::string body = be64(5) + "\2" + str("no") + be64(0) + be64(1714564800123456) +
                             be64(2750) + be32(1) + str("s") + "\1";
    CHECK(encode_result(result) == raw_frame('R', body));

    // Negative numbers are a caller's bug; they go out as 0 rather than as a frame the supervisor
    // would have to reject.
    result.retry_after_ms = -5;
    result.duration_us = -1;
    const auto decoded = decode_result(decode_one(encode_result(result)));
    REQUIRE(decoded.ok());
    CHECK(decoded.value().retry_after_ms == 0);
    CHECK(decoded.value().duration_us == 0);
}

TEST_CASE("EVENT frames carry the event's fields, decoded without JSON", "[protocol]") {
    const Event event = sample_event();
    const std::string fields = encode_event_fields(event_fields_of(event));
    CHECK(fields == sample_fields_bytes());

    const std::string bytes = encode_event_frame(9007199254740993ULL, 30000, fields);
    CHECK(bytes == raw_frame('E', be64(9007199254740993ULL) + be64(30000) + fields));
    const Frame frame = decode_one(bytes);
    CHECK(frame.type == MessageType::event);
    const auto message = decode_event(frame);
    REQUIRE(message.ok());
    CHECK(message.value().seq == 9007199254740993ULL);
    CHECK(message.value().timeout_ms == 30000);
    CHECK(message.value().fields == fields);

    const auto decoded = decode_event_fields(message.value().fields);
    REQUIRE(decoded.ok());
    const Event& received = decoded.value();
    CHECK(same_event(received, event));
    // Byte for byte, spaces and the oversized integer included: nothing was re-serialised.
    CHECK(received.payload_json == event.payload_json);
    // Null and the empty string stay apart.
    CHECK_FALSE(received.project_id.has_value());
    REQUIRE(received.correlation_id.has_value());
    CHECK(received.correlation_id->empty());

    // encode_event goes through the same path.
    EventMsg typed;
    typed.seq = 5;
    typed.timeout_ms = 100;
    typed.fields = fields;
    CHECK(encode_event(typed) == encode_event_frame(5, 100, fields));

    // Metadata "null" (absent) travels as null and comes back as "null".
    Event bare = event;
    bare.metadata_json = "null";
    bare.event_key.reset();
    const auto bare_decoded = decode_event_fields(encode_event_fields(event_fields_of(bare)));
    REQUIRE(bare_decoded.ok());
    CHECK(bare_decoded.value().metadata_json == "null");
    CHECK_FALSE(bare_decoded.value().event_key.has_value());
}

TEST_CASE("event_fits_in_frame is exact", "[protocol]") {
    size_t fits = kMaxFrameBody;
    while (!event_fits_in_frame(fits)) {
        --fits;
    }
    CHECK_FALSE(event_fits_in_frame(fits + 1));
    CHECK(fits == kMaxFrameBody - 17); // type byte, seq, timeout

    // The largest event that fits still decodes, as a frame and as fields.
    Event event = sample_event();
    event.payload_json.clear();
    const size_t rest = encode_event_fields(event_fields_of(event)).size();
    event.payload_json = "\"" + std::string(fits - rest - 2, 'x') + "\"";
    const std::string fields = encode_event_fields(event_fields_of(event));
    REQUIRE(fields.size() == fits);
    const std::string bytes = encode_event_frame(UINT64_MAX, LONG_MAX, fields);
    CHECK(bytes.size() == kFrameHeaderSize + kMaxFrameBody);
    FrameDecoder decoder;
    decoder.feed(bytes.data(), bytes.size());
    FrameDecoder::Next next = decoder.next();
    REQUIRE(next.status == FrameDecoder::Status::frame);
    const auto message = decode_event(next.frame);
    REQUIRE(message.ok());
    CHECK(message.value().timeout_ms == LONG_MAX);
    CHECK(decode_event_fields(message.value().fields).ok());
}

TEST_CASE("frames split at every byte boundary decode the same", "[protocol]") {
    const std::string stream =
        encode_hello(HelloMsg{17, kProtocolVersion}) +
        encode_event_frame(1, 250, encode_event_fields(event_fields_of(sample_event()))) +
        encode_result(sample_result(1, Outcome::retry)) +
        encode_status(StatusMsg{"orders-to-nats", true, "connected"}) + encode_quit();
    const std::vector<Frame> expected = decode_all(stream);
    REQUIRE(expected.size() == 5);

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
        const std::string bytes = be32(kMaxFrameBody + 1);
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
        const std::string bytes = be32(kMaxFrameBody) + "E";
        decoder.feed(bytes.data(), bytes.size());
        CHECK(decoder.next().status == FrameDecoder::Status::need_more);
    }
    SECTION("zero, and the type byte alone") {
        CHECK_THAT(decoder_error(be32(0)), Catch::Contains("frame length 0"));
        CHECK(decoder_error(be32(1) + "Q").empty());
    }
}

TEST_CASE("unknown type bytes are rejected before the body arrives", "[protocol]") {
    FrameDecoder decoder;
    const std::string bytes = raw_frame('Z', "{}");
    decoder.feed(bytes.data(), 5);
    const FrameDecoder::Next next = decoder.next();
    REQUIRE(next.status == FrameDecoder::Status::error);
    CHECK_THAT(next.error, Catch::Contains("0x5a"));
    CHECK_THAT(decoder_error(raw_frame('\0', "")), Catch::Contains("0x00"));
    // A JSON body of protocol version 1 is not mistaken for anything.
    CHECK_THAT(decoder_error(raw_frame('{', "}")), Catch::Contains("0x7b"));
}

TEST_CASE("HELLO: version first, pid in range, nothing after", "[protocol]") {
    CHECK(hello_error(be32(4) + be32(10)).empty());
    CHECK_THAT(hello_error(be32(1) + be32(10)),
               Catch::Contains("protocol version 1") && Catch::StartsWith("HELLO: "));
    // Version 2 lacked subscribersDone, version 3 orderingKey and STATUS: a handler process left
    // over from either is refused by name.
    CHECK_THAT(hello_error(be32(2) + be32(10)),
               Catch::Contains("speaks protocol version 2, the supervisor speaks version 4"));
    CHECK_THAT(hello_error(be32(3) + be32(10)),
               Catch::Contains("speaks protocol version 3, the supervisor speaks version 4"));
    // A version-1 process sends JSON; its first four bytes are read as a version, not trusted.
    CHECK_THAT(hello_error(R"({"pid":10,"protocol":1})"), Catch::Contains("protocol version"));
    CHECK_THAT(hello_error(be32(4) + be32(0)), Catch::Contains("\"pid\" is 0"));
    CHECK_THAT(hello_error(be32(4) + be32(0x80000000U)), Catch::Contains("\"pid\""));
    CHECK_THAT(hello_error(be32(4) + std::string(3, '\1')),
               Catch::Contains("\"pid\" is cut short"));
    CHECK_THAT(hello_error(""), Catch::Contains("\"protocol\" is cut short"));
    CHECK_THAT(hello_error(be32(4) + be32(10) + "x"), Catch::Contains("1 unexpected bytes"));
}

TEST_CASE("EVENT: the envelope is checked, the fields separately", "[protocol]") {
    const std::string fields = sample_fields_bytes();
    CHECK(event_error(be64(1) + be64(5) + fields).empty());
    CHECK_THAT(event_error(""), Catch::Contains("\"seq\" is cut short"));
    CHECK_THAT(event_error(be64(1) + be32(0)), Catch::Contains("\"timeoutMs\" is cut short"));
    CHECK_THAT(event_error(be64(1) + be64(uint64_t{1} << 63) + fields),
               Catch::Contains("\"timeoutMs\" is 9223372036854775808"));
    // The envelope alone is a well-formed EVENT; its (empty) fields are what is wrong.
    const auto bare = decode_event(decode_one(raw_frame('E', be64(1) + be64(5))));
    REQUIRE(bare.ok());
    CHECK_THAT(fields_error(std::string(bare.value().fields)), Catch::Contains("\"id\""));
}

TEST_CASE("event fields: every malformation is an error naming the field", "[protocol]") {
    const Event e = sample_event();
    // The fields one by one, so that each can be replaced.
    std::vector<std::string> parts = {str(e.id),
                                      str(e.event_log_id),
                                      some_str(*e.event_key),
                                      str(e.tenant_id),
                                      null_str(),
                                      str(e.event_type),
                                      str(e.payload_json),
                                      some_str(e.metadata_json),
                                      some_str(""),
                                      str(e.created_at),
                                      be32(3),
                                      some_str(R"(["search"])"),
                                      some_str("customer-42")};
    const std::vector<std::string> names = {
        "id",        "eventLogId",      "eventKey",   "tenantId",      "projectId",
        "eventType", "payload",         "metadata",   "correlationId", "createdAt",
        "attempt",   "subscribersDone", "orderingKey"};
    const size_t attempt = 10;
    const std::vector<size_t> nullable = {2, 4, 7, 8, 11, 12};
    const auto is_nullable = [&](size_t i) {
        return std::find(nullable.begin(), nullable.end(), i) != nullable.end();
    };
    const auto join = [](const std::vector<std::string>& pieces) {
        std::string all;
        for (const std::string& piece : pieces) {
            all += piece;
        }
        return all;
    };
    REQUIRE(fields_error(join(parts)).empty());

    SECTION("cut short at every byte") {
        const std::string all = join(parts);
        for (size_t size = 0; size < all.size(); ++size) {
            const std::string error = fields_error(all.substr(0, size));
            INFO("first " << size << " bytes");
            CHECK_THAT(error, Catch::Contains("cut short") || Catch::Contains("only"));
            CHECK(printable_ascii(error));
        }
    }
    SECTION("a length beyond the end of the frame, in every string field") {
        for (size_t i = 0; i < parts.size(); ++i) {
            if (i == attempt) {
                continue;
            }
            std::vector<std::string> broken = parts;
            broken[i] = (is_nullable(i) ? std::string(1, '\1') : std::string()) + be32(0xffffffffU);
            // The string runs to the end, so the fields after it are gone too.
            broken.resize(i + 1);
            INFO("field " << names[i]);
            CHECK_THAT(fields_error(join(broken)),
                       Catch::Contains("\"" + names[i] + "\" has length 4294967295"));
        }
    }
    SECTION("a null tag other than 0 and 1") {
        for (const size_t i : nullable) {
            std::vector<std::string> broken = parts;
            broken[i][0] = '\2';
            CHECK_THAT(fields_error(join(broken)),
                       Catch::Contains("\"" + names[i] + "\" has null tag 2"));
        }
    }
    SECTION("payload, metadata and subscribersDone are never empty") {
        std::vector<std::string> broken = parts;
        broken[6] = str("");
        CHECK_THAT(fields_error(join(broken)), Catch::Contains("\"payload\" is empty"));
        broken = parts;
        broken[7] = some_str("");
        CHECK_THAT(fields_error(join(broken)), Catch::Contains("\"metadata\" is empty"));
        broken[7] = null_str();
        CHECK(fields_error(join(broken)).empty());
        broken = parts;
        broken[11] = some_str("");
        CHECK_THAT(fields_error(join(broken)), Catch::Contains("\"subscribersDone\" is empty"));
        broken[11] = null_str();
        CHECK(fields_error(join(broken)).empty());
    }
    SECTION("subscribersDone is bounded") {
        std::vector<std::string> sized = parts;
        sized[11] = some_str(std::string(kMaxSubscribersDoneBytes, 'x'));
        CHECK(fields_error(join(sized)).empty());
        sized[11] = some_str(std::string(kMaxSubscribersDoneBytes + 1, 'x'));
        CHECK_THAT(fields_error(join(sized)),
                   Catch::Contains("\"subscribersDone\" is 1048577 bytes long, above the limit "
                                   "of 1048576"));
    }
    SECTION("subscribersDone is opaque to the decoder") {
        // Its content is the handler process's business (parse_subscribers_done), so that a list
        // it cannot read costs a repeated delivery, not a dead letter.
        std::vector<std::string> odd = parts;
        odd[11] = some_str(std::string("not json \xff\0", 11));
        CHECK(fields_error(join(odd)).empty());
    }
    SECTION("attempt is at least 1 and an int") {
        parts[attempt] = be32(0);
        CHECK_THAT(fields_error(join(parts)), Catch::Contains("\"attempt\" is 0"));
        parts[attempt] = be32(0x80000000U);
        CHECK_THAT(fields_error(join(parts)), Catch::Contains("\"attempt\" is 2147483648"));
    }
    SECTION("a version 2 event, which ends after attempt, is cut short") {
        parts.resize(attempt + 1);
        CHECK_THAT(fields_error(join(parts)), Catch::Contains("\"subscribersDone\" is cut short"));
    }
    SECTION("a version 3 event, which ends after subscribersDone, is cut short") {
        parts.pop_back();
        CHECK_THAT(fields_error(join(parts)), Catch::Contains("\"orderingKey\" is cut short"));
    }
    SECTION("orderingKey may be empty, as the column may") {
        parts[12] = some_str("");
        const auto decoded = decode_event_fields(join(parts));
        REQUIRE(decoded.ok());
        CHECK(decoded.value().ordering_key == std::optional<std::string>(""));
    }
    SECTION("nothing after the last field") {
        CHECK_THAT(fields_error(join(parts) + "xy"), Catch::Contains("2 unexpected bytes"));
    }
}

TEST_CASE("subscribersDone travels after the event's fields, as PostgreSQL printed it",
          "[protocol]") {
    const std::string list = R"(["search", "caf\u00e9", "x\"y"])";
    EventDelivery delivery{sample_event(), list};
    const std::string fields = encode_event_fields(event_fields_of(delivery));
    // The list in place of the null after attempt; the orderingKey's null still follows.
    CHECK(fields == sample_fields_through_attempt() + some_str(list) + null_str());

    const auto decoded = decode_event_delivery(fields);
    REQUIRE(decoded.ok());
    CHECK(same_event(decoded.value().event, sample_event()));
    CHECK(decoded.value().subscribers_done_json == list);
    // decode_event_fields reads the same bytes and keeps only the event.
    const auto event_only = decode_event_fields(fields);
    REQUIRE(event_only.ok());
    CHECK(same_event(event_only.value(), sample_event()));

    // From an Event alone, or from a view without it, the list is null.
    CHECK(encode_event_fields(event_fields_of(sample_event())) == sample_fields_bytes());
    const auto none = decode_event_delivery(sample_fields_bytes());
    REQUIRE(none.ok());
    CHECK_FALSE(none.value().subscribers_done_json.has_value());

    SECTION("the encoder sends what the decoder would refuse as null") {
        // Running every subscriber again is allowed; failing the event over its bookkeeping not.
        const Event event = sample_event(); // the views below point into it
        for (const std::string& unusable :
             {std::string(), std::string(kMaxSubscribersDoneBytes + 1, 'x')}) {
            EventFieldsView view = event_fields_of(event);
            view.subscribers_done_json = unusable;
            CHECK(encode_event_fields(view) == sample_fields_bytes());
        }
        const std::string largest(kMaxSubscribersDoneBytes, 'x');
        EventFieldsView view = event_fields_of(event);
        view.subscribers_done_json = largest;
        const auto decoded_largest = decode_event_delivery(encode_event_fields(view));
        REQUIRE(decoded_largest.ok());
        CHECK(decoded_largest.value().subscribers_done_json == largest);
    }
}

TEST_CASE("orderingKey travels last, from Event::ordering_key to Event::ordering_key",
          "[protocol]") {
    Event event = sample_event();
    event.ordering_key = "customer-42";
    const std::string fields = encode_event_fields(event_fields_of(event));
    CHECK(fields == sample_fields_through_attempt() + null_str() + some_str("customer-42"));
    const auto decoded = decode_event_delivery(fields);
    REQUIRE(decoded.ok());
    CHECK(same_event(decoded.value().event, event));
    CHECK(decoded.value().event.ordering_key == std::optional<std::string>("customer-42"));
    CHECK_FALSE(decoded.value().subscribers_done_json.has_value());

    // Beside a subscribersDone list, through the delivery's own event_fields_of.
    EventDelivery delivery{event, std::string(R"(["search"])")};
    const std::string both = encode_event_fields(event_fields_of(delivery));
    CHECK(both ==
          sample_fields_through_attempt() + some_str(R"(["search"])") + some_str("customer-42"));
    const auto again = decode_event_delivery(both);
    REQUIRE(again.ok());
    CHECK(again.value().event.ordering_key == event.ordering_key);
    CHECK(again.value().subscribers_done_json == delivery.subscribers_done_json);

    // Not part of the event object: SPEC 2 fixes its fields.
    CHECK(decoded.value().event.json().find("customer-42") == std::string::npos);
}

TEST_CASE("STATUS round trip and byte layout", "[protocol]") {
    for (const bool connected : {true, false}) {
        StatusMsg sent{"orders-to-kafka", connected,
                       connected ? "connected" : "kafka: broker 127.0.0.1:9092 down"};
        const std::string bytes = encode_status(sent);
        CHECK(bytes == raw_frame('S', str(sent.sink) + byte(connected ? 1 : 0) + str(sent.reason)));
        const Frame frame = decode_one(bytes);
        CHECK(frame.type == MessageType::status);
        const auto received = decode_status(frame);
        REQUIRE(received.ok());
        CHECK(received.value().sink == sent.sink);
        CHECK(received.value().connected == connected);
        CHECK(received.value().reason == sent.reason);
    }
    CHECK(std::string(message_type_name(MessageType::status)) == "STATUS");

    SECTION("the encoder makes the texts safe, as it does for RESULT") {
        StatusMsg hostile{std::string(kMaxSubscriberNameBytes + 10, 'n') + "\xff", false,
                          std::string("a\0b\xc3", 4) + std::string(5000, 'r')};
        const auto received = decode_status(decode_one(encode_status(hostile)));
        REQUIRE(received.ok());
        CHECK(received.value().sink.size() <= kMaxSubscriberNameBytes);
        CHECK(received.value().sink == bounded_error(hostile.sink, kMaxSubscriberNameBytes));
        CHECK(received.value().reason.size() <= kMaxStatusReasonBytes);
        CHECK(received.value().reason.starts_with("a\xef\xbf\xbd"
                                                  "b"));
        CHECK(received.value().reason.ends_with(" [truncated]"));
        CHECK(valid_utf8(received.value().reason));
    }
}

TEST_CASE("STATUS: every malformation is an error naming the field", "[protocol]") {
    CHECK(status_error(status_body()).empty());
    CHECK(status_error(status_body("", 0, "")).empty());
    CHECK_THAT(status_error(""),
               Catch::Contains("\"sink\" is cut short") && Catch::StartsWith("STATUS: "));
    CHECK_THAT(status_error(status_body("s", 2)), Catch::Contains("\"connected\" is 2"));
    CHECK_THAT(status_error(be32(50) + "short"),
               Catch::Contains("\"sink\" has length 50 but only 5 bytes follow"));
    CHECK_THAT(status_error(str("s") + byte(1) + be32(9) + "r"),
               Catch::Contains("\"reason\" has length 9 but only 1 bytes follow"));
    CHECK_THAT(status_error(status_body() + "zz"), Catch::Contains("2 unexpected bytes"));

    SECTION("the texts are checked, not repaired") {
        CHECK(status_error(status_body(std::string(kMaxSubscriberNameBytes, 's'))).empty());
        CHECK_THAT(status_error(status_body(std::string(kMaxSubscriberNameBytes + 1, 's'))),
                   Catch::Contains("\"sink\" is 1025 bytes long, above the limit of 1024"));
        CHECK(status_error(status_body("s", 0, std::string(kMaxStatusReasonBytes, 'r'))).empty());
        CHECK_THAT(status_error(status_body("s", 0, std::string(kMaxStatusReasonBytes + 1, 'r'))),
                   Catch::Contains("\"reason\" is 1025 bytes long"));
        CHECK_THAT(status_error(status_body("bad \xff")),
                   Catch::Contains("\"sink\" is not valid UTF-8"));
        CHECK_THAT(status_error(status_body("s", 0, std::string("a\0b", 3))),
                   Catch::Contains("\"reason\" contains a NUL byte"));
        CHECK_THAT(status_error(status_body("s", 0, "\xed\xa0\x80")),
                   Catch::Contains("\"reason\" is not valid UTF-8"));
    }
    SECTION("cut short at every byte") {
        const std::string body = status_body("orders", 1, "connected");
        for (size_t size = 0; size < body.size(); ++size) {
            const std::string error = status_error(body.substr(0, size));
            INFO("first " << size << " bytes");
            CHECK_THAT(error, Catch::Contains("cut short") || Catch::Contains("only"));
            CHECK(printable_ascii(error));
        }
    }
}

TEST_CASE("RESULT: every malformation is an error naming the field", "[protocol]") {
    CHECK(result_error(result_body()).empty());
    CHECK_THAT(result_error(""), Catch::Contains("\"seq\" is cut short"));
    CHECK_THAT(result_error(result_body("e", 3)),
               Catch::Contains("\"outcome\" is 3") && Catch::StartsWith("RESULT: "));
    CHECK_THAT(result_error(be64(1) + "\1" + be32(100) + "short"),
               Catch::Contains("\"error\" has length 100 but only 5 bytes follow"));
    CHECK_THAT(result_error(be64(1) + "\1" + str("e") + be64(uint64_t{1} << 63)),
               Catch::Contains("\"retryAfterMs\" is 9223372036854775808"));
    CHECK_THAT(result_error(be64(1) + "\1" + str("e") + be64(0) + be64(1)),
               Catch::Contains("\"durationUs\" is cut short"));
    CHECK_THAT(result_error(result_body() + "z"), Catch::Contains("1 unexpected bytes"));

    SECTION("the error is checked, not repaired") {
        CHECK(result_error(result_body(std::string(kMaxErrorBytes, 'e'))).empty());
        CHECK_THAT(result_error(result_body(std::string(kMaxErrorBytes + 1, 'e'))),
                   Catch::Contains("\"error\" is 4097 bytes long"));
        CHECK_THAT(result_error(result_body("bad \xff byte")),
                   Catch::Contains("\"error\" is not valid UTF-8"));
        CHECK_THAT(result_error(result_body("bad \xed\xa0\x80 surrogate")),
                   Catch::Contains("\"error\" is not valid UTF-8"));
        CHECK_THAT(result_error(result_body(std::string("a\0b", 3))),
                   Catch::Contains("\"error\" contains a NUL byte"));
        CHECK(result_error(result_body("caf\xc3\xa9 \xf0\x9f\x98\x80")).empty());
    }
    SECTION("per-subscriber outcomes: counts and entries") {
        CHECK(result_error(result_body("e", 1, be32(1) + str("code#0") + byte(0))).empty());
        CHECK_THAT(result_error(result_body("e", 1, be32(0xffffffffU))),
                   Catch::Contains("\"subscribers\" counts 4294967295 entries, above the limit"));
        CHECK_THAT(result_error(result_body("e", 1, be32(3) + str("a") + byte(0))),
                   Catch::Contains("\"subscribers\" counts 3 entries but only 6 bytes follow"));
        CHECK_THAT(result_error(result_body("e", 1, be32(1) + str("a") + "\7")),
                   Catch::Contains("\"subscribers.outcome\" is 7"));
        CHECK_THAT(result_error(result_body("e", 1, be32(1) + str("\xc3") + byte(0))),
                   Catch::Contains("\"subscribers.name\" is not valid UTF-8"));
        CHECK_THAT(
            result_error(result_body(
                "e", 1, be32(1) + str(std::string(kMaxSubscriberNameBytes + 1, 'n')) + byte(0))),
            Catch::Contains("\"subscribers.name\" is 1025 bytes long"));
        CHECK_THAT(result_error(result_body("e", 1, be32(2) + str("a") + byte(0) + be32(9))),
                   Catch::Contains("\"subscribers.name\" has length 9"));
    }
    SECTION("cut short at every byte") {
        const std::string body = result_body("err", 2, be32(1) + str("name") + "\2");
        REQUIRE(result_error(body).empty());
        for (size_t size = 0; size < body.size(); ++size) {
            const std::string error = result_error(body.substr(0, size));
            INFO("first " << size << " bytes");
            CHECK_FALSE(error.empty());
            CHECK(printable_ascii(error));
        }
    }
}

TEST_CASE("decoders accept only their own type, QUIT has no body", "[protocol]") {
    const Frame quit = decode_one(encode_quit());
    const auto not_a_result = decode_result(quit);
    REQUIRE_FALSE(not_a_result.ok());
    CHECK_THAT(not_a_result.error(), Catch::Contains("expected a RESULT frame, got QUIT"));
    CHECK_FALSE(decode_event(quit).ok());
    CHECK_FALSE(decode_hello(quit).ok());
    const auto not_a_status = decode_status(quit);
    REQUIRE_FALSE(not_a_status.ok());
    CHECK_THAT(not_a_status.error(), Catch::Contains("expected a STATUS frame, got QUIT"));
    const Frame status = decode_one(encode_status(StatusMsg{"s", true, "connected"}));
    CHECK_FALSE(decode_result(status).ok());
    CHECK_FALSE(decode_event(status).ok());
    CHECK_FALSE(decode_quit(status).ok());
    CHECK_FALSE(decode_quit(decode_one(encode_hello(HelloMsg{1, kProtocolVersion}))).ok());
    const auto quit_with_body = decode_quit(decode_one(raw_frame('Q', "{}")));
    REQUIRE_FALSE(quit_with_body.ok());
    CHECK_THAT(quit_with_body.error(), Catch::Contains("QUIT: 2 unexpected bytes"));
}

TEST_CASE("error texts name fields and numbers, never the frame's bytes", "[protocol]") {
    // Bytes that would make a log line or a "lastError" unsafe if they were echoed.
    const std::string hostile = std::string("\xff\0\n\x1b[31m\"", 8);
    std::vector<std::string> errors = {
        hello_error(hostile),
        event_error(hostile),
        result_error(hostile),
        result_error(be64(1) + "\1" + str(hostile)),
        result_error(result_body("e", 1, be32(1) + str(hostile) + byte(0))),
        status_error(hostile),
        status_error(str(hostile) + byte(1) + str(hostile)),
        status_error(str("s") + byte(1) + str(hostile)),
        fields_error(hostile),
        fields_error(str(hostile) + str(hostile) + std::string(1, '\x09')),
        decoder_error(raw_frame('\xff', hostile)),
    };
    for (const std::string& error : errors) {
        INFO(error);
        CHECK(printable_ascii(error));
    }
}

TEST_CASE("bounded_error bounds at a UTF-8 boundary and replaces what is not UTF-8", "[protocol]") {
    SECTION("through the encoder, so the supervisor receives a bounded error") {
        std::string error;
        while (error.size() < 3 * kMaxErrorBytes) {
            error += "\xe2\x82\xac"; // the euro sign, 3 bytes
        }
        ResultMsg result = sample_result(1, Outcome::retry);
        result.error = error;
        const auto decoded = decode_result(decode_one(encode_result(result)));
        REQUIRE(decoded.ok());
        const std::string& received = decoded.value().error;
        CHECK(received.size() <= kMaxErrorBytes);
        CHECK(received.size() > kMaxErrorBytes - 16);
        CHECK(valid_utf8(received));
        CHECK_THAT(received, Catch::EndsWith(" [truncated]"));
        const std::string kept = received.substr(0, received.size() - 12);
        CHECK(error.compare(0, kept.size(), kept) == 0);
    }
    SECTION("through the encoder, invalid bytes and NUL become U+FFFD") {
        ResultMsg result = sample_result(1, Outcome::permanent);
        static const char error[] = "bad \xc3\x28 and \xff, a NUL \0 here";
        result.error = std::string(error, sizeof error - 1);
        const auto decoded = decode_result(decode_one(encode_result(result)));
        REQUIRE(decoded.ok());
        CHECK(decoded.value().error ==
              "bad \xef\xbf\xbd( and \xef\xbf\xbd, a NUL \xef\xbf\xbd here");
        // What the supervisor received is already safe: sanitising again changes nothing.
        CHECK(bounded_error(decoded.value().error) == decoded.value().error);
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
                CHECK(bounded_error(bounded, 64) == bounded);
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

TEST_CASE("json_quote escapes what JSON requires and replaces what is not UTF-8", "[json]") {
    CHECK(json_quote("") == "\"\"");
    CHECK(json_quote("say \"hi\"") == R"("say \"hi\"")");
    CHECK(json_quote("C:\\dir") == R"("C:\\dir")");
    CHECK(json_quote("a\nb\tc\rd\be\ff") == R"("a\nb\tc\rd\be\ff")");
    CHECK(json_quote(std::string("\0\x01\x1f", 3)) == R"("\u0000\u0001\u001f")");
    CHECK(json_quote("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80") ==
          "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"");
    CHECK(json_quote("/\x7f") == "\"/\x7f\"");
    const std::string replacement = "\xef\xbf\xbd";
    CHECK(json_quote("a\xff") == "\"a" + replacement + "\"");
    CHECK(json_quote("\xc0\xaf") == "\"" + replacement + replacement + "\"");
    CHECK(json_quote("x\xe2\x82") == "\"x" + replacement + replacement + "\"");
    CHECK(json_quote("\xed\xa0\x80\"") ==
          "\"" + replacement + replacement + replacement + "\\\"\"");

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

    // Whatever the bytes, the result is valid UTF-8 and valid JSON.
    std::string every_byte;
    for (int c = 1; c < 256; ++c) {
        every_byte += static_cast<char>(c);
    }
    const std::string quoted = json_quote(every_byte);
    CHECK(valid_utf8(quoted));
    CHECK(json_parse(quoted));
}

TEST_CASE("Event::json() is SPEC 2's object, built by concatenation", "[event]") {
    const Event event = sample_event();
    const std::string expected =
        R"({"id":"ob_1","eventLogId":"el_1","eventKey":"order-7","tenantId":"t1",)"
        R"("projectId":null,"eventType":"shop.order.created",)"
        R"("payload":{"note": "a \"quoted\" {brace}", "orderId": 12345678901234567890123},)"
        R"("metadata":{"source": "api"},"correlationId":"",)"
        R"("createdAt":"2024-05-01T12:00:00.000000Z","attempt":3})";
    CHECK(event.json() == expected);
    CHECK(event_object_json(event) == expected);
    // Built once: the same string on every call.
    CHECK(&event.json() == &event.json());

    const Json parsed = json_parse(event.json());
    REQUIRE(cJSON_IsObject(parsed.get()));
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(parsed.get(), "projectId")));
    CHECK(json_string(parsed.get(), "correlationId") == "");

    Event odd;
    odd.id = "quote\" back\\ nl\n ctl\x01 bad\xff";
    odd.event_log_id = "el";
    odd.tenant_id = "t";
    odd.event_type = "x";
    // payload_json left empty: written as null, so that the object stays valid JSON.
    odd.created_at = "c";
    CHECK(odd.json() == R"({"id":"quote\" back\\ nl\n ctl\u0001 bad)"
                        "\xef\xbf\xbd"
                        R"(","eventLogId":"el","eventKey":null,"tenantId":"t","projectId":null,)"
                        R"("eventType":"x","payload":null,"metadata":null,"correlationId":null,)"
                        R"("createdAt":"c","attempt":1})");
    CHECK(json_parse(odd.json()));
}
