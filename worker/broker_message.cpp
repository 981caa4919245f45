#include "worker/broker_message.h"

#include "common/json.h"

namespace outbox {

namespace {

constexpr std::string_view kKnownPlaceholders = "${eventType}, ${tenantId}, ${orderingKey}";

} // namespace

std::optional<BodyMode> parse_body_mode(std::string_view word) {
    if (word == "event") {
        return BodyMode::event;
    }
    if (word == "payload") {
        return BodyMode::payload;
    }
    if (word == "cloudevents") {
        return BodyMode::cloudevents;
    }
    return std::nullopt;
}

const char* to_string(BodyMode mode) {
    switch (mode) {
    case BodyMode::event:
        return "event";
    case BodyMode::payload:
        return "payload";
    case BodyMode::cloudevents:
        return "cloudevents";
    }
    return "event";
}

std::optional<DestinationTemplate> DestinationTemplate::parse(std::string_view text,
                                                              std::string& error) {
    DestinationTemplate parsed;
    parsed.text_ = std::string(text);
    std::string literal;
    size_t i = 0;
    while (i < text.size()) {
        if (text.compare(i, 2, "${") != 0) {
            literal += text[i++];
            continue;
        }
        const size_t close = text.find('}', i + 2);
        if (close == std::string_view::npos) {
            error = "\"${\" at offset " + std::to_string(i) + " is not closed by \"}\"";
            return std::nullopt;
        }
        const std::string_view name = text.substr(i + 2, close - i - 2);
        Part part;
        if (name == "eventType") {
            part = Part::event_type;
        } else if (name == "tenantId") {
            part = Part::tenant_id;
        } else if (name == "orderingKey") {
            part = Part::ordering_key;
        } else {
            error = "unknown placeholder \"${" + std::string(name) +
                    "}\" (known: " + std::string(kKnownPlaceholders) + ")";
            return std::nullopt;
        }
        if (!literal.empty()) {
            parsed.parts_.emplace_back(Part::literal, std::move(literal));
            literal.clear();
        }
        parsed.parts_.emplace_back(part, std::string());
        i = close + 1;
    }
    if (!literal.empty()) {
        parsed.parts_.emplace_back(Part::literal, std::move(literal));
    }
    return parsed;
}

bool DestinationTemplate::is_constant() const {
    for (const auto& [part, text] : parts_) {
        if (part != Part::literal) {
            return false;
        }
    }
    return true;
}

std::optional<std::string> DestinationTemplate::expand(const Event& event,
                                                       std::string& error) const {
    if (is_constant()) {
        return text_;
    }
    std::string out;
    for (const auto& [part, text] : parts_) {
        switch (part) {
        case Part::literal:
            out += text;
            break;
        case Part::event_type:
            out += event.event_type;
            break;
        case Part::tenant_id:
            out += event.tenant_id;
            break;
        case Part::ordering_key:
            if (!event.ordering_key) {
                error = "\"" + text_ + "\" uses ${orderingKey}, and the event has no ordering key";
                return std::nullopt;
            }
            out += *event.ordering_key;
            break;
        }
    }
    return out;
}

std::string cloudevent_json(const Event& event, std::string_view source,
                            const std::optional<TraceContext>& trace) {
    // Attribute names and types as CloudEvents 1.0 (spec.md, json-format.md) defines them; the
    // extensions are lower-case alphanumeric names as the specification requires, with
    // traceparent and tracestate as its distributed-tracing extension names them.
    std::string out;
    out.reserve(256 + event.payload_json.size());
    out += R"({"specversion":"1.0","id":)";
    json_quote_to(out, event.id);
    out += R"(,"source":)";
    json_quote_to(out, source);
    out += R"(,"type":)";
    json_quote_to(out, event.event_type);
    const std::optional<std::string>& subject =
        event.ordering_key ? event.ordering_key : event.event_key;
    if (subject) {
        out += R"(,"subject":)";
        json_quote_to(out, *subject);
    }
    out += R"(,"time":)";
    json_quote_to(out, event.created_at);
    out += R"(,"datacontenttype":"application/json","tenantid":)";
    json_quote_to(out, event.tenant_id);
    if (event.correlation_id) {
        out += R"(,"correlationid":)";
        json_quote_to(out, *event.correlation_id);
    }
    if (trace) {
        out += R"(,"traceparent":)";
        json_quote_to(out, trace->traceparent);
        if (trace->tracestate) {
            out += R"(,"tracestate":)";
            json_quote_to(out, *trace->tracestate);
        }
    }
    // The payload is PostgreSQL's jsonb text, inserted as it is (an empty one, which the channel
    // never delivers, as null to keep the document valid).
    out += R"(,"data":)";
    out += event.payload_json.empty() ? std::string_view("null")
                                      : std::string_view(event.payload_json);
    out += '}';
    return out;
}

std::optional<BrokerMessage> build_broker_message(const MessageOptions& options, const Event& event,
                                                  std::string& error) {
    std::optional<std::string> destination = options.destination.expand(event, error);
    if (!destination) {
        return std::nullopt;
    }
    const std::optional<TraceContext> trace = trace_context_of(event.metadata_json);
    BrokerMessage message;
    message.id = event.id;
    message.destination = std::move(*destination);
    message.key = event.ordering_key ? event.ordering_key : event.event_key;
    switch (options.body) {
    case BodyMode::event:
        message.body = event.json();
        message.content_type = "application/json";
        break;
    case BodyMode::payload:
        message.body = event.payload_json;
        message.content_type = "application/json";
        break;
    case BodyMode::cloudevents:
        message.body = cloudevent_json(event, options.source, trace);
        message.content_type = "application/cloudevents+json";
        break;
    }
    message.headers.reserve(6);
    message.headers.emplace_back(kHeaderOutboxId, event.id);
    message.headers.emplace_back(kHeaderEventType, event.event_type);
    message.headers.emplace_back(kHeaderTenantId, event.tenant_id);
    if (event.correlation_id) {
        message.headers.emplace_back(kHeaderCorrelationId, *event.correlation_id);
    }
    if (trace) {
        message.headers.emplace_back(kHeaderTraceparent, trace->traceparent);
        if (trace->tracestate) {
            message.headers.emplace_back(kHeaderTracestate, *trace->tracestate);
        }
    }
    return message;
}

} // namespace outbox
