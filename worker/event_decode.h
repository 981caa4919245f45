// Turns the event object of an EVENT message (SPEC 2) into the outbox::Event handed to handlers.
#pragma once

#include "common/json.h"
#include "common/protocol.h"
#include <outbox/outbox.h>

#include <string_view>

namespace outbox {

// `object` is the parsed event object and `text` the same object's verbatim JSON text. The text
// becomes Event::json, and payload_json and metadata_json are cut from it verbatim rather than
// re-serialised by cJSON, which would round numbers beyond double precision (a 64-bit id in a
// payload) and drop everything after a \u0000 in a string. The error names the missing or
// mistyped field.
//
// Nullable fields: projectId and correlationId (null or absent -> ""), metadata (null or absent
// -> "null"), and eventKey (null -> ""), because an "Outbox" row without its "EventLog" row has
// no event key to report.
[[nodiscard]] Decoded<Event> decode_event_object(const cJSON* object, std::string_view text);

// The same, parsing `text` first (for callers that hold only the text).
[[nodiscard]] Decoded<Event> decode_event_json(std::string_view text);

} // namespace outbox
