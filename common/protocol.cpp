#include "common/protocol.h"

#include "common/json.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace outbox {

namespace {

constexpr std::string_view kTruncatedMarker = " [truncated]";

// Tags of a nullable string.
constexpr uint8_t kNull = 0;
constexpr uint8_t kPresent = 1;

// Outcome bytes of RESULT.
constexpr uint8_t kOutcomeSuccess = 0;
constexpr uint8_t kOutcomeRetry = 1;
constexpr uint8_t kOutcomePermanent = 2;

// The EVENT envelope (seq and timeout), and the body before the fields: the type byte and it.
constexpr size_t kEventEnvelopeBytes = 8 + 8;
constexpr size_t kEventFrameOverhead = 1 + kEventEnvelopeBytes;

// The smallest encoding of one per-subscriber outcome: an empty name (its 4-byte length) and the
// outcome byte. A count is checked against the bytes left before anything is reserved for it.
constexpr size_t kMinSubscriberOutcomeBytes = 4 + 1;

constexpr uint64_t kMaxInt64 = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

bool is_known_type(char type) {
    switch (static_cast<MessageType>(type)) {
    case MessageType::hello:
    case MessageType::event:
    case MessageType::result:
    case MessageType::quit:
    case MessageType::status:
        return true;
    }
    return false;
}

// ---- writing -------------------------------------------------------------------------------

void put_u8(std::string& out, uint8_t value) {
    out += static_cast<char>(value);
}

void put_u32(std::string& out, uint32_t value) {
    for (int shift = 24; shift >= 0; shift -= 8) {
        out += static_cast<char>((value >> shift) & 0xff);
    }
}

void put_u64(std::string& out, uint64_t value) {
    for (int shift = 56; shift >= 0; shift -= 8) {
        out += static_cast<char>((value >> shift) & 0xff);
    }
}

// Signed quantities that are never negative in a valid message travel as u64; a negative one
// (a bug of the caller) is sent as 0 rather than as a huge number the receiver must reject.
void put_non_negative(std::string& out, int64_t value) {
    put_u64(out, value < 0 ? 0 : static_cast<uint64_t>(value));
}

void put_string(std::string& out, std::string_view text) {
    if (text.size() > std::numeric_limits<uint32_t>::max()) {
        std::fprintf(stderr, "outbox: a %zu-byte string cannot be encoded in a frame\n",
                     text.size());
        std::abort();
    }
    put_u32(out, static_cast<uint32_t>(text.size()));
    out += text;
}

void put_nullable_string(std::string& out, const std::optional<std::string_view>& text) {
    if (!text) {
        put_u8(out, kNull);
        return;
    }
    put_u8(out, kPresent);
    put_string(out, *text);
}

// The 4-byte header and the type byte; `body_size` counts the bytes after the type byte.
std::string frame_start(MessageType type, size_t body_size) {
    const size_t length = 1 + body_size;
    std::string frame;
    frame.reserve(kFrameHeaderSize + length);
    put_u32(frame, static_cast<uint32_t>(length));
    frame += static_cast<char>(type);
    return frame;
}

uint8_t outcome_byte(Outcome outcome) {
    switch (outcome) {
    case Outcome::success:
        return kOutcomeSuccess;
    case Outcome::retry:
        return kOutcomeRetry;
    case Outcome::permanent:
        return kOutcomePermanent;
    }
    return kOutcomeRetry;
}

// ---- reading -------------------------------------------------------------------------------

// Reads fields in order from untrusted bytes. Each read checks that its bytes are there; the first
// failure records an error naming the field, and every later read fails too, so a decoder can
// read a whole message and check once (or after the reads whose values steer it).
class WireReader {
  public:
    explicit WireReader(std::string_view bytes) : bytes_(bytes) {}

    bool ok() const { return error_.empty(); }
    const std::string& error() const { return error_; }
    size_t left() const { return bytes_.size() - offset_; }

    bool u8(const char* field, uint8_t& out) {
        if (!need(field, 1, "")) {
            return false;
        }
        out = static_cast<uint8_t>(bytes_[offset_]);
        offset_ += 1;
        return true;
    }

    bool u32(const char* field, uint32_t& out) {
        if (!need(field, 4, "")) {
            return false;
        }
        out = 0;
        for (int i = 0; i < 4; ++i) {
            out = (out << 8) | static_cast<uint8_t>(bytes_[offset_ + static_cast<size_t>(i)]);
        }
        offset_ += 4;
        return true;
    }

