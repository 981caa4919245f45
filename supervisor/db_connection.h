// One asynchronous PostgreSQL connection driven by the supervisor's libuv loop.
//
// libpq runs in non-blocking mode: connecting goes through PQconnectPoll, queries through
// PQsendQueryParams (or PQsendPrepare and PQsendQueryPrepared)/PQflush/PQconsumeInput, all woken by
// a uv_poll_t on the connection's socket, so no call here ever blocks the loop. Queries run one at
// a time in submission order; a query submitted while the connection is down or busy waits in the
// queue.
//
// When the connection breaks, the running query and every queued one complete with an error
// (PgResult whose ok() is false, `lost` true): the caller still holds whatever state it needs to
// retry, and decides whether to (the engine keeps results in memory and writes them again after
// reconnecting). The connection then reconnects by itself with capped exponential backoff.
//
// Single-threaded: every method and every callback runs on the loop thread. Callbacks may submit
// new queries. Not copyable or movable: the handles' callbacks hold a pointer to it.
#pragma once

#include "common/pg.h"
#include "supervisor/uv_handle.h"

#include <uv.h>

#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace outbox {

struct QueryResult {
    PgResult result;
    bool lost = false; // the connection broke before the outcome was known
    bool ok() const { return !lost && result.ok(); }
    std::string error() const {
        return lost ? std::string("connection to the database lost") : result.error();
    }
};

class DbConnection {
  public:
    struct Callbacks {
        std::function<void()> on_connected;              // after (re)connect and setup
        std::function<void(const std::string&)> on_lost; // the reason, password-free
        std::function<void(const std::string& channel)> on_notify;
    };

    // `name` appears in logs and application_name; `listen_channel`, when non-empty, is LISTENed
    // on after every (re)connect, before on_connected runs.
    DbConnection(uv_loop_t* loop, std::string conninfo, std::string name,
                 std::string listen_channel, Callbacks callbacks);
    ~DbConnection();
    DbConnection(const DbConnection&) = delete;
    DbConnection& operator=(const DbConnection&) = delete;

    // Statements (SET ...) run in every new session before on_connected, after the connection's
    // own settings. Call before start().
    void set_session_settings(std::string sql) { session_settings_ = std::move(sql); }

    void start();
    // Stops reconnecting, fails the running and queued queries (their callbacks run now, with
    // `lost`), closes the socket, then calls on_closed. The object may be destroyed right after:
    // its libuv handles free themselves once libuv lets go of them (supervisor/uv_handle.h).
    void close(std::function<void()> on_closed);

    bool connected() const { return state_ == State::ready || state_ == State::busy; }

    using Callback = std::function<void(QueryResult&&)>;
    void query(std::string sql, std::vector<std::optional<std::string>> params, Callback done);
    // The same, as a named prepared statement of this connection: prepared on first use after
    // every (re)connect, then only bound and executed, which saves PostgreSQL parsing and
    // analysing the statement on every call (for the claim and result statements up to a fifth
    // of the database's time, docs/PERFORMANCE.md). `name` identifies `sql`: one text per name.
    // Named statements live in the server session, which is why the service needs a session (not a
    // transaction-pooled) connection; it needs one for LISTEN anyway.
    void query_prepared(const char* name, const char* sql,
                        std::vector<std::optional<std::string>> params, Callback done);

  private:
    enum class State { idle, connecting, setup, ready, busy, waiting_to_reconnect, closed };
    struct Pending {
        std::string sql;
        std::vector<std::optional<std::string>> params;
        Callback done;
        std::string statement;  // non-empty: run as this prepared statement
        bool preparing = false; // the Parse of `statement` is in flight, its execution next
    };

    void begin_connect();
    void continue_connect();
    void on_setup_done(QueryResult&& r);
    void watch_socket(int events);
    void stop_watching();
    void on_poll(int status, int events);
    void send_next();
    bool send_current();
    std::string server_name(const std::string& statement) const;
    void on_readable();
    void flush_output();
    void fail_connection(const std::string& why);
    void fail_all_queued();
    void schedule_reconnect();

    uv_loop_t* loop_;
    std::string conninfo_;
    std::string name_;
    std::string listen_channel_;
    std::string session_settings_;
    Callbacks callbacks_;

    PgConn conn_;
    State state_ = State::idle;
    Poll poll_; // the connection's socket, while there is one
    Timer reconnect_timer_;
    long reconnect_delay_ms_ = 0;
    std::string last_error_;
    bool was_connected_ = false;

    // Statements prepared in the current session (cleared on reconnect). A statement whose
    // execution failed with "cached plan must not change result type" (a table altered
    // underneath) is prepared afresh under a new generation of its name: the error would
    // otherwise repeat for as long as the session lives.
    std::unordered_map<std::string, unsigned> generation_;
    std::unordered_set<std::string> prepared_;

    std::deque<Pending> queue_;
    std::optional<Pending> current_;
    PgResult current_result_; // the result the current query will complete with
};

} // namespace outbox
