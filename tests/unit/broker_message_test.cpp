// What a broker subscriber publishes (worker/broker_message.h): destinations with placeholders,
// the three body modes, the headers, and the W3C trace context taken from the metadata.
#include "common/json.h"
#include "worker/broker_message.h"

#include <catch2/catch.hpp>

namespace {

constexpr const char* kTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

outbox::Event sample_event() {
    outbox::Event event;
    event.id = "ob-1";
    event.event_log_id = "el-1";
    event.event_key = "order-7";
    event.tenant_id = "t1";
    event.event_type = "order.created";
    event.payload_json = R"({"orderId": 12345678901234567890, "note": "<b>"})";
    event.metadata_json = std::string(R"({"traceparent": ")") + kTraceparent +
                          R"(", "tracestate": "congo=t61rcWkgMzE", "other": 1})";
    event.correlation_id = "corr-9";
    event.created_at = "2024-05-01T12:00:00.123456Z";
    event.attempt = 2;
    return event;
}

outbox::MessageOptions options_for(const std::string& destination,
                                   outbox::BodyMode body = outbox::BodyMode::event) {
    std::string error;
    auto parsed = outbox::DestinationTemplate::parse(destination, error);
    INFO(error);
    REQUIRE(parsed);
    outbox::MessageOptions options{*parsed, body, "/shop"};
    return options;
}

std::string header(const outbox::BrokerMessage& message, const std::string& name) {
    for (const auto& [key, value] : message.headers) {
        if (key == name) {
            return value;
        }
    }
    return "<absent>";
}

} // namespace

TEST_CASE("destination templates expand the three placeholders", "[broker][message]") {
    outbox::Event event = sample_event();
    event.ordering_key = "product-42";
    std::string error;
    auto all =
        outbox::DestinationTemplate::parse("x.${eventType}.${tenantId}.${orderingKey}$", error);
    REQUIRE(all);
    CHECK_FALSE(all->is_constant());
    CHECK(all->expand(event, error) == "x.order.created.t1.product-42$");

    auto constant = outbox::DestinationTemplate::parse("orders", error);
    REQUIRE(constant);
    CHECK(constant->is_constant());
    CHECK(constant->expand(event, error) == "orders");

    event.ordering_key.reset();
    error.clear();
    CHECK_FALSE(all->expand(event, error));
    CHECK(error == "\"x.${eventType}.${tenantId}.${orderingKey}$\" uses ${orderingKey}, and the "
                   "event has no ordering key");
}

TEST_CASE("destination templates refuse unknown and unclosed placeholders", "[broker][message]") {
    std::string error;
    CHECK_FALSE(outbox::DestinationTemplate::parse("a.${eventtype}", error));
    CHECK(error == "unknown placeholder \"${eventtype}\" (known: ${eventType}, ${tenantId}, "
                   "${orderingKey})");
    CHECK_FALSE(outbox::DestinationTemplate::parse("a.${eventType", error));
    CHECK(error == "\"${\" at offset 2 is not closed by \"}\"");
    CHECK(outbox::DestinationTemplate::parse("", error));
    CHECK(outbox::DestinationTemplate::parse("cost$5 {x}", error));
}

TEST_CASE("a broker message carries id, key, headers and the event as body", "[broker][message]") {
    outbox::Event event = sample_event();
    std::string error;
    auto message = outbox::build_broker_message(options_for("orders.${eventType}"), event, error);
    REQUIRE(message);
    CHECK(message->id == "ob-1");
    CHECK(message->destination == "orders.order.created");
    CHECK(message->key == "order-7"); // no ordering key: the eventKey
    CHECK(message->body == event.json());
    CHECK(message->content_type == "application/json");
    REQUIRE(message->headers.size() == 6);
    CHECK(message->headers[0] == std::pair<std::string, std::string>{"outbox-id", "ob-1"});
    CHECK(header(*message, "outbox-event-type") == "order.created");
    CHECK(header(*message, "outbox-tenant-id") == "t1");
    CHECK(header(*message, "outbox-correlation-id") == "corr-9");
    CHECK(header(*message, "traceparent") == kTraceparent);
    CHECK(header(*message, "tracestate") == "congo=t61rcWkgMzE");

    event.ordering_key = "product-42";
    event.correlation_id.reset();
    event.metadata_json = "null";
    message = outbox::build_broker_message(options_for("orders", outbox::BodyMode::payload), event,
                                           error);
    REQUIRE(message);
    CHECK(message->key == "product-42");
    CHECK(message->body == event.payload_json); // verbatim: every digit survives
    CHECK(message->headers.size() == 3);
    CHECK(header(*message, "traceparent") == "<absent>");

    event.event_key.reset();
    event.ordering_key.reset();
    message = outbox::build_broker_message(options_for("orders"), event, error);
    REQUIRE(message);
    CHECK_FALSE(message->key);
}