    bool u64(const char* field, uint64_t& out) {
        if (!need(field, 8, "")) {
            return false;
        }
        out = 0;
        for (int i = 0; i < 8; ++i) {
            out = (out << 8) | static_cast<uint8_t>(bytes_[offset_ + static_cast<size_t>(i)]);
        }
        offset_ += 8;
        return true;
    }

    // A u64 that the message defines as a signed quantity in [0, INT64_MAX].
    bool non_negative(const char* field, int64_t& out) {
        uint64_t value = 0;
        if (!u64(field, value)) {
            return false;
        }
        if (value > kMaxInt64) {
            return fail(field, "is " + std::to_string(value) + ", above the largest allowed " +
                                   std::to_string(kMaxInt64));
        }
        out = static_cast<int64_t>(value);
        return true;
    }

    bool string(const char* field, std::string_view& out) {
        uint32_t length = 0;
        if (!need(field, 4, " for its length") || !u32(field, length)) {
            return false;
        }
        if (length > left()) {
            return fail(field, "has length " + std::to_string(length) + " but only " +
                                   std::to_string(left()) + " bytes follow");
        }
        out = bytes_.substr(offset_, length);
        offset_ += length;
        return true;
    }

    bool nullable_string(const char* field, std::optional<std::string_view>& out) {
        uint8_t tag = 0;
        if (!need(field, 1, " for its null tag") || !u8(field, tag)) {
            return false;
        }
        if (tag == kNull) {
            out.reset();
            return true;
        }
        if (tag != kPresent) {
            return fail(field, "has null tag " + std::to_string(tag) + ", neither " +
                                   std::to_string(kNull) + " (null) nor " +
                                   std::to_string(kPresent) + " (a string)");
        }
        std::string_view text;
        if (!string(field, text)) {
            return false;
        }
        out = text;
        return true;
    }

    // Nothing may follow the last field: extra bytes mean the two sides disagree on the layout.
    bool at_end() {
        if (!ok()) {
            return false;
        }
        if (left() != 0) {
            error_ = std::to_string(left()) + " unexpected bytes after the last field";
            return false;
        }
        return true;
    }

    bool fail(const char* field, const std::string& problem) {
        if (ok()) {
            error_ = std::string("field \"") + field + "\" " + problem;
        }
        return false;
    }

  private:
    bool need(const char* field, size_t count, const char* what) {
        if (!ok()) {
            return false;
        }
        if (left() < count) {
            return fail(field, "is cut short: it needs " + std::to_string(count) + " bytes" + what +
                                   ", " + std::to_string(left()) + " left");
        }
        return true;
    }

