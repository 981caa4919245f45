// The handlers file (OUTBOX_HANDLERS, SPEC 4): subscribers configured without recompiling.
//
// The file is JSON, either a list of subscribers or an object holding that list:
//
//     [ {...}, {...} ]                    or                    { "subscribers": [ {...}, {...} ] }
//
// Each subscriber is an object with:
//   "eventTypes"  required; a non-empty array of non-empty strings, exact event types or globs
//                 with '*' ("shopify.*", "*").
//   "name"        a non-empty string of valid UTF-8, at most 1024 bytes, unique in the file. It
//                 is the subscriber's identity: in logs and metrics, and in an event's record of
//                 the subscribers that succeeded for it, which a retry skips (SPEC 2). Required
//                 when the subscriber can match an event type that another subscriber can match
//                 too (find_unnamed_overlap); otherwise it defaults to
//                 "<file name>#<index> (<kind>)", for example "handlers.json#2 (exec)".
//   "timeoutMs"   optional; an integer from 1 to 3600000. It wins over the kind's own timeoutMs,
//                 which wins over OUTBOX_HANDLER_TIMEOUT_MS.
// and exactly one kind:
//   "exec": { "command": ["/usr/local/bin/sync", "--fast"],   required; argv, no shell
//             "env": {"NAME": "value"},                        optional; added to the environment
//             "timeoutMs": 5000 }                              optional
//   "http": { "url": "https://hooks.example.com/outbox",       required; http:// or https://
//             "method": "POST",                                optional; POST, PUT or PATCH
//             "headers": {"Authorization": "Bearer ${TOKEN}"}, optional; see below
//             "timeoutMs": 5000 }                              optional
//   "log":  true  or  {}  or  { "level": "info" }              level: debug, info (default), warn,
//                                                              error
// or one of the message brokers (worker/sink.h), each with the common optional fields
// "body" ("event", default; "payload"; "cloudevents"), "source" (CloudEvents' source, default
// SERVICE_NAME) and "timeoutMs":
//   "kafka": { "brokers": "k1:9092,k2:9092",                   required; bootstrap servers
//              "topic": "orders.${eventType}",                 required
//              "properties": {"compression.type": "lz4"} }     optional; librdkafka settings,
//                                                              checked by librdkafka on load
//   "nats":  { "url": "nats://127.0.0.1:4222",                 required; nats:// or tls://
//              "subject": "orders.${eventType}" }              required; no wildcards
//   "amqp":  { "url": "amqp://user:${PASSWORD}@host:5672/vhost", required; amqp:// (no TLS)
//              "exchange": "orders",                           required; "" is the default one
//              "routingKey": "${eventType}" }                  optional; default ""
//   "redis": { "url": "redis://:${PASSWORD}@host:6379/0",      required
//              "stream": "orders",                             required
//              "maxLen": 100000 }                              optional; XADD MAXLEN ~
// The destination fields (topic, subject, routingKey, stream) may use ${eventType}, ${tenantId}
// and ${orderingKey}, expanded per event; the URL, brokers and property values may use
// ${ENV_VAR} like http header values, so that credentials stay in the environment. A broker
// subscriber's publication timeout is its resolved timeout less a tenth (at most a second), so
// that the sink reports it before the supervisor's handler timeout would kill the process.
//
// Header values (and broker URLs) may refer to environment variables as ${NAME}; they are expanded
// once, when the file is loaded, and a variable that is not set is an error naming it. Exec "env"
// values are taken literally. Unknown and repeated keys are errors at every level, so that a
// misspelt option cannot be silently ignored. Headers the worker sets itself (Idempotency-Key,
// X-Outbox-Event-Type, X-Outbox-Attempt, Content-Length, Transfer-Encoding, traceparent,
// tracestate) and the env variables it sets (OUTBOX_EVENT_ID, OUTBOX_EVENT_TYPE, OUTBOX_ATTEMPT,
// TRACEPARENT, TRACESTATE) cannot be configured.
//
// Errors are one line: the file, the 0-based subscriber index with its name when it has one, the
// JSON field and the problem, for example
//     /etc/outbox/handlers.json: subscriber 2 (billing): "exec.command": must be a non-empty array
//     of strings
// and for two subscribers that can match one event type without both having a name
//     /etc/outbox/handlers.json: subscriber 0 and subscriber 2 (billing) can both match event type
//     "order.created" (by "order.*" and "*.created"), so each needs a "name" (subscriber 0 has
//     none): the name is a subscriber's identity in an event's record of the subscribers that
//     succeeded for it
//
// Loading builds the handlers but starts nothing: no process, no connection, no libcurl state.
// The supervisor may therefore load the file (at start, on SIGHUP, for check-config) and pass the
// subscribers to handler processes through fork().
#pragma once

#include "common/config.h"
#include "worker/subscriber.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace outbox {

// The longest timeoutMs a handlers file may set: one hour.
constexpr long kMaxHandlerTimeoutMs = 3600000;

// The largest handlers file read; anything bigger is surely not a handlers file.
constexpr long kMaxHandlersFileBytes = 4L * 1024 * 1024;

struct HandlersFileResult {
    std::optional<std::vector<Subscriber>> subscribers; // set on success, in file order
    std::string error;                                  // one line on failure
};

// Reads and validates the file at `path`. `default_timeout_ms` (OUTBOX_HANDLER_TIMEOUT_MS) is the
// timeout of subscribers that set none. Errors start with `path`; default names use its basename.
[[nodiscard]] HandlersFileResult load_handlers_file(const std::string& path,
                                                    long default_timeout_ms);

// The same on a JSON text, for tests and fuzzing; `origin_name` stands for the path in errors and
// names. `env` resolves ${NAME} references in http header values.
[[nodiscard]] HandlersFileResult parse_handlers_json(std::string_view text,
                                                     const std::string& origin_name,
                                                     long default_timeout_ms,
                                                     const EnvLookup& env = process_environment());

} // namespace outbox