TEST_CASE("the cloudevents body is CloudEvents 1.0 structured JSON", "[broker][message]") {
    outbox::Event event = sample_event();
    std::string error;
    auto message = outbox::build_broker_message(
        options_for("orders", outbox::BodyMode::cloudevents), event, error);
    REQUIRE(message);
    CHECK(message->content_type == "application/cloudevents+json");
    const outbox::Json parsed = outbox::json_parse(message->body);
    REQUIRE(parsed);
    CHECK(outbox::json_string(parsed.get(), "specversion") == "1.0");
    CHECK(outbox::json_string(parsed.get(), "id") == "ob-1");
    CHECK(outbox::json_string(parsed.get(), "source") == "/shop");
    CHECK(outbox::json_string(parsed.get(), "type") == "order.created");
    CHECK(outbox::json_string(parsed.get(), "subject") == "order-7");
    CHECK(outbox::json_string(parsed.get(), "time") == "2024-05-01T12:00:00.123456Z");
    CHECK(outbox::json_string(parsed.get(), "datacontenttype") == "application/json");
    CHECK(outbox::json_string(parsed.get(), "tenantid") == "t1");
    CHECK(outbox::json_string(parsed.get(), "correlationid") == "corr-9");
    CHECK(outbox::json_string(parsed.get(), "traceparent") == kTraceparent);
    CHECK(outbox::json_string(parsed.get(), "tracestate") == "congo=t61rcWkgMzE");
    // data is the payload verbatim, not re-encoded: the 20-digit integer keeps every digit.
    CHECK(message->body.find(R"("data":{"orderId": 12345678901234567890, "note": "<b>"})") !=
          std::string::npos);

    // Hostile strings stay inside their JSON strings.
    event.event_type = "a\"b\n";
    event.ordering_key = "k\\";
    event.metadata_json = "{}";
    event.correlation_id.reset();
    const std::string body = outbox::cloudevent_json(event, "src", std::nullopt);
    const outbox::Json again = outbox::json_parse(body);
    REQUIRE(again);
    CHECK(outbox::json_string(again.get(), "type") == "a\"b\n");
    CHECK(outbox::json_string(again.get(), "subject") == "k\\");
    CHECK_FALSE(outbox::json_string(again.get(), "correlationid"));
    CHECK_FALSE(outbox::json_string(again.get(), "traceparent"));
}

TEST_CASE("trace context is taken only when well formed", "[broker][trace]") {
    CHECK(outbox::is_valid_traceparent(kTraceparent));
    CHECK_FALSE(outbox::is_valid_traceparent(
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01")); // trace id zero
    CHECK_FALSE(outbox::is_valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")); // parent id zero
    CHECK_FALSE(outbox::is_valid_traceparent(
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")); // upper case
    CHECK_FALSE(outbox::is_valid_traceparent(
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));             // version ff
    CHECK_FALSE(outbox::is_valid_traceparent(std::string(kTraceparent) + "-x")); // 00 is exact
    CHECK(outbox::is_valid_traceparent(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"));
    CHECK_FALSE(outbox::is_valid_traceparent("00-4bf92f35"));

    CHECK_FALSE(outbox::trace_context_of("null"));
    CHECK_FALSE(outbox::trace_context_of(R"({"a": "traceparent"})"));
    CHECK_FALSE(outbox::trace_context_of(R"({"traceparent": 5})"));
    CHECK_FALSE(outbox::trace_context_of(R"(["traceparent"])"));
    CHECK_FALSE(outbox::trace_context_of(R"({"traceparent": "00-bad"})"));
    auto context = outbox::trace_context_of(std::string(R"({"traceparent": ")") + kTraceparent +
                                            R"(", "tracestate": "a=1\nb=2"})");
    REQUIRE(context);
    CHECK(context->traceparent == kTraceparent);
    CHECK_FALSE(context->tracestate); // a control character: dropped, the traceparent kept
    // Deeply nested metadata is no trace context and no crash.
    std::string deep =
        R"({"traceparent": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
    CHECK_FALSE(outbox::trace_context_of(deep));
}
