// RAII over libpq and the blocking helpers used by the command line (migrate, emit, dlq, stats).
// The supervisor's loop never uses the blocking calls here; it drives libpq asynchronously
// (supervisor/db_connection.h).
#pragma once

#include <libpq-fe.h>

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

struct PgConnDeleter {
    void operator()(PGconn* conn) const { PQfinish(conn); }
};
using PgConn = std::unique_ptr<PGconn, PgConnDeleter>;

// Owns a PGresult. ok() is true for PGRES_COMMAND_OK and PGRES_TUPLES_OK.
class PgResult {
  public:
    PgResult() = default;
    explicit PgResult(PGresult* res) : res_(res) {}
    PgResult(PgResult&& other) noexcept : res_(other.res_) { other.res_ = nullptr; }
    PgResult& operator=(PgResult&& other) noexcept {
        if (this != &other) {
            PQclear(res_);
            res_ = other.res_;
            other.res_ = nullptr;
        }
        return *this;
    }
    PgResult(const PgResult&) = delete;
    PgResult& operator=(const PgResult&) = delete;
    ~PgResult() { PQclear(res_); }

    PGresult* get() const { return res_; }
    bool ok() const;
    // The server's message (primary text; detail and hint appended), or a client-side error.
    std::string error() const;
    // SQLSTATE, empty when unknown.
    std::string sqlstate() const;
    int rows() const { return res_ ? PQntuples(res_) : 0; }
    int columns() const { return res_ ? PQnfields(res_) : 0; }
    bool is_null(int row, int col) const { return PQgetisnull(res_, row, col) != 0; }
    std::string value(int row, int col) const {
        return std::string(PQgetvalue(res_, row, col),
                           static_cast<size_t>(PQgetlength(res_, row, col)));
    }
    std::string_view view(int row, int col) const {
        return {PQgetvalue(res_, row, col), static_cast<size_t>(PQgetlength(res_, row, col))};
    }
    std::optional<std::string> optional_value(int row, int col) const {
        if (is_null(row, col)) {
            return std::nullopt;
        }
        return value(row, col);
    }

  private:
    PGresult* res_ = nullptr;
};

// Connects (blocking). On failure returns nullptr and sets `error` to libpq's message, in which
// libpq never repeats the password.
PgConn pg_connect(const std::string& conninfo, std::string& error);

// Routes the server's NOTICE messages on this connection to the log (debug level).
void install_notice_logger(PGconn* conn);

PgResult pg_exec(PGconn* conn, const char* sql);
inline PgResult pg_exec(PGconn* conn, const std::string& sql) {
    return pg_exec(conn, sql.c_str());
}

// Text-format parameters; std::nullopt is SQL NULL.
PgResult pg_exec_params(PGconn* conn, const char* sql,
                        const std::vector<std::optional<std::string>>& params);

// A PostgreSQL array literal of text values ({"a","b"}), quoted and escaped, for array parameters.
std::string pg_text_array(const std::vector<std::string>& values);
std::string pg_text_array(const std::vector<std::optional<std::string>>& values);

// The connection string with any password replaced by "****", in both URI form
// (postgresql://user:secret@host/db, ?password=secret) and key=value form (password=secret).
// Used wherever the database location is shown: logs, errors, check-config.
std::string mask_conninfo(std::string_view conninfo);

// Where the password values sit in a connection string (offset, length), in URI form (userinfo
// and ?password=) and key=value form. Linear time; shared by mask_conninfo and error redaction.
std::vector<std::pair<size_t, size_t>> password_spans(std::string_view conninfo);

} // namespace outbox
