#include "supervisor/endpoints.h"

#include "common/json.h"

#include <cjson/cJSON.h>

namespace outbox {

const char* to_string(ServiceState state) {
    switch (state) {
    case ServiceState::starting:
        return "starting";
    case ServiceState::serving:
        return "serving";
    case ServiceState::draining:
        return "draining";
    case ServiceState::finishing:
        return "finishing";
    }
    return "starting";
}

namespace {

HttpResponse json_response(int status, const Json& body) {
    HttpResponse r;
    r.status = status;
    r.content_type = "application/json";
    r.body = json_print(body.get());
    return r;
}

} // namespace

HttpResponse health_response(const EndpointView& view) {
    const DatabaseCounts& c = view.telemetry.counts();
    std::vector<std::string> problems;
    if (!view.telemetry.database_up()) {
        problems.push_back("database unreachable");
    }
    if (c.valid && c.dlq > view.config.dlq_alert_threshold) {
        problems.push_back("dead-letter queue has " + std::to_string(c.dlq) +
                           " rows, above the threshold of " +
                           std::to_string(view.config.dlq_alert_threshold));
    }
    Json body(cJSON_CreateObject());
    cJSON_AddStringToObject(body.get(), "status", problems.empty() ? "healthy" : "unhealthy");
    cJSON_AddStringToObject(body.get(), "service", view.config.service_name.c_str());
    cJSON_AddStringToObject(body.get(), "instance", view.config.instance_id.c_str());
    cJSON_AddBoolToObject(body.get(), "database", view.telemetry.database_up());
    if (c.valid) {
        cJSON_AddNumberToObject(body.get(), "dlq", static_cast<double>(c.dlq));
    }
    cJSON_AddNumberToObject(body.get(), "dlqThreshold",
                            static_cast<double>(view.config.dlq_alert_threshold));
    cJSON* reasons = cJSON_AddArrayToObject(body.get(), "reasons");
    for (const auto& p : problems) {
        cJSON_AddItemToArray(reasons, cJSON_CreateString(p.c_str()));
    }
    return json_response(problems.empty() ? 200 : 503, body);
}

HttpResponse readiness_response(const EndpointView& view) {
    bool serving = view.ready_reported && view.state == ServiceState::serving;
    bool stopping = view.state == ServiceState::draining || view.state == ServiceState::finishing;
    HttpResponse r;
    r.status = serving ? 200 : 503;
    r.content_type = "application/json";
    r.body = serving    ? R"({"status":"ready"})"
             : stopping ? R"({"status":"draining"})"
                        : R"({"status":"starting"})";
    return r;
}

HttpResponse metrics_response(const EndpointView& view) {
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = view.telemetry.render_prometheus();
    return r;
}

HttpResponse enhanced_metrics_response(const EndpointView& view) {
    const DatabaseCounts& c = view.telemetry.counts();
    const char* grade = "unhealthy";
    if (c.valid && c.failed == 0 && c.dlq < 10 && c.pending < 1000) {
        grade = "healthy";
    } else if (c.valid && c.failed < 10 && c.dlq < 100 && c.pending < 5000) {
        grade = "degraded";
    }
    Json body(cJSON_CreateObject());
    cJSON_AddStringToObject(body.get(), "health", grade);
    cJSON* outbox = cJSON_AddObjectToObject(body.get(), "outbox");
    cJSON_AddNumberToObject(outbox, "pending", static_cast<double>(c.pending));
    cJSON_AddNumberToObject(outbox, "processing", static_cast<double>(c.processing));
    // Rows whose status is COMPLETED. With OUTBOX_ON_COMPLETE=delete a success deletes its row,
    // so this counts only rows completed before the mode was switched; completions themselves
    // are counted in metrics.outbox_events_completed_total.
    cJSON_AddNumberToObject(outbox, "completed", static_cast<double>(c.completed));
    cJSON_AddNumberToObject(outbox, "failed", static_cast<double>(c.failed));
    cJSON_AddNumberToObject(outbox, "dlq", static_cast<double>(c.dlq));
    cJSON_AddNumberToObject(outbox, "backlogAgeSeconds", c.oldest_due_age_s);
    cJSON_AddNumberToObject(outbox, "blockedKeys", static_cast<double>(c.blocked_keys));
    cJSON_AddStringToObject(outbox, "onComplete", to_string(view.config.on_complete));
    cJSON_AddNumberToObject(outbox, "completedByThisInstance",
                            static_cast<double>(view.telemetry.completed_total()));
    cJSON_AddBoolToObject(body.get(), "databaseUp", view.telemetry.database_up());
    cJSON_AddNumberToObject(body.get(), "inFlight", static_cast<double>(view.in_flight));
    cJSON_AddStringToObject(body.get(), "state", to_string(view.state));
    Json metrics = view.telemetry.render_json();
    if (metrics) {
        cJSON_AddItemToObject(body.get(), "metrics", metrics.release());
    }
    return json_response(200, body);
}

HttpRouter endpoint_router(std::function<EndpointView()> view) {
    HttpRouter router;
    router.get("/health", [view](const HttpRequest&) { return health_response(view()); });
    router.get("/ready", [view](const HttpRequest&) { return readiness_response(view()); });
    router.get("/metrics", [view](const HttpRequest&) { return metrics_response(view()); });
    router.get("/api/metrics/enhanced",
               [view](const HttpRequest&) { return enhanced_metrics_response(view()); });
    return router;
}

} // namespace outbox
