// What a broker subscriber publishes for one event (SPEC 4, "Message brokers"): the destination
// with its ${...} placeholders expanded, the key, the body in the configured mode and the headers.
// Built once per event and subscriber in the handler process, from the decoded Event, without
// parsing the payload (only the metadata is parsed, and only for the trace context).
#pragma once

#include <outbox/outbox.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

enum class BodyMode {
    event,       // the event object as exec and http handlers receive it (Event::json())
    payload,     // the payload JSON alone
    cloudevents, // CloudEvents 1.0 structured mode (application/cloudevents+json)
};

// "event", "payload", "cloudevents"; nullopt for anything else.
std::optional<BodyMode> parse_body_mode(std::string_view word);
const char* to_string(BodyMode mode);

// A destination (topic, subject, routing key, stream) with placeholders: literal text and
// ${eventType}, ${tenantId}, ${orderingKey}. Parsed when the handlers file is loaded, so that an
// unknown placeholder or an unclosed "${" is a configuration error, not a failure per event.
class DestinationTemplate {
  public:
    // nullopt and `error` set (one line, naming the placeholder) when the text is not valid.
    static std::optional<DestinationTemplate> parse(std::string_view text, std::string& error);

    // The destination for `event`. An event without an ordering key has none to put in
    // ${orderingKey}: nullopt, and `error` says so (the publication then fails permanently, since
    // the event will never have one).
    std::optional<std::string> expand(const Event& event, std::string& error) const;

    const std::string& text() const { return text_; }
    // Whether expand() gives the same text for every event.
    bool is_constant() const;

  private:
    enum class Part { literal, event_type, tenant_id, ordering_key };
    std::string text_;
    std::vector<std::pair<Part, std::string>> parts_;
};

struct MessageOptions {
    DestinationTemplate destination;
    BodyMode body = BodyMode::event;
    std::string source = "outbox-worker"; // CloudEvents "source": the handlers file's "source",
                                          // else SERVICE_NAME
};

// The W3C trace context of an event: "traceparent" and "tracestate" at the top level of its
// metadata object (SPEC 4, "Trace context"). traceparent is passed on only when it is well formed
// (version-traceid-parentid-flags in lower-case hex, ids not all zero); tracestate only beside a
// valid traceparent, and only when it is printable ASCII of at most 512 bytes.
struct TraceContext {
    std::string traceparent;
    std::optional<std::string> tracestate;
};
std::optional<TraceContext> trace_context_of(std::string_view metadata_json);
bool is_valid_traceparent(std::string_view value);

// Header names every broker message carries (where the broker has headers; Redis stream entries
// carry them as fields). Outbox id, event type and tenant always; correlation id and the trace
// context when the event has them.
inline constexpr const char* kHeaderOutboxId = "outbox-id";
inline constexpr const char* kHeaderEventType = "outbox-event-type";
inline constexpr const char* kHeaderTenantId = "outbox-tenant-id";
inline constexpr const char* kHeaderCorrelationId = "outbox-correlation-id";
inline constexpr const char* kHeaderTraceparent = "traceparent";
inline constexpr const char* kHeaderTracestate = "tracestate";

struct BrokerMessage {
    std::string id;          // the Outbox id: the broker's dedup or message id where it has one
    std::string destination; // expanded
    // The record key (Kafka) and the "key" field (Redis): the event's ordering key, else its
    // eventKey; nullopt when it has neither.
    std::optional<std::string> key;
    std::string body;
    std::string content_type; // "application/json" or "application/cloudevents+json"
    std::vector<std::pair<std::string, std::string>> headers; // in the order above
};

// Builds the message; nullopt and `error` set when the destination cannot be expanded.
std::optional<BrokerMessage> build_broker_message(const MessageOptions& options, const Event& event,
                                                  std::string& error);

// The CloudEvents 1.0 structured-mode JSON of `event`: specversion "1.0", id = the Outbox id,
// source, type = eventType, subject = the ordering key else eventKey (omitted when neither),
// time = createdAt, datacontenttype "application/json", data = the payload verbatim, and the
// extension attributes tenantid, correlationid, traceparent and tracestate when present.
std::string cloudevent_json(const Event& event, std::string_view source,
                            const std::optional<TraceContext>& trace);

} // namespace outbox
