#include "common/json.h"

namespace outbox {

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

bool is_valid_utf8(std::string_view text) {
    size_t i = 0;
    while (i < text.size()) {
        // ASCII runs are the common case and need no table walk.
        if (static_cast<unsigned char>(text[i]) < 0x80) {
            ++i;
            continue;
        }
        const size_t length = utf8_sequence_length(text, i);
        if (length == 0) {
            return false;
        }
        i += length;
    }
    return true;
}

void json_quote_to(std::string& out, std::string_view text) {
    static constexpr char kHex[] = "0123456789abcdef";
    static constexpr std::string_view kReplacement = "\xef\xbf\xbd"; // U+FFFD
    out.reserve(out.size() + text.size() + 2);
    out += '"';
    size_t i = 0;
    while (i < text.size()) {
        const char c = text[i];
        const auto byte = static_cast<unsigned char>(c);
        if (byte >= 0x80) {
            // JSON carries UTF-8 as it is (escaping it as \uXXXX would only make it longer);
            // a byte that does not start a valid sequence would make the text invalid.
            const size_t length = utf8_sequence_length(text, i);
            if (length == 0) {
                out += kReplacement;
                ++i;
            } else {
                out.append(text, i, length);
                i += length;
            }
            continue;
        }
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\b':
            out += "\\b";
            break;
        case '\f':
            out += "\\f";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\r':
            out += "\\r";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (byte < 0x20) {
                out += "\\u00";
                out += kHex[byte >> 4];
                out += kHex[byte & 0xf];
            } else {
                out += c;
            }
        }
        ++i;
    }
    out += '"';
}

std::string json_quote(std::string_view text) {
    std::string out;
    json_quote_to(out, text);
    return out;
}

std::string event_object_json(const Event& event) {
    const auto nullable = [](std::string& out, const std::optional<std::string>& text) {
        if (text) {
            json_quote_to(out, *text);
        } else {
            out += "null";
        }
    };
    const auto verbatim = [](std::string& out, const std::string& json) {
        out += json.empty() ? std::string_view("null") : std::string_view(json);
    };
    std::string out;
    out.reserve(160 + event.id.size() + event.event_log_id.size() +
                (event.event_key ? event.event_key->size() : 0) + event.tenant_id.size() +
                (event.project_id ? event.project_id->size() : 0) + event.event_type.size() +
                event.payload_json.size() + event.metadata_json.size() +
                (event.correlation_id ? event.correlation_id->size() : 0) +
                event.created_at.size());
    out += "{\"id\":";
    json_quote_to(out, event.id);
    out += ",\"eventLogId\":";
    json_quote_to(out, event.event_log_id);
    out += ",\"eventKey\":";
    nullable(out, event.event_key);
    out += ",\"tenantId\":";
    json_quote_to(out, event.tenant_id);
    out += ",\"projectId\":";
    nullable(out, event.project_id);
    out += ",\"eventType\":";
    json_quote_to(out, event.event_type);
    out += ",\"payload\":";
    verbatim(out, event.payload_json);
    out += ",\"metadata\":";
    verbatim(out, event.metadata_json);
    out += ",\"correlationId\":";
    nullable(out, event.correlation_id);
    out += ",\"createdAt\":";
    json_quote_to(out, event.created_at);
    out += ",\"attempt\":";
    out += std::to_string(event.attempt);
    out += '}';
    return out;
}

const std::string& Event::json() const {
    if (json_.empty()) {
        json_ = event_object_json(*this);
    }
    return json_;
}

} // namespace outbox
