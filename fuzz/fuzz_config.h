// Fuzz entry for the configuration parser (common/config.h). fuzz/fuzz_config.cpp hands it
// libFuzzer's inputs; tests/unit/fuzz_regressions_test.cpp replays saved inputs.
//
// The input is an environment written as NAME=VALUE lines; a later line for the same name wins,
// and a line ending in a backslash continues on the next with a line break in the value, so that
// values can hold every byte a real environment can. A value ends at its first NUL byte, because
// environment strings are C strings. Lines without '=' are ignored.
#pragma once

#include "common/config.h"
#include "common/pg.h"
#include "fuzz/fuzz_check.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace outbox::fuzz {

namespace config_detail {

// Every variable load_config reads (SPEC 3), for the checks on its errors; fuzz/config.dict lists
// the same names for the fuzzer.
inline constexpr const char* kVariables[] = {
    "DATABASE_URL",
    "OUTBOX_POLL_INTERVAL_MS",
    "OUTBOX_MAX_RETRIES",
    "OUTBOX_INITIAL_DELAY_MS",
    "OUTBOX_MAX_DELAY_MS",
    "OUTBOX_BACKOFF_MULTIPLIER",
    "OUTBOX_BACKOFF_JITTER",
    "OUTBOX_WORKERS",
    "OUTBOX_BATCH_SIZE",
    "OUTBOX_LEASE_MS",
    "OUTBOX_HANDLER_TIMEOUT_MS",
    "OUTBOX_SHUTDOWN_TIMEOUT_MS",
    "OUTBOX_WORKER_MAX_EVENTS",
    "OUTBOX_WORKER_MEMORY_MB",
    "OUTBOX_RETENTION_HOURS",
    "OUTBOX_HANDLERS",
    "OUTBOX_HTTP_HOST",
    "OUTBOX_HTTP_PORT",
    "OUTBOX_DLQ_ALERT_THRESHOLD",
    "OUTBOX_METRICS_LOG_INTERVAL_MS",
    "OUTBOX_INSTANCE_ID",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "SERVICE_NAME",
};

inline std::map<std::string, std::string> parse_environment(std::string_view input) {
    std::map<std::string, std::string> variables;
    std::string record;
    std::size_t position = 0;
    while (position <= input.size()) {
        std::size_t end = input.find('\n', position);
        if (end == std::string_view::npos) {
            end = input.size();
        }
        record.append(input.substr(position, end - position));
        position = end + 1;
        if (!record.empty() && record.back() == '\\' && end < input.size()) {
            record.back() = '\n';
            continue;
        }
        const std::size_t equals = record.find('=');
        if (equals != std::string::npos) {
            std::string value = record.substr(equals + 1);
            value.resize(std::min(value.size(), value.find('\0')));
            variables[record.substr(0, equals)] = std::move(value);
        }
        record.clear();
    }
    return variables;
}

inline bool has_control_character(std::string_view text) {
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x20 || byte == 0x7f) {
            return true;
        }
    }
    return false;
}

// A password that cannot show up in an error or a masked URL by coincidence: eight or more
// letters and digits that occur nowhere else in the value.
inline std::optional<std::string> distinctive(const std::string& url, std::size_t begin,
                                              std::size_t end) {
    const std::string password = url.substr(begin, end - begin);
    if (password.size() < 8) {
        return std::nullopt;
    }
    for (const char c : password) {
        if (!std::isalnum(static_cast<unsigned char>(c))) {
            return std::nullopt;
        }
    }
    const std::string rest = url.substr(0, begin) + " " + url.substr(end);
    if (rest.find(password) != std::string::npos) {
        return std::nullopt;
    }
    return password;
}

// The password of a DATABASE_URL in either form libpq takes ("postgresql://user:password@host"
// or "... password=secret ..."), when it is distinctive.
inline std::optional<std::string> distinctive_password(const std::string& url) {
    // libpq reads a URI only behind its own two scheme designators; anything else is keywords.
    std::size_t authority = 0;
    for (const std::string_view scheme : {"postgresql://", "postgres://"}) {
        if (url.starts_with(scheme)) {
            authority = scheme.size();
        }
    }
    if (authority != 0) {
        const std::size_t at = url.find('@', authority);
        const std::size_t colon = url.find(':', authority);
        if (at == std::string::npos || colon == std::string::npos || colon > at ||
            url.find_first_of("/?#", authority) < at) {
            return std::nullopt;
        }
        return distinctive(url, colon + 1, at);
    }
    const std::string keyword = "password=";
    const std::size_t found = url.find(keyword);
    if (found == std::string::npos || (found > 0 && url[found - 1] != ' ')) {
        return std::nullopt;
    }
    const std::size_t begin = found + keyword.size();
    return distinctive(url, begin, std::min(url.size(), url.find(' ', begin)));
}

inline void check_error(const ConfigResult& result,
                        const std::map<std::string, std::string>& variables) {
    OUTBOX_FUZZ_CHECK(!result.error.empty(), "a configuration failure without an error");
    // The error is one line and printable: it goes to stderr and to the journal as it is.
    OUTBOX_FUZZ_CHECK(!has_control_character(result.error),
                      "a configuration error holds a control character (or several lines)");
    const std::string_view error = result.error;
    const char* named = nullptr;
    for (const char* name : kVariables) {
        if (error.starts_with(std::string(name) + "=\"")) {
            named = name;
        }
    }
    OUTBOX_FUZZ_CHECK(named != nullptr, "a configuration error does not start with NAME=\"");
    OUTBOX_FUZZ_CHECK(error.find("allowed: ") != std::string_view::npos,
                      "a configuration error does not say what is allowed");
    if (std::string_view(named) == "DATABASE_URL") {
        const auto url = variables.find("DATABASE_URL");
        if (url != variables.end()) {
            if (const auto password = distinctive_password(url->second)) {
                OUTBOX_FUZZ_CHECK(error.find(*password) == std::string_view::npos,
                                  "a configuration error shows the database password");
            }
        }
    }
}

