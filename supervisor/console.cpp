#include "supervisor/console.h"

#include "common/json.h"
#include "common/pg.h"
#include "supervisor/console_assets.h"
#include "supervisor/console_query.h"
#include "supervisor/queries.h"

#include <cjson/cJSON.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <utility>

#ifndef OUTBOX_VERSION
#define OUTBOX_VERSION "unknown"
#endif

namespace outbox {

namespace {

using console::AuthMethod;

// Security headers of every console response (docs/console.md, "Security"): no script but the
// page's own file can run, no other site can frame the page, no type sniffing, no referrer.
void add_security_headers(HttpResponse& r) {
    r.headers.emplace_back("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'");
    r.headers.emplace_back("X-Frame-Options", "DENY");
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    r.headers.emplace_back("Referrer-Policy", "no-referrer");
}

HttpResponse json_response(int status, const cJSON* body) {
    HttpResponse r;
    r.status = status;
    r.content_type = "application/json";
    r.body = json_print(body);
    add_security_headers(r);
    r.headers.emplace_back("Cache-Control", "no-store");
    return r;
}

HttpResponse error_response(int status, const std::string& message) {
    Json body(cJSON_CreateObject());
    cJSON_AddStringToObject(body.get(), "error", message.c_str());
    return json_response(status, body.get());
}

int64_t wall_clock_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Row values into JSON: text, or null for SQL NULL.
void add_text(cJSON* object, const char* name, const PgResult& r, int row, int col) {
    if (r.is_null(row, col)) {
        cJSON_AddNullToObject(object, name);
    } else {
        cJSON_AddStringToObject(object, name, r.value(row, col).c_str());
    }
}

void add_number(cJSON* object, const char* name, const PgResult& r, int row, int col) {
    if (r.is_null(row, col)) {
        cJSON_AddNullToObject(object, name);
    } else {
        cJSON_AddNumberToObject(object, name, std::strtod(r.value(row, col).c_str(), nullptr));
    }
}

// jsonb and json text from PostgreSQL is valid JSON: passed on verbatim, so that numbers keep
// every digit and strings every character (a payload's "<script>" stays a JSON string).
void add_raw_json(cJSON* object, const char* name, const PgResult& r, int row, int col) {
    if (r.is_null(row, col)) {
        cJSON_AddNullToObject(object, name);
    } else {
        cJSON_AddItemToObject(object, name, cJSON_CreateRaw(r.value(row, col).c_str()));
    }
}

void add_raw_json(cJSON* object, const char* name, const std::string& json) {
    cJSON_AddItemToObject(object, name, cJSON_CreateRaw(json.empty() ? "[]" : json.c_str()));
}

// Columns 0..10 of kConsoleEventsSelect and kConsoleEventDetail.
cJSON* event_summary(const PgResult& r, int row) {
    cJSON* e = cJSON_CreateObject();
    add_text(e, "id", r, row, 0);
    add_text(e, "eventType", r, row, 1);
    add_text(e, "tenantId", r, row, 2);
    add_text(e, "status", r, row, 3);
    add_text(e, "createdAt", r, row, 4);
    add_number(e, "retryCount", r, row, 5);
    add_number(e, "maxRetries", r, row, 6);
    add_text(e, "nextRetryAt", r, row, 7);
    add_text(e, "orderingKey", r, row, 8);
    add_text(e, "eventKey", r, row, 9);
    add_text(e, "lastError", r, row, 10);
    return e;
}

// Columns 0..8 of kConsoleDlqSelect and kConsoleDlqDetail.
cJSON* dlq_entry(const PgResult& r, int row) {
    cJSON* e = cJSON_CreateObject();
    add_text(e, "id", r, row, 0);
    add_text(e, "originalId", r, row, 1);
    add_text(e, "eventType", r, row, 2);
    add_text(e, "tenantId", r, row, 3);
    add_text(e, "eventKey", r, row, 4);
    add_text(e, "failureReason", r, row, 5);
    add_number(e, "retryCount", r, row, 6);
    add_text(e, "failedAt", r, row, 7);
    add_text(e, "orderingKey", r, row, 8);
    return e;
}

cJSON* paused_list(const PgResult& r) {
    cJSON* list = cJSON_CreateArray();
    for (int row = 0; row < r.rows(); ++row) {
        cJSON* p = cJSON_CreateObject();
        add_text(p, "eventType", r, row, 0);
        add_text(p, "pausedAt", r, row, 1);
        add_text(p, "pausedBy", r, row, 2);
        cJSON_AddItemToArray(list, p);
    }
    return list;
}

// A page of a list: at most `limit` rows of the `limit + 1` asked for; `next` names the last row
// shown when another follows.
void add_page(cJSON* body, const char* name, const PgResult& r, int limit,
              cJSON* (*shape)(const PgResult&, int), int time_col, int id_col) {
    cJSON* list = cJSON_AddArrayToObject(body, name);
    int shown = std::min(r.rows(), limit);
    for (int row = 0; row < shown; ++row) {
        cJSON_AddItemToArray(list, shape(r, row));
    }
    if (r.rows() > limit && shown > 0) {
        std::string next =
            console::encode_cursor({r.value(shown - 1, time_col), r.value(shown - 1, id_col)});
        cJSON_AddStringToObject(body, "next", next.c_str());
    } else {
        cJSON_AddNullToObject(body, "next");
    }
}

// A request's query parameters as the list builders read them: an empty value counts as absent
// (the page's search form sends every field).
console::ParamLookup query_params(const HttpRequest& request) {
    return [&request](std::string_view name) -> std::optional<std::string> {
        auto v = request.query_param(name);
        return v && !v->empty() ? v : std::nullopt;
    };
}

cJSON* blocked_key(const PgResult& r, int row) {
    cJSON* k = cJSON_CreateObject();
    add_text(k, "orderingKey", r, row, 0);
    add_text(k, "headId", r, row, 1);
    add_text(k, "headStatus", r, row, 2);
    add_text(k, "reason", r, row, 3);
    add_text(k, "blockedSince", r, row, 4);
    add_number(k, "waiting", r, row, 5);
    return k;
}

// The grade of /api/metrics/enhanced (SPEC 6), for the overview.
const char* health_grade(const DatabaseCounts& c) {
    if (c.valid && c.failed == 0 && c.dlq < 10 && c.pending < 1000) {
        return "healthy";
    }
    if (c.valid && c.failed < 10 && c.dlq < 100 && c.pending < 5000) {
        return "degraded";
    }
    return "unhealthy";
}

console::RequestCredentials credentials_of(const HttpRequest& request) {
    console::RequestCredentials c;
    c.host = request.header("host");
    c.origin = request.header("origin");
    c.sec_fetch_site = request.header("sec-fetch-site");
    c.authorization = request.header("authorization");
    c.cookie = request.header("cookie");
    c.csrf = request.header("x-outbox-csrf");
    c.content_type = request.header("content-type");
    return c;
}

// The API's paths and the methods each takes (for 405 and Allow). A path ending in '/' takes one
// more segment: the id.
struct ApiPath {
    const char* path;
    const char* allow;
};
constexpr ApiPath kApiPaths[] = {
    {"/api/session", "GET, HEAD"}, {"/api/login", "POST"},
    {"/api/logout", "POST"},       {"/api/overview", "GET, HEAD"},
    {"/api/events", "GET, HEAD"},  {"/api/dlq", "GET, HEAD"},
    {"/api/dlq/retry", "POST"},    {"/api/dlq/skip", "POST"},
    {"/api/dlq/purge", "POST"},    {"/api/blocked-keys", "GET, HEAD"},
    {"/api/paused", "GET, HEAD"},  {"/api/pause", "POST"},
    {"/api/resume", "POST"},       {"/api/metrics/enhanced", "GET, HEAD"},
    {"/api/events/", "GET, HEAD"}, {"/api/dlq/", "GET, HEAD"},
};

} // namespace

struct Console::DlqRun {
    std::string action;
    Actor actor;
    ReplyPtr reply;
    std::optional<std::string> type, tenant, reason;
    std::string bound;                     // failedAt upper bound (the database's time)
    std::optional<console::Cursor> cursor; // after the last entry of the previous batch
    long done = 0;
    long unknown_total = 0, failed_total = 0;
    Json unknown{cJSON_CreateArray()};
    Json failed{cJSON_CreateArray()};
    std::string what; // for the log line
};

Console::Console(uv_loop_t* loop, const Config& config, const Telemetry& telemetry,
                 DbConnection& db, ConsoleHost host)
    : loop_(loop), config_(config), telemetry_(telemetry), db_(db), host_(std::move(host)) {}

void Console::add_routes(HttpRouter& router) {
    for (const char* method : {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
        router.handle(method, "/api/*", [this](const HttpRequest& request, HttpReply reply) {
            dispatch_api(request, std::make_shared<HttpReply>(std::move(reply)));
        });
    }
    router.handle("GET", "/*", [this](const HttpRequest& request, HttpReply reply) {
        serve_asset(request, std::move(reply));
    });
}

void Console::serve_asset(const HttpRequest& request, HttpReply reply) const {
    const ConsoleAsset* asset = find_console_asset(request.path);
    if (asset == nullptr) {
        reply.send(http_status_response(404));
        return;
    }
    HttpResponse r;
    r.content_type = std::string(asset->content_type);
    r.body = std::string(asset->body);
    add_security_headers(r);
    // The assets change with the binary: revalidated on every load, so that an upgrade shows.
    r.headers.emplace_back("Cache-Control", "no-cache");
    reply.send(std::move(r));
}

void Console::dispatch_api(const HttpRequest& request, ReplyPtr reply) {
    const std::string& path = request.path;
    std::string method = request.method == "HEAD" ? "GET" : request.method;

    const ApiPath* known = nullptr;
    std::string id; // for the paths that end in an id
    for (const ApiPath& p : kApiPaths) {
        std::string_view candidate = p.path;
        if (candidate.back() == '/') {
            if (path.size() > candidate.size() &&
                path.compare(0, candidate.size(), candidate) == 0 &&
                path.find('/', candidate.size()) == std::string::npos) {
                auto decoded = console::percent_decode(path.substr(candidate.size()));
                if (!decoded) {
                    reply->send(error_response(400, "the id in the path is not valid"));
                    return;
                }
                id = std::move(*decoded);
                known = &p;
                break;
            }
        } else if (path == candidate) {
            known = &p;
            break;
        }
    }
    if (known == nullptr) {
        reply->send(error_response(404, "no such endpoint: " + path));
        return;
    }
    std::string_view allow = known->allow;
    if (allow.find(method) == std::string_view::npos) {
        HttpResponse r = error_response(405, "use " + std::string(allow) + " for " + path);
        r.headers.emplace_back("Allow", std::string(allow));
        reply->send(std::move(r));
        return;
    }
    std::string_view p = known->path;
    if (p == "/api/session") {
        get_session(request, reply);
    } else if (p == "/api/login") {
        post_login(request, reply);
    } else if (p == "/api/logout") {
        post_logout(request, reply);
    } else if (p == "/api/overview") {
        get_overview(request, reply);
    } else if (p == "/api/events") {
        get_events(request, reply);
    } else if (p == "/api/events/") {
        get_event(id, reply);
    } else if (p == "/api/dlq") {
        get_dlq(request, reply);
    } else if (p == "/api/dlq/") {
        get_dlq_entry(id, reply);
    } else if (p == "/api/dlq/retry") {
        post_dlq_action(request, reply, "retry");
    } else if (p == "/api/dlq/skip") {
        post_dlq_action(request, reply, "skip");
    } else if (p == "/api/dlq/purge") {
        post_dlq_action(request, reply, "purge");
    } else if (p == "/api/blocked-keys") {
        get_blocked_keys(request, reply);
    } else if (p == "/api/paused") {
        get_paused(reply);
    } else if (p == "/api/pause") {
        post_pause(request, reply, true);
    } else if (p == "/api/resume") {
        post_pause(request, reply, false);
    } else {
        // /api/metrics/enhanced is the endpoints' (added before the console); a POST lands here.
        reply->send(error_response(404, "no such endpoint: " + path));
    }
}

// ---- session --------------------------------------------------------------------------------

void Console::get_session(const HttpRequest& request, ReplyPtr reply) {
    console::Identity who =
        console::identify(credentials_of(request), config_.admin_token, sessions_, uv_now(loop_));
    Json body(cJSON_CreateObject());
    cJSON_AddBoolToObject(body.get(), "readOnly", config_.admin_token.empty());
    cJSON_AddBoolToObject(body.get(), "authenticated", who.method != AuthMethod::none);
    if (who.session != nullptr) {
        cJSON_AddStringToObject(body.get(), "csrfToken", who.session->csrf.c_str());
    } else {
        cJSON_AddNullToObject(body.get(), "csrfToken");
    }
    cJSON_AddStringToObject(body.get(), "instance", config_.instance_id.c_str());
    cJSON_AddStringToObject(body.get(), "service", config_.service_name.c_str());
    cJSON_AddStringToObject(body.get(), "version", OUTBOX_VERSION);
    reply->send(json_response(200, body.get()));
}

void Console::post_login(const HttpRequest& request, ReplyPtr reply) {
    console::RequestCredentials c = credentials_of(request);
    if (config_.admin_token.empty()) {
        reply->send(error_response(
            403, "the console is read-only: set OUTBOX_ADMIN_TOKEN to enable actions"));
        return;
    }
    if (console::is_cross_site(c.origin, c.host, c.sec_fetch_site)) {
        reply->send(error_response(403, "cross-site request refused"));
        return;
    }
    if (!console::is_json_content_type(c.content_type)) {
        reply->send(error_response(415, "the body must be application/json"));
        return;
    }
    uint64_t now = uv_now(loop_);
    if (uint64_t wait = login_throttle_.wait_ms(request.client_address, now)) {
        uint64_t seconds = (wait + 999) / 1000;
        HttpResponse r =
            error_response(429, "too many failed logins from this address: try again in " +
                                    std::to_string(seconds) + " s");
        r.headers.emplace_back("Retry-After", std::to_string(seconds));
        reply->send(std::move(r));
        return;
    }
    std::string error;
    auto token = console::parse_login_body(request.body, error);
    if (!token) {
        reply->send(error_response(400, error));
        return;
    }
    if (!console::constant_time_equal(*token, config_.admin_token)) {
        login_throttle_.failed(request.client_address, now);
        spdlog::warn("console: failed login from {}", request.client_address);
        reply->send(error_response(401, "wrong token"));
        return;
    }
    login_throttle_.succeeded(request.client_address);
    const console::Session& session = sessions_.create(now);
    spdlog::info("console: login from {} (a session of 12 hours)", request.client_address);
    Json body(cJSON_CreateObject());
    cJSON_AddStringToObject(body.get(), "csrfToken", session.csrf.c_str());
    HttpResponse r = json_response(200, body.get());
    r.headers.emplace_back("Set-Cookie", console::session_cookie(session));
    reply->send(std::move(r));
}

void Console::post_logout(const HttpRequest& request, ReplyPtr reply) {
    console::RequestCredentials c = credentials_of(request);
    if (console::is_cross_site(c.origin, c.host, c.sec_fetch_site)) {
        reply->send(error_response(403, "cross-site request refused"));
        return;
    }
    if (c.cookie != nullptr) {
        if (auto id = console::cookie_value(*c.cookie, console::kSessionCookie)) {
            if (sessions_.find(*id, uv_now(loop_)) != nullptr) {
                sessions_.remove(*id);
                spdlog::info("console: logout from {}", request.client_address);
            }
        }
    }
    Json body(cJSON_CreateObject());
    HttpResponse r = json_response(200, body.get());
    r.headers.emplace_back("Set-Cookie", console::expired_session_cookie());
    reply->send(std::move(r));
}

bool Console::authorize_action(const HttpRequest& request, const ReplyPtr& reply, Actor& actor) {
    console::Decision d = console::decide_action(credentials_of(request), config_.admin_token,
                                                 sessions_, uv_now(loop_));
    actor.address = request.client_address;
    actor.method = d.method;
    if (d.status != 200) {
        if (d.status == 401) {
            spdlog::warn("console: {} {} refused for {}: {}", request.method, request.path,
                         request.client_address, d.error);
        }
        reply->send(error_response(d.status, d.error));
        return false;
    }
    return true;
}

// ---- overview -------------------------------------------------------------------------------

void Console::get_overview(const HttpRequest&, ReplyPtr reply) {
    const DatabaseCounts& c = telemetry_.counts();
    Json body(cJSON_CreateObject());
    cJSON* b = body.get();
    cJSON_AddStringToObject(b, "instance", config_.instance_id.c_str());
    cJSON_AddStringToObject(b, "state", to_string(host_.state()));
    cJSON_AddBoolToObject(b, "databaseUp", telemetry_.database_up());
    cJSON_AddStringToObject(b, "health", health_grade(c));

    cJSON* counts = cJSON_AddObjectToObject(b, "counts");
    cJSON_AddNumberToObject(counts, "pending", static_cast<double>(c.pending));
    cJSON_AddNumberToObject(counts, "processing", static_cast<double>(c.processing));
    cJSON_AddNumberToObject(counts, "completed", static_cast<double>(c.completed));
    cJSON_AddNumberToObject(counts, "failed", static_cast<double>(c.failed));
    cJSON_AddNumberToObject(counts, "dlq", static_cast<double>(c.dlq));
    cJSON_AddNumberToObject(counts, "blockedKeys", static_cast<double>(c.blocked_keys));
    cJSON_AddNumberToObject(counts, "backlogAgeSeconds", c.oldest_due_age_s);
    if (c.valid) {
        // The read's loop time, turned into the wall-clock time it happened.
        int64_t age_ms = static_cast<int64_t>(uv_now(loop_) - c.read_at_ms);
        cJSON_AddStringToObject(counts, "readAt",
                                console::format_utc_ms(wall_clock_ms() - age_ms).c_str());
    } else {
        cJSON_AddNullToObject(counts, "readAt");
    }

    cJSON* series = cJSON_AddObjectToObject(b, "series");
    cJSON_AddNumberToObject(series, "intervalSeconds",
                            static_cast<double>(Telemetry::kHistoryIntervalMs) / 1000.0);
    cJSON* points = cJSON_AddArrayToObject(series, "points");
    for (const HistoryPoint& p : telemetry_.history()) {
        cJSON* point = cJSON_CreateObject();
        cJSON_AddStringToObject(point, "at", console::format_utc_ms(p.at_ms).c_str());
        cJSON_AddNumberToObject(point, "completedPerSecond", p.completed_per_s);
        cJSON_AddNumberToObject(point, "retriedPerSecond", p.retried_per_s);
        cJSON_AddNumberToObject(point, "deadLetteredPerSecond", p.dead_lettered_per_s);
        cJSON_AddNumberToObject(point, "latencyP50Seconds", p.latency_p50_s);
        cJSON_AddNumberToObject(point, "latencyP95Seconds", p.latency_p95_s);
        cJSON_AddNumberToObject(point, "pending", static_cast<double>(p.pending));
        cJSON_AddNumberToObject(point, "dlq", static_cast<double>(p.dlq));
        cJSON_AddItemToArray(points, point);
    }

    cJSON* workers = cJSON_AddArrayToObject(b, "workers");
    for (const ConsoleWorker& w : host_.workers()) {
        cJSON* worker = cJSON_CreateObject();
        cJSON_AddNumberToObject(worker, "slot", w.slot);
        cJSON_AddNumberToObject(worker, "pid", w.pid);
        cJSON_AddStringToObject(worker, "state", w.state.c_str());
        cJSON* events = cJSON_AddArrayToObject(worker, "events");
        for (const std::string& id : w.events) {
            cJSON_AddItemToArray(events, cJSON_CreateString(id.c_str()));
        }
        cJSON_AddNumberToObject(worker, "restarts", static_cast<double>(w.restarts));
        cJSON_AddItemToArray(workers, worker);
    }
    add_raw_json(b, "instances", c.instances_json);
    add_raw_json(b, "paused", c.paused_json);
    add_raw_json(b, "dlqGroups", c.dlq_groups_json);
    reply->send(json_response(200, b));
}

// ---- reads ----------------------------------------------------------------------------------

namespace {
// What a search by event key answers on a database without the optional index (migration 005).
constexpr const char* kEventKeyIndexAdvice =
    "search by event key needs an index on \"Outbox\" (\"eventLogId\"), which this database "
    "does not have; an operator may create it with CREATE INDEX CONCURRENTLY "
    "\"Outbox_worker_eventLogId_idx\" ON \"Outbox\" (\"eventLogId\"), at a cost to delivery "
    "throughput (docs/console.md)";
} // namespace

void Console::read(std::string sql, std::vector<std::optional<std::string>> params, ReplyPtr reply,
                   std::function<void(const PgResult&)> on_ok) {
    if (!db_.connected()) {
        reply->send(error_response(503, "the database is unreachable"));
        return;
    }
    db_.query(std::move(sql), std::move(params),
              [reply, on_ok = std::move(on_ok)](QueryResult&& r) {
                  if (r.ok()) {
                      on_ok(r.result);
                      return;
                  }
                  if (r.lost) {
                      reply->send(error_response(503, "the database is unreachable"));
                      return;
                  }
                  std::string state = r.result.sqlstate();
                  if (state == "57014") {
                      reply->send(error_response(503, "the query took too long"));
                      return;
                  }
                  if (state.rfind("22", 0) == 0) {
                      // Data exceptions: a time PostgreSQL cannot take (February 30th), say.
                      reply->send(error_response(400, "a parameter is not valid: " + r.error()));
                      return;
                  }
                  spdlog::error("console query failed: {}", r.error());
                  reply->send(error_response(503, "the database could not answer"));
              });
}

void Console::read_page(console::ListRequest list, ReplyPtr reply, const char* name,
                        cJSON* (*shape)(const PgResult&, int), int time_col, int id_col) {
    if (!list.query) {
        reply->send(error_response(400, list.error));
        return;
    }
    int limit = list.limit;
    read(std::move(list.query->sql), std::move(list.query->params), reply,
         [reply, limit, name, shape, time_col, id_col](const PgResult& r) {
             Json body(cJSON_CreateObject());
             add_page(body.get(), name, r, limit, shape, time_col, id_col);
             reply->send(json_response(200, body.get()));
         });
}

void Console::get_events(const HttpRequest& request, ReplyPtr reply) {
    auto search = [this, reply, list = console::events_list_request(query_params(request))] {
        read_page(list, reply, "events", event_summary, 4, 0);
    };
    if (!request.query_param("eventKey").value_or("").empty()) {
        // The Outbox rows of an event key need an index on "eventLogId" that migration 005 leaves
        // to the operator (it costs delivery throughput); without it the search would read the
        // whole table, so it is refused with the advice instead.
        read(sql::kConsoleEventLogIndexExists, {}, reply,
             [reply, search = std::move(search)](const PgResult& r) {
                 if (r.rows() == 1 && r.view(0, 0) == "t") {
                     search();
                     return;
                 }
                 reply->send(error_response(400, kEventKeyIndexAdvice));
             });
        return;
    }
    search();
}

void Console::get_event(const std::string& id, ReplyPtr reply) {
    read(sql::kConsoleEventDetail, {id}, reply, [this, reply, id](const PgResult& r) {
        if (r.rows() == 0) {
            reply->send(error_response(404, "no event with id \"" + id + "\""));
            return;
        }
        Json body(event_summary(r, 0));
        cJSON* e = body.get();
        add_raw_json(e, "payload", r, 0, 11);
        add_raw_json(e, "metadata", r, 0, 12);
        add_text(e, "correlationId", r, 0, 13);
        add_text(e, "eventLogId", r, 0, 14);
        add_text(e, "processedAt", r, 0, 15);
        add_text(e, "updatedAt", r, 0, 16);
        // The lease of a claim in progress; the owner column outlives it on finished rows.
        if (r.view(0, 3) != "PROCESSING") {
            cJSON_AddNullToObject(e, "lease");
        } else {
            cJSON* lease = cJSON_AddObjectToObject(e, "lease");
            add_text(lease, "owner", r, 0, 17);
            add_text(lease, "expiresAt", r, 0, 18);
        }
        add_number(e, "orderingSeq", r, 0, 19);
        add_raw_json(e, "subscribersDone", r, 0, 20);
        cJSON* subscribers = cJSON_AddArrayToObject(e, "subscribers");
        for (const std::string& name : host_.subscribers_for(r.value(0, 1))) {
            cJSON_AddItemToArray(subscribers, cJSON_CreateString(name.c_str()));
        }
        reply->send(json_response(200, e));
    });
}

void Console::get_dlq(const HttpRequest& request, ReplyPtr reply) {
    read_page(console::dlq_list_request(query_params(request)), std::move(reply), "entries",
              dlq_entry, 7, 0);
}

void Console::get_dlq_entry(const std::string& id, ReplyPtr reply) {
    read(sql::kConsoleDlqDetail, {id}, reply, [reply, id](const PgResult& r) {
        if (r.rows() == 0) {
            reply->send(error_response(404, "no dead-letter entry with id \"" + id + "\""));
            return;
        }
        Json body(dlq_entry(r, 0));
        add_raw_json(body.get(), "payload", r, 0, 9);
        add_raw_json(body.get(), "metadata", r, 0, 10);
        reply->send(json_response(200, body.get()));
    });
}

void Console::get_blocked_keys(const HttpRequest& request, ReplyPtr reply) {
    read_page(console::blocked_keys_request(query_params(request)), std::move(reply), "keys",
              blocked_key, 4, 0);
}

void Console::get_paused(ReplyPtr reply) {
    read(sql::kConsolePaused, {}, reply, [reply](const PgResult& r) {
        Json body(cJSON_CreateObject());
        cJSON_AddItemToObject(body.get(), "paused", paused_list(r));
        reply->send(json_response(200, body.get()));
    });
}

// ---- actions --------------------------------------------------------------------------------

void Console::post_pause(const HttpRequest& request, ReplyPtr reply, bool pause) {
    Actor actor;
    if (!authorize_action(request, reply, actor)) {
        return;
    }
    std::string error;
    auto type = console::parse_event_type_body(request.body, error);
    if (!type) {
        reply->send(error_response(400, error));
        return;
    }
    std::vector<std::optional<std::string>> params = {*type};
    if (pause) {
        params.emplace_back(actor.address);
    }
    read(pause ? sql::kConsolePause : sql::kConsoleResume, std::move(params), reply,
         [this, reply, actor, type = *type, pause](const PgResult& r) {
             long changed = pause ? std::strtol(PQcmdTuples(r.get()), nullptr, 10)
                                  : std::strtol(r.value(0, 0).c_str(), nullptr, 10);
             spdlog::info("console: {} ({}) {} event type \"{}\": {} row{}", actor.address,
                          console::to_string(actor.method), pause ? "paused" : "resumed", type,
                          changed, changed == 1 ? "" : "s");
             read(sql::kConsolePaused, {}, reply, [reply](const PgResult& list) {
                 Json body(cJSON_CreateObject());
                 cJSON_AddItemToObject(body.get(), "paused", paused_list(list));
                 reply->send(json_response(200, body.get()));
             });
         });
}

void Console::post_dlq_action(const HttpRequest& request, ReplyPtr reply,
                              const std::string& action) {
    Actor actor;
    if (!authorize_action(request, reply, actor)) {
        return;
    }
    console::DlqActionBody body = console::parse_dlq_action_body(request.body);
    if (!body.error.empty()) {
        reply->send(error_response(400, body.error));
        return;
    }
    auto run = std::make_shared<DlqRun>();
    run->action = action;
    run->actor = actor;
    run->reply = reply;
    if (body.by_ids) {
        run->what =
            std::to_string(body.ids.size()) + " given id" + (body.ids.size() == 1 ? "" : "s");
        if (body.ids.empty()) {
            finish_dlq_action(*run);
            return;
        }
        read(sql::kConsoleDlqApply, {action, pg_text_array(body.ids)}, reply,
             [this, run](const PgResult& r) {
                 for (int row = 0; row < r.rows(); ++row) {
                     std::string outcome = r.value(row, 1);
                     if (outcome == "done") {
                         ++run->done;
                     } else if (outcome == "unknown") {
                         ++run->unknown_total;
                         cJSON_AddItemToArray(run->unknown.get(),
                                              cJSON_CreateString(r.value(row, 0).c_str()));
                     } else {
                         ++run->failed_total;
                         cJSON* f = cJSON_CreateObject();
                         add_text(f, "id", r, row, 0);
                         add_text(f, "error", r, row, 2);
                         cJSON_AddItemToArray(run->failed.get(), f);
                     }
                 }
                 finish_dlq_action(*run);
             });
        return;
    }
    run->type = body.type;
    run->tenant = body.tenant;
    run->reason = body.reason;
    run->what = "every entry";
    for (auto [name, value] : {std::pair{"type", &run->type}, std::pair{"tenant", &run->tenant},
                               std::pair{"reason", &run->reason}}) {
        if (*value) {
            run->what += std::string(run->what == "every entry" ? " with " : ", ") + name + " \"" +
                         **value + "\"";
        }
    }
    // The entries that exist now, not those that fail while the action runs (a retried event
    // that fails again at once must not be retried again by the same request).
    read(sql::kConsoleNow, {}, reply, [this, run](const PgResult& r) {
        run->bound = r.value(0, 0);
        run_dlq_batch(run);
    });
}

void Console::run_dlq_batch(std::shared_ptr<DlqRun> run) {
    constexpr int kBatch = 500; // kConsoleDlqApplyBatch's LIMIT
    std::vector<std::optional<std::string>> params = {
        run->action,
        run->bound,
        run->type,
        run->tenant,
        run->reason,
        run->cursor ? std::optional<std::string>(run->cursor->time) : std::nullopt,
        run->cursor ? std::optional<std::string>(run->cursor->id) : std::nullopt};
    read(sql::kConsoleDlqApplyBatch, std::move(params), run->reply, [this, run](const PgResult& r) {
        constexpr size_t kListed = 1000; // ids listed in the answer; all are counted
        for (int row = 0; row < r.rows(); ++row) {
            std::string outcome = r.value(row, 1);
            if (outcome == "done") {
                ++run->done;
            } else if (outcome == "unknown") {
                // Taken by another request meanwhile: not ours, not an error.
                if (static_cast<size_t>(run->unknown_total++) < kListed) {
                    cJSON_AddItemToArray(run->unknown.get(),
                                         cJSON_CreateString(r.value(row, 0).c_str()));
                }
            } else if (static_cast<size_t>(run->failed_total++) < kListed) {
                cJSON* f = cJSON_CreateObject();
                add_text(f, "id", r, row, 0);
                add_text(f, "error", r, row, 2);
                cJSON_AddItemToArray(run->failed.get(), f);
            }
        }
        if (r.rows() < kBatch) {
            finish_dlq_action(*run);
            return;
        }
        run->cursor = console::Cursor{r.value(r.rows() - 1, 3), r.value(r.rows() - 1, 0)};
        run_dlq_batch(run);
    });
}

void Console::finish_dlq_action(const DlqRun& run) {
    spdlog::info("console: {} ({}) dlq {} of {}: {} row{} done, {} unknown, {} failed",
                 run.actor.address, console::to_string(run.actor.method), run.action, run.what,
                 run.done, run.done == 1 ? "" : "s", run.unknown_total, run.failed_total);
    Json body(cJSON_CreateObject());
    cJSON_AddNumberToObject(body.get(), "done", static_cast<double>(run.done));
    cJSON_AddItemToObject(body.get(), "unknown", cJSON_Duplicate(run.unknown.get(), true));
    cJSON_AddItemToObject(body.get(), "failed", cJSON_Duplicate(run.failed.get(), true));
    run.reply->send(json_response(200, body.get()));
}

} // namespace outbox