    std::string_view bytes_;
    size_t offset_ = 0;
    std::string error_;
};

bool read_outcome(WireReader& reader, const char* field, Outcome& out) {
    uint8_t byte = 0;
    if (!reader.u8(field, byte)) {
        return false;
    }
    switch (byte) {
    case kOutcomeSuccess:
        out = Outcome::success;
        return true;
    case kOutcomeRetry:
        out = Outcome::retry;
        return true;
    case kOutcomePermanent:
        out = Outcome::permanent;
        return true;
    default:
        return reader.fail(field, "is " + std::to_string(byte) +
                                      ", not 0 (success), 1 (retry) or 2 (permanent)");
    }
}

// What the supervisor stores must be text PostgreSQL accepts and of bounded size; the handler
// process's encoder guarantees it, so a violation is the other end breaking the protocol.
bool check_stored_text(WireReader& reader, const char* field, std::string_view text,
                       size_t max_bytes) {
    if (text.size() > max_bytes) {
        return reader.fail(field, "is " + std::to_string(text.size()) +
                                      " bytes long, above the limit of " +
                                      std::to_string(max_bytes));
    }
    if (text.find('\0') != std::string_view::npos) {
        return reader.fail(field, "contains a NUL byte");
    }
    if (!is_valid_utf8(text)) {
        return reader.fail(field, "is not valid UTF-8");
    }
    return true;
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
    case MessageType::status:
        return "STATUS";
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
            Next next;
            next.status = Status::frame;
            next.frame.type = static_cast<MessageType>(bytes[4]);
            next.frame.body.assign(buffer_, offset_ + kFrameHeaderSize + 1, length - 1);
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
    std::string frame = frame_start(MessageType::hello, 8);
    put_u32(frame, static_cast<uint32_t>(hello.protocol < 0 ? 0 : hello.protocol));
    put_u32(frame, static_cast<uint32_t>(hello.pid < 0 ? 0 : hello.pid));
    return frame;
}

std::string encode_result(const ResultMsg& result) {
    const std::string error = bounded_error(result.error);
    std::string body;
    body.reserve(8 + 1 + 4 + error.size() + 3 * 8 + 4);
    put_u64(body, result.seq);
    put_u8(body, outcome_byte(result.outcome));
    put_string(body, error);
    put_non_negative(body, result.retry_after_ms);
    put_non_negative(body, result.started_at_us);
    put_non_negative(body, result.duration_us);
    const size_t count = std::min(result.subscribers.size(), kMaxSubscriberResults);
    put_u32(body, static_cast<uint32_t>(count));
    for (size_t i = 0; i < count; ++i) {
        put_string(body, bounded_error(result.subscribers[i].name, kMaxSubscriberNameBytes));
        put_u8(body, outcome_byte(result.subscribers[i].outcome));
    }
    std::string frame = frame_start(MessageType::result, body.size());
    frame += body;
    return frame;
}

std::string encode_quit() {
    return frame_start(MessageType::quit, 0);
}

std::string encode_event_fields(const EventFieldsView& fields) {
    // An oversized or empty list goes out as null (see the header): running every subscriber
    // again is allowed, failing the event for good over its bookkeeping is not.
    std::optional<std::string_view> subscribers_done = fields.subscribers_done_json;
    if (subscribers_done &&
        (subscribers_done->empty() || subscribers_done->size() > kMaxSubscribersDoneBytes)) {
        subscribers_done.reset();
    }
    std::string out;
    out.reserve(fields.id.size() + fields.event_log_id.size() +
                (fields.event_key ? fields.event_key->size() : 0) + fields.tenant_id.size() +
                (fields.project_id ? fields.project_id->size() : 0) + fields.event_type.size() +
                fields.payload_json.size() +
                (fields.metadata_json ? fields.metadata_json->size() : 0) +
                (fields.correlation_id ? fields.correlation_id->size() : 0) +
                fields.created_at.size() + (subscribers_done ? subscribers_done->size() : 0) +
                (fields.ordering_key ? fields.ordering_key->size() : 0) + 13 * 5);
    put_string(out, fields.id);
    put_string(out, fields.event_log_id);
    put_nullable_string(out, fields.event_key);
    put_string(out, fields.tenant_id);
    put_nullable_string(out, fields.project_id);
    put_string(out, fields.event_type);
    put_string(out, fields.payload_json);
    put_nullable_string(out, fields.metadata_json);
    put_nullable_string(out, fields.correlation_id);
    put_string(out, fields.created_at);
    put_u32(out, static_cast<uint32_t>(fields.attempt < 0 ? 0 : fields.attempt));
    put_nullable_string(out, subscribers_done);
    put_nullable_string(out, fields.ordering_key);
    return out;
}

EventFieldsView event_fields_of(const Event& event) {
    const auto view = [](const std::optional<std::string>& text) {
        return text ? std::optional<std::string_view>(*text) : std::nullopt;
    };
    EventFieldsView fields;
    fields.id = event.id;
    fields.event_log_id = event.event_log_id;
    fields.event_key = view(event.event_key);
    fields.tenant_id = event.tenant_id;
    fields.project_id = view(event.project_id);
    fields.event_type = event.event_type;
    fields.payload_json = event.payload_json;
    if (!event.metadata_json.empty() && event.metadata_json != "null") {
        fields.metadata_json = event.metadata_json;
    }
    fields.correlation_id = view(event.correlation_id);
    fields.created_at = event.created_at;
    fields.attempt = event.attempt;
    fields.ordering_key = view(event.ordering_key);
    return fields;
}

EventFieldsView event_fields_of(const EventDelivery& delivery) {
    EventFieldsView fields = event_fields_of(delivery.event);
    if (delivery.subscribers_done_json) {
        fields.subscribers_done_json = *delivery.subscribers_done_json;
    }
    return fields;
}

std::string encode_status(const StatusMsg& status) {
    const std::string sink = bounded_error(status.sink, kMaxSubscriberNameBytes);
    const std::string reason = bounded_error(status.reason, kMaxStatusReasonBytes);
    std::string frame = frame_start(MessageType::status, 4 + sink.size() + 1 + 4 + reason.size());
    put_string(frame, sink);
    put_u8(frame, status.connected ? 1 : 0);
    put_string(frame, reason);
    return frame;
}

std::string encode_event(const EventMsg& event) {
    return encode_event_frame(event.seq, event.timeout_ms, event.fields);
}

bool event_fits_in_frame(size_t fields_size) {
    return fields_size <= kMaxFrameBody - kEventFrameOverhead;
}

std::string encode_event_frame(uint64_t seq, long timeout_ms, std::string_view fields) {
    if (!event_fits_in_frame(fields.size())) {
        std::fprintf(stderr,
                     "outbox: encode_event_frame called with a %zu-byte event, which does not fit "
                     "in a frame; the caller must check event_fits_in_frame first\n",
                     fields.size());
        std::abort();
    }
    std::string frame = frame_start(MessageType::event, kEventEnvelopeBytes + fields.size());
    put_u64(frame, seq);
    put_non_negative(frame, timeout_ms);
    frame += fields;
    return frame;
}

// ---- decoders ------------------------------------------------------------------------------

Decoded<HelloMsg> decode_hello(const Frame& frame) {
    if (frame.type != MessageType::hello) {
        return wrong_type<HelloMsg>(MessageType::hello, frame);
    }
    WireReader reader(frame.body);
    // The version comes first, so that a process speaking another version is told so rather than
    // that some field of ours is malformed in its message.
    uint32_t protocol = 0;
    if (!reader.u32("protocol", protocol)) {
        return message_error<HelloMsg>(frame.type, reader.error());
    }
    if (protocol != static_cast<uint32_t>(kProtocolVersion)) {
        return message_error<HelloMsg>(
            frame.type, "handler process speaks protocol version " + std::to_string(protocol) +
                            ", the supervisor speaks version " + std::to_string(kProtocolVersion));
    }
    uint32_t pid = 0;
    if (reader.u32("pid", pid) && (pid < 1 || pid > static_cast<uint32_t>(INT32_MAX))) {
        reader.fail("pid", "is " + std::to_string(pid) + ", outside [1, " +
                               std::to_string(INT32_MAX) + "]");
    }
    if (!reader.at_end()) {
        return message_error<HelloMsg>(frame.type, reader.error());
    }
    HelloMsg hello;
    hello.pid = static_cast<long>(pid);
    hello.protocol = static_cast<int>(protocol);
    return Decoded<HelloMsg>::success(hello);
}

Decoded<EventMsg> decode_event(const Frame& frame) {
    if (frame.type != MessageType::event) {
        return wrong_type<EventMsg>(MessageType::event, frame);
    }
    WireReader reader(frame.body);
    EventMsg message;
    int64_t timeout = 0;
    reader.u64("seq", message.seq);
    reader.non_negative("timeoutMs", timeout);
    if (!reader.ok()) {
        return message_error<EventMsg>(frame.type, reader.error());
    }
    message.timeout_ms = static_cast<long>(timeout);
    message.fields = std::string_view(frame.body).substr(kEventEnvelopeBytes);
    return Decoded<EventMsg>::success(message);
}

Decoded<EventDelivery> decode_event_delivery(std::string_view fields) {
    WireReader reader(fields);
    std::string_view id, event_log_id, tenant_id, event_type, payload, created_at;
    std::optional<std::string_view> event_key, project_id, metadata, correlation_id,
        subscribers_done, ordering_key;
    uint32_t attempt = 0;
    reader.string("id", id);
    reader.string("eventLogId", event_log_id);
    reader.nullable_string("eventKey", event_key);
    reader.string("tenantId", tenant_id);
    reader.nullable_string("projectId", project_id);
    reader.string("eventType", event_type);
    if (reader.string("payload", payload) && payload.empty()) {
        reader.fail("payload", "is empty, not a JSON text");
    }
    if (reader.nullable_string("metadata", metadata) && metadata && metadata->empty()) {
        reader.fail("metadata", "is empty, neither null nor a JSON text");
    }
    reader.nullable_string("correlationId", correlation_id);
    reader.string("createdAt", created_at);
    if (reader.u32("attempt", attempt) &&
        (attempt < 1 || attempt > static_cast<uint32_t>(std::numeric_limits<int>::max()))) {
        reader.fail("attempt", "is " + std::to_string(attempt) + ", outside [1, " +
                                   std::to_string(std::numeric_limits<int>::max()) + "]");
    }
    // Only its size is checked here: what it holds is judged by the handler process, which runs
    // every subscriber when the list is not a JSON array of strings.
    if (reader.nullable_string("subscribersDone", subscribers_done) && subscribers_done) {
        if (subscribers_done->empty()) {
            reader.fail("subscribersDone", "is empty, neither null nor a JSON text");
        } else if (subscribers_done->size() > kMaxSubscribersDoneBytes) {
            reader.fail("subscribersDone", "is " + std::to_string(subscribers_done->size()) +
                                               " bytes long, above the limit of " +
                                               std::to_string(kMaxSubscribersDoneBytes));
        }
    }
    reader.nullable_string("orderingKey", ordering_key);
    if (!reader.at_end()) {
        return Decoded<EventDelivery>::failure("event " + reader.error());
    }
    const auto copy = [](const std::optional<std::string_view>& text) {
        return text ? std::optional<std::string>(*text) : std::nullopt;
    };
    EventDelivery delivery;
    Event& event = delivery.event;
    event.id.assign(id);
    event.event_log_id.assign(event_log_id);
    event.event_key = copy(event_key);
    event.tenant_id.assign(tenant_id);
    event.project_id = copy(project_id);
    event.event_type.assign(event_type);
    event.payload_json.assign(payload);
    event.metadata_json = metadata ? std::string(*metadata) : std::string("null");
    event.correlation_id = copy(correlation_id);
    event.created_at.assign(created_at);
    event.attempt = static_cast<int>(attempt);
    event.ordering_key = copy(ordering_key);
    delivery.subscribers_done_json = copy(subscribers_done);
    return Decoded<EventDelivery>::success(std::move(delivery));
}

Decoded<Event> decode_event_fields(std::string_view fields) {
    Decoded<EventDelivery> delivery = decode_event_delivery(fields);
    if (!delivery) {
        return Decoded<Event>::failure(delivery.error());
    }
    return Decoded<Event>::success(std::move(delivery.value().event));
}

Decoded<ResultMsg> decode_result(const Frame& frame) {
    if (frame.type != MessageType::result) {
        return wrong_type<ResultMsg>(MessageType::result, frame);
    }
    WireReader reader(frame.body);
    ResultMsg result;
    std::string_view error;
    reader.u64("seq", result.seq);
    read_outcome(reader, "outcome", result.outcome);
    if (reader.string("error", error)) {
        check_stored_text(reader, "error", error, kMaxErrorBytes);
    }
    int64_t retry_after = 0;
    reader.non_negative("retryAfterMs", retry_after);
    reader.non_negative("startedAtUs", result.started_at_us);
    reader.non_negative("durationUs", result.duration_us);
    uint32_t count = 0;
    if (reader.u32("subscribers", count)) {
        if (count > kMaxSubscriberResults) {
            reader.fail("subscribers", "counts " + std::to_string(count) +
                                           " entries, above the limit of " +
                                           std::to_string(kMaxSubscriberResults));
        } else if (count > reader.left() / kMinSubscriberOutcomeBytes) {
            reader.fail("subscribers", "counts " + std::to_string(count) + " entries but only " +
                                           std::to_string(reader.left()) + " bytes follow");
        } else {
            result.subscribers.reserve(count);
        }
    }
    for (uint32_t i = 0; i < count && reader.ok(); ++i) {
        std::string_view name;
        SubscriberOutcome entry;
        if (reader.string("subscribers.name", name)) {
            check_stored_text(reader, "subscribers.name", name, kMaxSubscriberNameBytes);
        }
        read_outcome(reader, "subscribers.outcome", entry.outcome);
        entry.name.assign(name);
        result.subscribers.push_back(std::move(entry));
    }
    if (!reader.at_end()) {
        return message_error<ResultMsg>(frame.type, reader.error());
    }
    result.error.assign(error);
    result.retry_after_ms = static_cast<long>(retry_after);
    return Decoded<ResultMsg>::success(std::move(result));
}

Decoded<QuitMsg> decode_quit(const Frame& frame) {
    if (frame.type != MessageType::quit) {
        return wrong_type<QuitMsg>(MessageType::quit, frame);
    }
    if (!frame.body.empty()) {
        return message_error<QuitMsg>(frame.type, std::to_string(frame.body.size()) +
                                                      " unexpected bytes after the last field");
    }
    return Decoded<QuitMsg>::success(QuitMsg{});
}

Decoded<StatusMsg> decode_status(const Frame& frame) {
    if (frame.type != MessageType::status) {
        return wrong_type<StatusMsg>(MessageType::status, frame);
    }
    WireReader reader(frame.body);
    std::string_view sink, reason;
    uint8_t connected = 0;
    if (reader.string("sink", sink)) {
        check_stored_text(reader, "sink", sink, kMaxSubscriberNameBytes);
    }
    if (reader.u8("connected", connected) && connected > 1) {
        reader.fail("connected", "is " + std::to_string(connected) + ", not 0 (no) or 1 (yes)");
    }
    if (reader.string("reason", reason)) {
        check_stored_text(reader, "reason", reason, kMaxStatusReasonBytes);
    }
    if (!reader.at_end()) {
        return message_error<StatusMsg>(frame.type, reader.error());
    }
    StatusMsg status;
    status.sink.assign(sink);
    status.connected = connected == 1;
    status.reason.assign(reason);
    return Decoded<StatusMsg>::success(std::move(status));
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

} // namespace outbox
