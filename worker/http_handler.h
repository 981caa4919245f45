// The `http` handler kind (SPEC 4): delivers each event as a webhook with libcurl.
//
// The request is `method url` with the event JSON as the body, Content-Type application/json, and
// the headers Idempotency-Key (the Outbox id, stable across attempts, so the receiver can drop
// repeats of an at-least-once delivery), X-Outbox-Event-Type, X-Outbox-Attempt, traceparent and
// tracestate when the event's metadata carries a W3C trace context (SPEC 4), then the
// configured headers (already expanded from ${ENV_VAR} when the handlers file was loaded; a
// configured Content-Type replaces the default one). Redirects are not followed and TLS
// certificates and host names are always verified.
//
// Outcome: 2xx is success; 408, 429, 5xx, connection errors and timeouts are retryable, with a
// Retry-After header on such a response becoming Result::retry_after_ms; 3xx and other 4xx are
// permanent. The error text names the status and the URL without credentials, query or fragment,
// followed by the start of the response body.
//
// Process and threading rules: a handler made here holds one libcurl easy handle, shared by its
// copies, so that consecutive events reuse the connection. The handle, and curl_global_init(),
// are created on the first delivery, which happens in a handler process: the supervisor may build
// handlers (loading the handlers file) but never calls them, so no libcurl state exists before
// fork(). A handler is not thread-safe; a handler process calls it from its one thread.
#pragma once

#include <outbox/outbox.h>

#include <cstddef>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

// What the handlers file says about one http subscriber, already validated and expanded.
struct HttpHandlerOptions {
    std::string url;                                          // http:// or https://
    std::string method = "POST";                              // POST, PUT or PATCH
    std::vector<std::pair<std::string, std::string>> headers; // in file order
    long timeout_ms = 30000;                                  // the whole request
};

// How much of a failed response's body becomes part of the error text.
constexpr std::size_t kHttpErrorBodyBytes = 512;

// The longest Retry-After honoured; a longer one is cut to this, so that a confused server cannot
// park an event for weeks. The supervisor may bound it further.
constexpr long kHttpMaxRetryAfterMs = 24L * 3600 * 1000;

Handler make_http_handler(HttpHandlerOptions options);

// The outcome of a response with this status (success, retry or permanent), per SPEC 4.
Outcome classify_http_status(long status);

// Why `url` cannot be a webhook URL (not parseable, not http/https, no host), or nullopt.
std::optional<std::string> http_url_problem(const std::string& url);

// `url` as it may appear in logs and errors: user, password, query and fragment removed, since
// webhook URLs often carry tokens there.
std::string redact_url(const std::string& url);

// A Retry-After value (delta-seconds or an HTTP-date) in milliseconds from `now`; 0 when it is
// malformed or lies in the past, at most kHttpMaxRetryAfterMs.
long parse_retry_after_ms(std::string_view value, std::time_t now);

} // namespace outbox
