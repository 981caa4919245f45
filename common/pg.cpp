#include "common/pg.h"

#include <spdlog/spdlog.h>

#include <regex>

namespace outbox {

bool PgResult::ok() const {
    if (res_ == nullptr) {
        return false;
    }
    ExecStatusType st = PQresultStatus(res_);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

std::string PgResult::error() const {
    if (res_ == nullptr) {
        return "no result (connection lost?)";
    }
    const char* primary = PQresultErrorField(res_, PG_DIAG_MESSAGE_PRIMARY);
    std::string msg = primary ? primary : PQresultErrorMessage(res_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) {
        msg.pop_back();
    }
    if (const char* detail = PQresultErrorField(res_, PG_DIAG_MESSAGE_DETAIL)) {
        msg += " (";
        msg += detail;
        msg += ")";
    }
    if (msg.empty()) {
        msg = PQresStatus(PQresultStatus(res_));
    }
    return msg;
}

std::string PgResult::sqlstate() const {
    const char* code = res_ ? PQresultErrorField(res_, PG_DIAG_SQLSTATE) : nullptr;
    return code ? code : "";
}

void install_notice_logger(PGconn* conn) {
    // Server notices (for example "trigger ... does not exist, skipping" from an idempotent
    // migration) go to the log at debug level instead of raw lines on stderr.
    PQsetNoticeProcessor(
        conn,
        [](void*, const char* message) {
            std::string m = message;
            while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) {
                m.pop_back();
            }
            spdlog::debug("postgres: {}", m);
        },
        nullptr);
}

PgConn pg_connect(const std::string& conninfo, std::string& error) {
    PgConn conn(PQconnectdb(conninfo.c_str()));
    if (!conn) {
        error = "out of memory";
        return nullptr;
    }
    if (PQstatus(conn.get()) == CONNECTION_OK) {
        install_notice_logger(conn.get());
    }
    if (PQstatus(conn.get()) != CONNECTION_OK) {
        error = PQerrorMessage(conn.get());
        while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) {
            error.pop_back();
        }
        return nullptr;
    }
    return conn;
}

PgResult pg_exec(PGconn* conn, const char* sql) {
    return PgResult(PQexec(conn, sql));
}

PgResult pg_exec_params(PGconn* conn, const char* sql,
                        const std::vector<std::optional<std::string>>& params) {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) {
        values.push_back(p ? p->c_str() : nullptr);
    }
    return PgResult(PQexecParams(conn, sql, static_cast<int>(values.size()), nullptr, values.data(),
                                 nullptr, nullptr, 0));
}

namespace {
void append_array_element(std::string& out, std::string_view value) {
    out += '"';
    for (char c : value) {
        if (c == '"' || c == '\\') {
            out += '\\';
        }
        out += c;
    }
    out += '"';
}
} // namespace

std::string pg_text_array(const std::vector<std::string>& values) {
    std::string out = "{";
    for (size_t i = 0; i < values.size(); ++i) {
        if (i > 0) {
            out += ',';
        }
        append_array_element(out, values[i]);
    }
    out += '}';
    return out;
}

std::string pg_text_array(const std::vector<std::optional<std::string>>& values) {
    std::string out = "{";
    for (size_t i = 0; i < values.size(); ++i) {
        if (i > 0) {
            out += ',';
        }
        if (values[i]) {
            append_array_element(out, *values[i]);
        } else {
            out += "NULL";
        }
    }
    out += '}';
    return out;
}

std::string mask_conninfo(std::string_view conninfo) {
    std::string s(conninfo);
    // URI userinfo: scheme://user:password@host
    static const std::regex uri_password(R"(^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*):[^@/?#]*@)");
    s = std::regex_replace(s, uri_password, "$1:****@", std::regex_constants::format_first_only);
    // URI query parameter: ?password=... or &password=...
    static const std::regex query_password(R"(([?&]password=)[^&#]*)", std::regex::icase);
    s = std::regex_replace(s, query_password, "$1****");
    // key=value form: password=secret or password='quoted secret'
    static const std::regex kv_password(R"((^|\s)(password\s*=\s*)('(\\.|[^'])*'|[^\s]*))",
                                        std::regex::icase);
    s = std::regex_replace(s, kv_password, "$1$2****");
    return s;
}

} // namespace outbox
