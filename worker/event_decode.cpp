#include "worker/event_decode.h"

#include <cmath>
#include <limits>
#include <string>

namespace outbox {

namespace {

Decoded<Event> field_error(const char* field, const char* problem) {
    return Decoded<Event>::failure(std::string("event field \"") + field + "\" " + problem);
}

// Reads a string field into `out`; a null (or absent) value is "" when `nullable`.
bool read_string(const cJSON* object, const char* field, bool nullable, std::string& out,
                 std::string& error) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, field);
    if (item == nullptr || cJSON_IsNull(item)) {
        if (nullable) {
            out.clear();
            return true;
        }
        error = std::string("event field \"") + field + "\" is missing";
        return false;
    }
    if (!cJSON_IsString(item) || item->valuestring == nullptr) {
        error = std::string("event field \"") + field + "\" must be a string";
        return false;
    }
    out = item->valuestring;
    return true;
}

// The verbatim text of a member, falling back to cJSON's rendering when the text does not hold
// it (a caller that passed text and object that disagree).
std::string member_json(const cJSON* item, std::string_view text, const char* field) {
    if (const auto verbatim = json_member_text(text, field)) {
        return std::string(*verbatim);
    }
    return json_print(item);
}

} // namespace

Decoded<Event> decode_event_object(const cJSON* object, std::string_view text) {
    if (!cJSON_IsObject(object)) {
        return Decoded<Event>::failure("the event is not a JSON object");
    }
    Event event;
    std::string error;
    const struct {
        const char* field;
        bool nullable;
        std::string* out;
    } strings[] = {
        {"id", false, &event.id},
        {"eventLogId", false, &event.event_log_id},
        {"eventKey", true, &event.event_key},
        {"tenantId", false, &event.tenant_id},
        {"projectId", true, &event.project_id},
        {"eventType", false, &event.event_type},
        {"correlationId", true, &event.correlation_id},
        {"createdAt", false, &event.created_at},
    };
    for (const auto& s : strings) {
        if (!read_string(object, s.field, s.nullable, *s.out, error)) {
            return Decoded<Event>::failure(std::move(error));
        }
    }
    // eventKey may be null but not absent: its absence means the object was not built as SPEC 2
    // says, not that the key is unknown.
    if (cJSON_GetObjectItemCaseSensitive(object, "eventKey") == nullptr) {
        return field_error("eventKey", "is missing");
    }

    const cJSON* payload = cJSON_GetObjectItemCaseSensitive(object, "payload");
    if (payload == nullptr) {
        return field_error("payload", "is missing");
    }
    event.payload_json = member_json(payload, text, "payload");

    const cJSON* metadata = cJSON_GetObjectItemCaseSensitive(object, "metadata");
    event.metadata_json = metadata == nullptr || cJSON_IsNull(metadata)
                              ? "null"
                              : member_json(metadata, text, "metadata");

    const cJSON* attempt = cJSON_GetObjectItemCaseSensitive(object, "attempt");
    if (attempt == nullptr) {
        return field_error("attempt", "is missing");
    }
    const double attempt_value = cJSON_IsNumber(attempt) ? attempt->valuedouble : NAN;
    if (!(std::floor(attempt_value) == attempt_value && attempt_value >= 1 &&
          attempt_value <= std::numeric_limits<int>::max())) {
        return field_error("attempt", "must be an integer >= 1");
    }
    event.attempt = static_cast<int>(attempt_value);
    event.json.assign(text);
    return Decoded<Event>::success(std::move(event));
}

Decoded<Event> decode_event_json(std::string_view text) {
    const Json object = json_parse(text);
    if (!object) {
        return Decoded<Event>::failure("the event is not valid JSON");
    }
    return decode_event_object(object.get(), text);
}

} // namespace outbox
