#include "supervisor/db_connection.h"

#include <spdlog/spdlog.h>

#include <cstring>
#include <random>

namespace outbox {

namespace {
constexpr long kReconnectInitialMs = 100;
constexpr long kReconnectMaxMs = 10000;

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
        s.pop_back();
    }
    return s;
}
} // namespace

DbConnection::DbConnection(uv_loop_t* loop, std::string conninfo, std::string name,
                           std::string listen_channel, Callbacks callbacks)
    : loop_(loop), conninfo_(std::move(conninfo)), name_(std::move(name)),
      listen_channel_(std::move(listen_channel)), callbacks_(std::move(callbacks)) {
    reconnect_timer_ = Timer(loop_, [this] { begin_connect(); });
}

// Everything frees itself: the handles close (the poll handle before the socket: it is declared
// after conn_), the connection and the current result are RAII. Callers close() first all the
// same, so that queries still queued complete with `lost` while their owners are alive.
DbConnection::~DbConnection() = default;

void DbConnection::start() {
    begin_connect();
}

void DbConnection::begin_connect() {
    if (state_ == State::closed) {
        return;
    }
    if (conn_ != nullptr) {
        stop_watching();
        conn_.reset();
    }
    // The connection string goes in as dbname with expand_dbname, so URIs and key=value strings
    // both work and application_name can still be added as a separate keyword.
    std::string app = "outbox-worker " + name_;
    const char* keywords[] = {"dbname", "fallback_application_name", "connect_timeout", nullptr};
    const char* values[] = {conninfo_.c_str(), app.c_str(), "10", nullptr};
    conn_.reset(PQconnectStartParams(keywords, values, 1));
    if (conn_ == nullptr || PQstatus(conn_.get()) == CONNECTION_BAD) {
        fail_connection(conn_ ? trim(PQerrorMessage(conn_.get())) : "out of memory");
        return;
    }
    state_ = State::connecting;
    continue_connect();
}

