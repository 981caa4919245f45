// The bodies of the HTTP endpoints (SPEC 6): /health, /ready, /metrics and /api/metrics/enhanced.
// Pure functions of what the supervisor knows (EndpointView), so that they are tested without a
// server, a loop or a database. The server that carries them is supervisor/http_server.h.
#pragma once

#include "common/config.h"
#include "supervisor/http_server.h"
#include "supervisor/telemetry.h"

#include <functional>

namespace outbox {

// The service's lifecycle, one explicit state: starting (connecting, checking the schema,
// forking handler processes) -> serving -> draining (SIGTERM: no claims, running events finish)
// -> finishing (closing handles). Only ever moves forward.
enum class ServiceState { starting, serving, draining, finishing };
const char* to_string(ServiceState state);

struct EndpointView {
    const Config& config;
    const Telemetry& telemetry;
    ServiceState state;
    bool ready_reported; // READY=1 was sent: connected, with every handler process up
    size_t in_flight;    // events running in handler processes
};

// 200 when the database answers and the DLQ is at or below the alert threshold; 503 with the
// reasons otherwise.
HttpResponse health_response(const EndpointView& view);
// 200 once serving, 503 while starting or draining.
HttpResponse readiness_response(const EndpointView& view);
// Prometheus text format.
HttpResponse metrics_response(const EndpointView& view);
// The same as JSON, plus backlog age, a health grade and the completion mode.
HttpResponse enhanced_metrics_response(const EndpointView& view);

// A router serving the four endpoints from views that `view` takes at request time.
HttpRouter endpoint_router(std::function<EndpointView()> view);

} // namespace outbox
