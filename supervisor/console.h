// The operator's console (SPEC 6, docs/console.md): the page at GET / with its assets, and the
// JSON API under /api/ that the page and scripts use.
//
// What each endpoint reads:
// - the overview comes from memory only (the janitor's periodic reads and this instance's
//   telemetry and handler processes), so that a page left open costs the database nothing;
// - lists and details are read per request, on the console's own connection (`db`, application
//   name "outbox-worker console"), asynchronously: the HTTP reply is sent from the query's
//   callback, and the loop never waits. Without the database they answer 503.
// - actions (dead letters, pause and resume) write on that connection too, after the checks of
//   supervisor/console_auth.h, and are logged at info level with who did what to how many rows.
//
// Single-threaded, on the supervisor's loop. The routes keep a pointer to the console: it must
// outlive the HTTP server, and its DbConnection must outlive it (queries in flight when the
// connection closes complete with `lost` and answer 503 into a server that may be gone, which
// HttpReply makes harmless).
#pragma once

#include "common/config.h"
#include "supervisor/console_auth.h"
#include "supervisor/console_query.h"
#include "supervisor/db_connection.h"
#include "supervisor/endpoints.h"
#include "supervisor/http_server.h"
#include "supervisor/telemetry.h"

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

struct cJSON;

namespace outbox {

// A handler process as the overview shows it.
struct ConsoleWorker {
    int slot = 0;
    int pid = 0;
    std::string state;               // idle, busy, starting or stopping
    std::vector<std::string> events; // Outbox ids of the events it holds
    long restarts = 0;
};

// What the console asks the service, at request time.
struct ConsoleHost {
    std::function<ServiceState()> state;
    std::function<std::vector<ConsoleWorker>()> workers;
    // Names of this instance's subscribers whose patterns match the type.
    std::function<std::vector<std::string>(const std::string& event_type)> subscribers_for;
};

class Console {
  public:
    // `config`, `telemetry` and `db` must outlive the console.
    Console(uv_loop_t* loop, const Config& config, const Telemetry& telemetry, DbConnection& db,
            ConsoleHost host);
    Console(const Console&) = delete;
    Console& operator=(const Console&) = delete;

    // Adds the /api/ endpoints of docs/console.md (for every method, so that an unknown /api/
    // path or a wrong method gets a JSON error) and, last, GET of every other path for the page
    // and its assets. Add it after the routes it must not shadow (/health, /metrics,
    // /api/metrics/enhanced).
    void add_routes(HttpRouter& router);

  private:
    using ReplyPtr = std::shared_ptr<HttpReply>;

    void dispatch_api(const HttpRequest& request, ReplyPtr reply);
    void serve_asset(const HttpRequest& request, HttpReply reply) const;

    void get_session(const HttpRequest& request, ReplyPtr reply);
    void post_login(const HttpRequest& request, ReplyPtr reply);
    void post_logout(const HttpRequest& request, ReplyPtr reply);
    void get_overview(const HttpRequest& request, ReplyPtr reply);
    void get_events(const HttpRequest& request, ReplyPtr reply);
    void get_event(const std::string& id, ReplyPtr reply);
    void get_dlq(const HttpRequest& request, ReplyPtr reply);
    void get_dlq_entry(const std::string& id, ReplyPtr reply);
    void post_dlq_action(const HttpRequest& request, ReplyPtr reply, const std::string& action);
    void get_blocked_keys(const HttpRequest& request, ReplyPtr reply);
    void get_paused(ReplyPtr reply);
    void post_pause(const HttpRequest& request, ReplyPtr reply, bool pause);

    // Runs a read on the console's connection, or answers 503 when the database is down. `on_ok`
    // gets the successful result; errors are answered here.
    // A list endpoint: 400 for the builder's error, else one page of `name` with its cursor.
    void read_page(console::ListRequest list, ReplyPtr reply, const char* name,
                   cJSON* (*shape)(const PgResult&, int), int time_col, int id_col);
    void read(std::string sql, std::vector<std::optional<std::string>> params, ReplyPtr reply,
              std::function<void(const PgResult&)> on_ok);

    // The checks of an action; answers the refusal itself and returns false.
    struct Actor {
        std::string address;
        console::AuthMethod method = console::AuthMethod::none;
    };
    bool authorize_action(const HttpRequest& request, const ReplyPtr& reply, Actor& actor);

    struct DlqRun; // a filter action going through its batches
    void run_dlq_batch(std::shared_ptr<DlqRun> run);
    void finish_dlq_action(const DlqRun& run);

    uv_loop_t* loop_;
    const Config& config_;
    const Telemetry& telemetry_;
    DbConnection& db_;
    ConsoleHost host_;
    console::SessionStore sessions_;
    console::LoginThrottle login_throttle_;
};

} // namespace outbox