inline bool is_address_or_host_name(const std::string& host) {
    unsigned char address[16];
    if (inet_pton(AF_INET, host.c_str(), address) == 1 ||
        inet_pton(AF_INET6, host.c_str(), address) == 1) {
        return true;
    }
    if (host.empty() || host.size() > 253) {
        return false;
    }
    for (const char c : host) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') {
            return false;
        }
    }
    return true;
}

// Every value of an accepted configuration is one SPEC 3 allows.
inline void check_config(const Config& c, const std::map<std::string, std::string>& variables) {
    const auto within = [](auto value, long long min, long long max) {
        return static_cast<long long>(value) >= min && static_cast<long long>(value) <= max;
    };
    OUTBOX_FUZZ_CHECK(within(c.poll_interval_ms, 10, 3600000), "poll interval out of range");
    OUTBOX_FUZZ_CHECK(within(c.max_retries, 1, 1000), "max retries out of range");
    OUTBOX_FUZZ_CHECK(within(c.initial_delay_ms, 0, 86400000), "initial delay out of range");
    OUTBOX_FUZZ_CHECK(within(c.max_delay_ms, 1, 604800000), "max delay out of range");
    OUTBOX_FUZZ_CHECK(c.max_delay_ms >= c.initial_delay_ms, "max delay below initial delay");
    OUTBOX_FUZZ_CHECK(c.backoff_multiplier >= 1.0 && c.backoff_multiplier <= 100.0,
                      "backoff multiplier out of range");
    OUTBOX_FUZZ_CHECK(c.backoff_jitter >= 0.0 && c.backoff_jitter <= 1.0,
                      "backoff jitter out of range");
    OUTBOX_FUZZ_CHECK(within(c.workers, 1, 256), "workers out of range");
    OUTBOX_FUZZ_CHECK(within(c.batch_size, 1, 10000), "batch size out of range");
    OUTBOX_FUZZ_CHECK(within(c.lease_ms, 1000, 86400000), "lease out of range");
    OUTBOX_FUZZ_CHECK(within(c.handler_timeout_ms, 1, 86400000), "handler timeout out of range");
    OUTBOX_FUZZ_CHECK(within(c.shutdown_timeout_ms, 0, 3600000), "shutdown timeout out of range");
    OUTBOX_FUZZ_CHECK(within(c.worker_max_events, 0, 1000000000), "max events out of range");
    OUTBOX_FUZZ_CHECK(c.worker_memory_mb == 0 || within(c.worker_memory_mb, 16, 1048576),
                      "worker memory out of range");
    OUTBOX_FUZZ_CHECK(within(c.retention_hours, 0, 876000), "retention out of range");
    OUTBOX_FUZZ_CHECK(is_address_or_host_name(c.http_host), "HTTP host is not an address");
    OUTBOX_FUZZ_CHECK(within(c.http_port, 0, 65535), "HTTP port out of range");
    OUTBOX_FUZZ_CHECK(within(c.dlq_alert_threshold, 0, 1000000000), "DLQ threshold out of range");
    OUTBOX_FUZZ_CHECK(c.metrics_log_interval_ms == 0 ||
                          within(c.metrics_log_interval_ms, 1000, 86400000),
                      "metrics log interval out of range");
    OUTBOX_FUZZ_CHECK(!c.instance_id.empty(), "no instance id");
    for (const std::string* text :
         {&c.handlers_path, &c.http_host, &c.instance_id, &c.service_name}) {
        OUTBOX_FUZZ_CHECK(!has_control_character(*text),
                          "a text setting holds a control character");
    }
    const auto url = variables.find("DATABASE_URL");
    OUTBOX_FUZZ_CHECK(c.database_url == (url == variables.end() ? "" : url->second),
                      "DATABASE_URL is not the value given");
    // The service logs the accepted URL masked at startup, and check-config prints it so.
    const std::string masked = mask_conninfo(c.database_url);
    if (const auto password = distinctive_password(c.database_url)) {
        OUTBOX_FUZZ_CHECK(masked.find(*password) == std::string::npos,
                          "the masked DATABASE_URL shows the password");
    }
}

} // namespace config_detail

inline void fuzz_config(std::string_view input) {
    using namespace config_detail;

    const std::map<std::string, std::string> variables = parse_environment(input);
    const EnvLookup env = [&variables](const char* name) -> std::optional<std::string> {
        const auto it = variables.find(name);
        if (it == variables.end()) {
            return std::nullopt;
        }
        return it->second;
    };

    const ConfigResult with_database = load_config(env, true);
    const ConfigResult without_database = load_config(env, false);
    for (const ConfigResult* result : {&with_database, &without_database}) {
        OUTBOX_FUZZ_CHECK(result->config.has_value() == result->error.empty(),
                          "a configuration result is neither a config nor an error");
        if (result->config) {
            check_config(*result->config, variables);
        } else {
            check_error(*result, variables);
        }
    }
    // Requiring the database only adds a check; everything else is read the same way.
    if (with_database.config) {
        OUTBOX_FUZZ_CHECK(without_database.config.has_value(),
                          "a configuration valid with a database is invalid without one");
    }
    const auto url = variables.find("DATABASE_URL");
    if (url == variables.end() || url->second.empty()) {
        OUTBOX_FUZZ_CHECK(!with_database.config, "a configuration without DATABASE_URL accepted");
    }
}

} // namespace outbox::fuzz