void DbConnection::continue_connect() {
    PostgresPollingStatusType st = PQconnectPoll(conn_.get());
    switch (st) {
    case PGRES_POLLING_READING:
        watch_socket(UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        watch_socket(UV_WRITABLE);
        return;
    case PGRES_POLLING_FAILED:
        fail_connection(trim(PQerrorMessage(conn_.get())));
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        watch_socket(UV_READABLE);
        return;
    }
    install_notice_logger(conn_.get());
    if (PQsetnonblocking(conn_.get(), 1) != 0) {
        fail_connection("cannot make the connection non-blocking");
        return;
    }
    state_ = State::setup;
    watch_socket(UV_READABLE);
    // Setup runs ahead of any queued query: it goes straight to current_.
    // Prepared statements (query_prepared) are planned for their parameters on every call, as
    // unnamed ones are: a generic plan chosen after five calls could not adapt to a backlog that
    // changes shape.
    std::string setup = "SET statement_timeout = 0; SET plan_cache_mode = force_custom_plan";
    if (!session_settings_.empty()) {
        setup += "; " + session_settings_;
    }
    prepared_.clear();
    if (!listen_channel_.empty()) {
        setup += "; LISTEN " + listen_channel_;
    }
    current_ =
        Pending{setup, {}, [this](QueryResult&& r) { on_setup_done(std::move(r)); }, {}, false};
    if (PQsendQuery(conn_.get(), current_->sql.c_str()) != 1) {
        current_.reset();
        fail_connection(trim(PQerrorMessage(conn_.get())));
        return;
    }
    flush_output();
}

void DbConnection::on_setup_done(QueryResult&& r) {
    if (!r.ok()) {
        fail_connection("connection setup failed: " + r.error());
        return;
    }
    if (was_connected_ || !last_error_.empty()) {
        spdlog::info("database connection {} re-established", name_);
    } else {
        spdlog::debug("database connection {} established", name_);
    }
    was_connected_ = true;
    last_error_.clear();
    reconnect_delay_ms_ = 0;
    state_ = State::ready;
    if (callbacks_.on_connected) {
        callbacks_.on_connected();
    }
    send_next();
}

void DbConnection::watch_socket(int events) {
    int fd = PQsocket(conn_.get());
    if (fd < 0) {
        fail_connection("connection has no socket");
        return;
    }
    // libpq may switch sockets while connecting (several hosts, SSL then plain): a poll handle is
    // bound to one descriptor, so replace it when the descriptor changes.
    if (poll_.is_open() && poll_.fd() != fd) {
        stop_watching();
    }
    if (!poll_.is_open() &&
        poll_.open(loop_, fd, [this](int status, int ev) { on_poll(status, ev); }) != 0) {
        fail_connection("cannot watch the database socket");
        return;
    }
    poll_.start(events);
}

void DbConnection::stop_watching() {
    // Before libpq closes the socket: libuv must stop watching a descriptor before it is closed.
    poll_.close();
}

void DbConnection::on_poll(int status, int events) {
    if (state_ == State::connecting) {
        continue_connect();
        return;
    }
    if (status < 0) {
        // libuv reports a socket with a pending error (POLLERR, for instance a reset after the
        // server ended the session) as UV_EBADF. What the server sent before it went away (its
        // FATAL message, "terminating connection due to administrator command") may still be
        // unread: let libpq read it first, so that the running query fails with the server's
        // error and the reason logged is the server's, not the descriptor's.
        if (state_ == State::ready || state_ == State::busy) {
            on_readable();
            if (conn_ == nullptr || (state_ != State::ready && state_ != State::busy)) {
                return;
            }
        }
        std::string why = trim(PQerrorMessage(conn_.get()));
        fail_connection(why.empty() ? std::string("socket error: ") + uv_strerror(status) : why);
        return;
    }
    if (events & UV_WRITABLE) {
        flush_output();
        if (conn_ == nullptr) {
            return;
        }
    }
    if (events & UV_READABLE) {
        on_readable();
    }
}

void DbConnection::flush_output() {
    int r = PQflush(conn_.get());
    if (r < 0) {
        fail_connection(trim(PQerrorMessage(conn_.get())));
        return;
    }
    // 1: more to send; wait for the socket to drain, still reading (the server may be sending).
    watch_socket(r == 1 ? (UV_READABLE | UV_WRITABLE) : UV_READABLE);
}

void DbConnection::on_readable() {
    if (PQconsumeInput(conn_.get()) != 1) {
        fail_connection(trim(PQerrorMessage(conn_.get())));
        return;
    }
    while (PGnotify* n = PQnotifies(conn_.get())) {
        std::string channel = n->relname;
        PQfreemem(n);
        if (callbacks_.on_notify) {
            callbacks_.on_notify(channel);
        }
        if (conn_ == nullptr) {
            return;
        }
    }
    while (current_ && !PQisBusy(conn_.get())) {
        PgResult res(PQgetResult(conn_.get()));
        if (res.get() != nullptr) {
            // A multi-statement query yields several results; the caller gets the last one, or
            // the first error.
            if (current_result_.get() == nullptr || current_result_.ok()) {
                current_result_ = std::move(res);
            }
            continue;
        }
        if (current_->preparing) {
            // The Parse of a prepared statement finished: run it now, or report why it failed.
            current_->preparing = false;
            const bool ok = current_result_.get() != nullptr &&
                            PQresultStatus(current_result_.get()) == PGRES_COMMAND_OK;
            if (ok) {
                current_result_ = PgResult();
                prepared_.insert(current_->statement);
                if (send_current()) {
                    flush_output();
                }
                return;
            }
        } else if (!current_->statement.empty() && current_result_.get() != nullptr) {
            const char* code = PQresultErrorField(current_result_.get(), PG_DIAG_SQLSTATE);
            if (code != nullptr && std::strcmp(code, "26000") == 0) {
                // The statement is gone (a DISCARD by a pooler in front): prepare it again.
                prepared_.erase(current_->statement);
            } else if (code != nullptr && std::strcmp(code, "0A000") == 0) {
                // "cached plan must not change result type": a table changed underneath. The
                // name is stuck with the old plan for this session; prepare under a new one.
                prepared_.erase(current_->statement);
                ++generation_[current_->statement];
            }
        }
        Pending done = std::move(*current_);
        current_.reset();
        QueryResult qr{std::move(current_result_), false};
        if (state_ == State::busy) {
            state_ = State::ready;
        }
        done.done(std::move(qr));
        if (conn_ == nullptr || state_ == State::closed) {
            return;
        }
        if (PQstatus(conn_.get()) == CONNECTION_BAD) {
            // The server ended the session with that result (a FATAL error): report it as the
            // reason rather than waiting for the closed socket to be noticed.
            fail_connection(trim(PQerrorMessage(conn_.get())));
            return;
        }
        if (state_ == State::ready) {
            send_next();
        }
        return;
    }
    if (PQstatus(conn_.get()) == CONNECTION_BAD) {
        fail_connection(trim(PQerrorMessage(conn_.get())));
    }
}

void DbConnection::query(std::string sql, std::vector<std::optional<std::string>> params,
                         Callback done) {
    if (state_ == State::closed) {
        QueryResult r;
        r.lost = true;
        done(std::move(r));
        return;
    }
    queue_.push_back(Pending{std::move(sql), std::move(params), std::move(done), {}, false});
    if (state_ == State::ready) {
        send_next();
    }
}

void DbConnection::query_prepared(const char* name, const char* sql,
                                  std::vector<std::optional<std::string>> params, Callback done) {
    if (state_ == State::closed) {
        QueryResult r;
        r.lost = true;
        done(std::move(r));
        return;
    }
    queue_.push_back(Pending{sql, std::move(params), std::move(done), name, false});
    if (state_ == State::ready) {
        send_next();
    }
}

std::string DbConnection::server_name(const std::string& statement) const {
    auto it = generation_.find(statement);
    unsigned g = it == generation_.end() ? 0 : it->second;
    return g == 0 ? statement : statement + "_" + std::to_string(g);
}

void DbConnection::send_next() {
    if (state_ != State::ready || queue_.empty() || current_) {
        return;
    }
    current_ = std::move(queue_.front());
    queue_.pop_front();
    if (send_current()) {
        state_ = State::busy;
        flush_output();
    }
}

// Sends current_: as text, as the execution of a prepared statement, or as the Parse that comes
// first. False when the connection failed (already handled).
bool DbConnection::send_current() {
    std::vector<const char*> values;
    values.reserve(current_->params.size());
    for (const auto& p : current_->params) {
        values.push_back(p ? p->c_str() : nullptr);
    }
    const int n = static_cast<int>(values.size());
    int sent;
    if (current_->statement.empty()) {
        sent = PQsendQueryParams(conn_.get(), current_->sql.c_str(), n, nullptr, values.data(),
                                 nullptr, nullptr, 0);
    } else if (!prepared_.contains(current_->statement)) {
        current_->preparing = true;
        sent = PQsendPrepare(conn_.get(), server_name(current_->statement).c_str(),
                             current_->sql.c_str(), n, nullptr);
    } else {
        sent = PQsendQueryPrepared(conn_.get(), server_name(current_->statement).c_str(), n,
                                   values.data(), nullptr, nullptr, 0);
    }
    if (sent != 1) {
        fail_connection(trim(PQerrorMessage(conn_.get())));
        return false;
    }
    return true;
}

void DbConnection::fail_connection(const std::string& why) {
    bool was_up = state_ == State::ready || state_ == State::busy || state_ == State::setup;
    last_error_ = why.empty() ? "connection failed" : why;
    stop_watching();
    conn_.reset();
    current_result_ = PgResult();
    bool closing = state_ == State::closed;
    state_ = closing ? State::closed : State::waiting_to_reconnect;
    if (current_) {
        Pending p = std::move(*current_);
        current_.reset();
        QueryResult r;
        r.lost = true;
        p.done(std::move(r));
    }
    fail_all_queued();
    if (closing) {
        return;
    }
    if (was_up) {
        spdlog::error("database connection {} lost: {}", name_, last_error_);
    } else if (reconnect_delay_ms_ == 0 || reconnect_delay_ms_ >= kReconnectMaxMs) {
        // Log the first failure and then once per capped interval, not every 100 ms.
        spdlog::error("database connection {} failed: {}", name_, last_error_);
    } else {
        spdlog::debug("database connection {} failed: {}", name_, last_error_);
    }
    if (was_up && callbacks_.on_lost) {
        callbacks_.on_lost(last_error_);
    }
    schedule_reconnect();
}

void DbConnection::fail_all_queued() {
    // Callbacks may queue more work; those calls land in queue_ again and are failed by the next
    // iteration, or sent after the reconnect if the callback ran after state changed.
    std::deque<Pending> failed;
    failed.swap(queue_);
    for (auto& p : failed) {
        QueryResult r;
        r.lost = true;
        p.done(std::move(r));
    }
}

void DbConnection::schedule_reconnect() {
    if (state_ == State::closed) {
        return;
    }
    static thread_local std::mt19937 rng{std::random_device{}()};
    reconnect_delay_ms_ = reconnect_delay_ms_ == 0
                              ? kReconnectInitialMs
                              : std::min(reconnect_delay_ms_ * 2, kReconnectMaxMs);
    // Jitter keeps a fleet of instances from reconnecting in lockstep after a database restart.
    std::uniform_int_distribution<long> jitter(0, reconnect_delay_ms_ / 4);
    state_ = State::waiting_to_reconnect;
    reconnect_timer_.start(static_cast<uint64_t>(reconnect_delay_ms_ + jitter(rng)));
}

void DbConnection::close(std::function<void()> on_closed) {
    if (state_ == State::closed) {
        return;
    }
    state_ = State::closed;
    reconnect_timer_.close();
    if (current_) {
        Pending p = std::move(*current_);
        current_.reset();
        QueryResult r;
        r.lost = true;
        p.done(std::move(r));
    }
    fail_all_queued();
    stop_watching();
    conn_.reset();
    if (on_closed) {
        on_closed();
    }
}

} // namespace outbox
