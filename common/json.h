// RAII over cJSON, used by both processes. A Json owns the root of a cJSON tree; items reached
// through it are borrowed and live as long as the root.
#pragma once

#include <cjson/cJSON.h>

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

// JSON string literal for `text` (quotes included), escaped as JSON requires.
std::string json_quote(std::string_view text);

} // namespace outbox
