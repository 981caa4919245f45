// W3C trace context (https://www.w3.org/TR/trace-context/) read from an event's metadata, for
// passing on to handlers and brokers (SPEC 4, "Trace context").
#include "common/json.h"
#include "worker/broker_message.h"

namespace outbox {

namespace {

// The longest tracestate passed on: the W3C recommendation asks vendors to propagate at least
// 512 bytes, and a longer one is more likely garbage than a trace.
constexpr size_t kMaxTracestateBytes = 512;

bool is_lower_hex(std::string_view text) {
    for (const char c : text) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
    }
    return true;
}

bool all_zero(std::string_view text) {
    return text.find_first_not_of('0') == std::string_view::npos;
}

bool is_printable_ascii(std::string_view text) {
    for (const char c : text) {
        if (c < 0x20 || c > 0x7e) {
            return false;
        }
    }
    return true;
}

} // namespace

bool is_valid_traceparent(std::string_view value) {
    // version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
    constexpr size_t kLength = 55;
    if (value.size() < kLength || value[2] != '-' || value[35] != '-' || value[52] != '-') {
        return false;
    }
    const std::string_view version = value.substr(0, 2);
    const std::string_view trace_id = value.substr(3, 32);
    const std::string_view parent_id = value.substr(36, 16);
    const std::string_view flags = value.substr(53, 2);
    if (!is_lower_hex(version) || version == "ff" || !is_lower_hex(trace_id) ||
        !is_lower_hex(parent_id) || !is_lower_hex(flags) || all_zero(trace_id) ||
        all_zero(parent_id)) {
        return false;
    }
    // Version 00 is exactly 55 characters; a later version may append fields after a dash, which
    // a version-00 reader passes on untouched.
    if (version == "00") {
        return value.size() == kLength;
    }
    return value.size() == kLength || (value[kLength] == '-' && is_printable_ascii(value));
}

std::optional<TraceContext> trace_context_of(std::string_view metadata_json) {
    // Most events carry no trace context: a substring search settles those without parsing.
    if (metadata_json.find("traceparent") == std::string_view::npos) {
        return std::nullopt;
    }
    const Json metadata = json_parse(metadata_json);
    if (!cJSON_IsObject(metadata.get())) {
        return std::nullopt;
    }
    std::optional<std::string> traceparent = json_string(metadata.get(), "traceparent");
    if (!traceparent || !is_valid_traceparent(*traceparent)) {
        return std::nullopt;
    }
    TraceContext context{std::move(*traceparent), std::nullopt};
    if (std::optional<std::string> state = json_string(metadata.get(), "tracestate");
        state && !state->empty() && state->size() <= kMaxTracestateBytes &&
        is_printable_ascii(*state)) {
        context.tracestate = std::move(*state);
    }
    return context;
}

} // namespace outbox
