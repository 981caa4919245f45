// RAII over cJSON, and the JSON text this project writes by hand. A Json owns the root of a cJSON
// tree; items reached through it are borrowed and live as long as the root.
//
// cJSON is the only JSON parser in the tree. It reads the handlers file, checks the JSON that the
// writer API and `emit` are given, and reads the supervisor's counts of unsubscribed event types;
// it never sees an event on its way to a handler: the channel is binary (common/protocol.h) and
// the event object a handler receives is written by event_object_json below, by concatenation.
#pragma once

#include <cjson/cJSON.h>
#include <outbox/outbox.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace outbox {

struct CjsonDeleter {
    void operator()(cJSON* item) const { cJSON_Delete(item); }
};
using Json = std::unique_ptr<cJSON, CjsonDeleter>;

// Parses a complete JSON text; nullptr when it is not valid JSON (or has trailing garbage).
inline Json json_parse(std::string_view text) {
    const char* end = nullptr;
    cJSON* root = cJSON_ParseWithLengthOpts(text.data(), text.size(), &end, 0);
    if (root == nullptr) {
        return nullptr;
    }
    // cJSON stops at the end of the first value; anything but whitespace after it is an error.
    const char* limit = text.data() + text.size();
    while (end < limit &&
           (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t' || *end == '\0')) {
        ++end;
    }
    if (end != limit) {
        cJSON_Delete(root);
        return nullptr;
    }
    return Json(root);
}

// Compact serialisation; the empty string only if cJSON runs out of memory.
inline std::string json_print(const cJSON* item) {
    char* text = cJSON_PrintUnformatted(item);
    if (text == nullptr) {
        return {};
    }
    std::string out(text);
    cJSON_free(text);
    return out;
}

inline std::optional<std::string> json_string(const cJSON* object, const char* key) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, key);
    if (!cJSON_IsString(item) || item->valuestring == nullptr) {
        return std::nullopt;
    }
    return std::string(item->valuestring);
}

// JSON string literal for `text` (quotes included), escaped as JSON requires: quote, backslash
// and every control character escaped, valid UTF-8 passed through, and each byte that is not part
// of a valid UTF-8 sequence replaced by U+FFFD, so that the result is always valid JSON and valid
// UTF-8 whatever the input. The one escaping function of the tree.
std::string json_quote(std::string_view text);
void json_quote_to(std::string& out, std::string_view text);

// Length of the valid UTF-8 sequence at text[i], or 0 when the bytes there are not one (overlong
// forms, surrogates and code points above U+10FFFF included, following RFC 3629). NUL is a valid
// one-byte sequence. Precondition: i < text.size().
size_t utf8_sequence_length(std::string_view text, size_t i);
bool is_valid_utf8(std::string_view text);

// The event object of SPEC 2, in its field order:
// {"id","eventLogId","eventKey","tenantId","projectId","eventType","payload","metadata",
//  "correlationId","createdAt","attempt"}. Strings are escaped by json_quote, nullable ones are
// null when absent; payload_json and metadata_json are inserted verbatim (they are PostgreSQL's
// jsonb text, so integers beyond 2^53 survive), and an empty one is written as null. Nothing is
// parsed. This is what Event::json() returns.
std::string event_object_json(const Event& event);

} // namespace outbox
