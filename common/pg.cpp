#include "common/pg.h"

#include <spdlog/spdlog.h>

#include <cctype>

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

namespace {

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i]))) {
            return false;
        }
    }
    return true;
}

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

} // namespace

std::vector<std::pair<size_t, size_t>> password_spans(std::string_view conninfo) {
    // One left-to-right pass in either syntax libpq accepts; no regular expressions, so that a
    // hostile or merely odd DATABASE_URL costs linear time and constant stack.
    std::vector<std::pair<size_t, size_t>> spans;
    size_t scheme_end = conninfo.find("://");
    bool uri = conninfo.substr(0, 13) == "postgresql://" || conninfo.substr(0, 11) == "postgres://";
    if (uri) {
        size_t authority = scheme_end + 3;
        size_t authority_end = conninfo.find_first_of("/?#", authority);
        if (authority_end == std::string_view::npos) {
            authority_end = conninfo.size();
        }
        size_t at = conninfo.rfind('@', authority_end == 0 ? 0 : authority_end - 1);
        if (at != std::string_view::npos && at >= authority) {
            size_t colon = conninfo.find(':', authority);
            if (colon != std::string_view::npos && colon < at) {
                spans.emplace_back(colon + 1, at - colon - 1);
            }
        }
        size_t query = conninfo.find('?', authority_end);
        if (query != std::string_view::npos) {
            size_t pos = query + 1;
            while (pos <= conninfo.size()) {
                size_t amp = conninfo.find_first_of("&#", pos);
                size_t end = amp == std::string_view::npos ? conninfo.size() : amp;
                std::string_view param = conninfo.substr(pos, end - pos);
                size_t eq = param.find('=');
                if (eq != std::string_view::npos && iequals(param.substr(0, eq), "password")) {
                    spans.emplace_back(pos + eq + 1, end - pos - eq - 1);
                }
                if (amp == std::string_view::npos || conninfo[amp] == '#') {
                    break;
                }
                pos = amp + 1;
            }
        }
        return spans;
    }
    // key = value pairs; a value is 'quoted' (with \ escapes) or runs to the next space.
    size_t i = 0;
    const size_t n = conninfo.size();
    while (i < n) {
        while (i < n && is_space(conninfo[i])) {
            ++i;
        }
        size_t key_start = i;
        while (i < n && conninfo[i] != '=' && !is_space(conninfo[i])) {
            ++i;
        }
        std::string_view key = conninfo.substr(key_start, i - key_start);
        while (i < n && is_space(conninfo[i])) {
            ++i;
        }
        if (i >= n || conninfo[i] != '=') {
            continue; // not key=value: libpq rejects it; nothing to hide
        }
        ++i;
        while (i < n && is_space(conninfo[i])) {
            ++i;
        }
        size_t value_start = i;
        if (i < n && conninfo[i] == '\'') {
            ++i;
            while (i < n && conninfo[i] != '\'') {
                i += (conninfo[i] == '\\' && i + 1 < n) ? 2 : 1;
            }
            if (i < n) {
                ++i; // the closing quote
            }
        } else {
            while (i < n && !is_space(conninfo[i])) {
                i += (conninfo[i] == '\\' && i + 1 < n) ? 2 : 1;
            }
        }
        if (iequals(key, "password")) {
            spans.emplace_back(value_start, i - value_start);
        }
    }
    return spans;
}

std::string mask_conninfo(std::string_view conninfo) {
    std::string out;
    out.reserve(conninfo.size());
    size_t copied = 0;
    for (auto [start, length] : password_spans(conninfo)) {
        out.append(conninfo.substr(copied, start - copied));
        out += "****";
        copied = start + length;
    }
    out.append(conninfo.substr(copied));
    return out;
}

} // namespace outbox
