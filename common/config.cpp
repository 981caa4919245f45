#include "common/config.h"

#include "common/pg.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <thread>
#include <vector>

namespace outbox {

EnvLookup process_environment() {
    return [](const char* name) -> std::optional<std::string> {
        const char* v = std::getenv(name);
        if (v == nullptr) {
            return std::nullopt;
        }
        return std::string(v);
    };
}

const char* to_string(LogLevel level) {
    switch (level) {
    case LogLevel::debug:
        return "debug";
    case LogLevel::info:
        return "info";
    case LogLevel::warn:
        return "warn";
    case LogLevel::error:
        return "error";
    }
    return "info";
}

const char* to_string(OnComplete mode) {
    return mode == OnComplete::remove ? "delete" : "keep";
}

const char* to_string(OrderingOnDeadLetter policy) {
    return policy == OrderingOnDeadLetter::skip ? "skip" : "block";
}

namespace {

// Collects the first error; every parse_* is a no-op once one has been recorded, so load_config
// reads as a plain list of variables.
class Parser {
  public:
    explicit Parser(const EnvLookup& env) : env_(env) {}

    bool failed() const { return !error_.empty(); }
    const std::string& error() const { return error_; }

    void fail(const char* name, const std::string& shown_value, const std::string& problem) {
        if (error_.empty()) {
            error_ = std::string(name) + "=\"" + printable(shown_value) + "\": " + problem;
        }
    }

    // The error is one line: control characters in the value are shown escaped.
    static std::string printable(const std::string& value) {
        std::string out;
        for (unsigned char c : value) {
            if (c < 0x20 || c == 0x7f) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\x%02x", c);
                out += buf;
            } else {
                out += static_cast<char>(c);
            }
        }
        return out;
    }

    // Present and non-empty. An empty variable counts as unset, as in most services: a
    // `KEY=` line in an EnvironmentFile means "use the default".
    std::optional<std::string> raw(const char* name) {
        auto v = env_(name);
        if (!v || v->empty()) {
            return std::nullopt;
        }
        return v;
    }

    template <typename Int>
    void integer(const char* name, Int& out, long long min, long long max) {
        auto v = raw(name);
        if (failed() || !v) {
            return;
        }
        long long parsed = 0;
        const char* first = v->data();
        const char* last = v->data() + v->size();
        auto [ptr, ec] = std::from_chars(first, last, parsed);
        if (ec == std::errc::result_out_of_range ||
            (ec == std::errc() && ptr == last && (parsed < min || parsed > max))) {
            fail(name, *v,
                 "out of range; allowed: an integer from " + std::to_string(min) + " to " +
                     std::to_string(max));
            return;
        }
        if (ec != std::errc() || ptr != last) {
            fail(name, *v,
                 "not an integer; allowed: an integer from " + std::to_string(min) + " to " +
                     std::to_string(max));
            return;
        }
        out = static_cast<Int>(parsed);
    }

    void decimal(const char* name, double& out, double min, double max, const char* allowed) {
        auto v = raw(name);
        if (failed() || !v) {
            return;
        }
        double parsed = 0;
        const char* first = v->data();
        const char* last = v->data() + v->size();
        auto [ptr, ec] = std::from_chars(first, last, parsed, std::chars_format::fixed);
        if (ec != std::errc() || ptr != last) {
            fail(name, *v, std::string("not a decimal number; allowed: ") + allowed);
            return;
        }
        if (!(parsed >= min && parsed <= max)) {
            fail(name, *v, std::string("out of range; allowed: ") + allowed);
            return;
        }
        out = parsed;
    }

    template <typename Enum>
    void word(const char* name, Enum& out,
              std::initializer_list<std::pair<const char*, Enum>> words, const char* allowed,
              bool* seen = nullptr) {
        auto v = raw(name);
        if (failed() || !v) {
            return;
        }
        for (const auto& [w, value] : words) {
            if (*v == w) {
                out = value;
                if (seen) {
                    *seen = true;
                }
                return;
            }
        }
        fail(name, *v, std::string("unknown value; allowed: ") + allowed);
    }

    void text(const char* name, std::string& out, size_t max_length) {
        auto v = raw(name);
        if (failed() || !v) {
            return;
        }
        if (v->size() > max_length) {
            fail(name, v->substr(0, 40) + "...",
                 "too long; allowed: at most " + std::to_string(max_length) + " characters");
            return;
        }
        for (unsigned char c : *v) {
            if (c < 0x20 || c == 0x7f) {
                fail(name, *v, "contains a control character; allowed: printable text");
                return;
            }
        }
        out = *v;
    }

  private:
    const EnvLookup& env_;
    std::string error_;
};

// Replaces every occurrence of `secret` in `text` with "****" in one pass that never looks at
// what it inserted (a password of stars must not make it loop).
std::string replace_all_once(const std::string& text, const std::string& secret) {
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    while (pos < text.size()) {
        size_t hit = text.find(secret, pos);
        if (hit == std::string::npos) {
            break;
        }
        out.append(text, pos, hit - pos);
        out += "****";
        pos = hit + secret.size();
    }
    out.append(text, pos, std::string::npos);
    return out;
}

// libpq's parse errors quote the part of the string they stumbled on, which may be the password
// itself (whole, or the token it failed on): every password of the URL, and its first half, is
// blanked out of the message.
std::string redact_secrets(std::string message, const std::string& url) {
    for (auto [start, length] : password_spans(url)) {
        std::string secret = url.substr(start, length);
        while (!secret.empty() && secret.front() == '\'') {
            secret.erase(0, 1);
        }
        while (!secret.empty() && secret.back() == '\'') {
            secret.pop_back();
        }
        if (secret.empty()) {
            continue;
        }
        message = replace_all_once(message, secret);
        if (secret.size() >= 4) {
            message = replace_all_once(message, secret.substr(0, secret.size() / 2));
        }
    }
    return message;
}

bool valid_host(const std::string& host) {
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1) {
        return true;
    }
    if (host.empty() || host.size() > 253) {
        return false;
    }
    for (char c : host) {
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.')) {
            return false;
        }
    }
    return true;
}

std::string default_instance_id() {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') {
        std::snprintf(host, sizeof host, "unknown-host");
    }
    return std::string(host) + ":" + std::to_string(getpid());
}

} // namespace

ConfigResult load_config(const EnvLookup& env, bool require_database) {
    Config c;
    unsigned cpus = std::thread::hardware_concurrency();
    c.workers = cpus == 0 ? 1 : static_cast<int>(std::min(cpus, 256u));
    Parser p(env);

    if (auto url = p.raw("DATABASE_URL")) {
        // Ask libpq itself whether it can parse the string, so that a typo is a configuration
        // error now rather than a connection error later. The value is shown masked.
        char* err = nullptr;
        PQconninfoOption* opts = PQconninfoParse(url->c_str(), &err);
        if (opts == nullptr) {
            std::string why = err ? err : "cannot be parsed";
            while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) {
                why.pop_back();
            }
            PQfreemem(err);
            p.fail("DATABASE_URL", mask_conninfo(*url),
                   Parser::printable(redact_secrets(why, *url)) +
                       "; allowed: a libpq connection string or URI");
        } else {
            PQconninfoFree(opts);
            c.database_url = *url;
        }
    } else if (require_database) {
        p.fail(
            "DATABASE_URL", "",
            "required; allowed: a libpq connection string or URI (postgresql://user@host:5432/db)");
    }

    p.integer("OUTBOX_POLL_INTERVAL_MS", c.poll_interval_ms, 10, 3600000);
    p.integer("OUTBOX_MAX_RETRIES", c.max_retries, 1, 1000);
    p.integer("OUTBOX_INITIAL_DELAY_MS", c.initial_delay_ms, 0, 86400000);
    p.integer("OUTBOX_MAX_DELAY_MS", c.max_delay_ms, 1, 604800000);
    p.decimal("OUTBOX_BACKOFF_MULTIPLIER", c.backoff_multiplier, 1.0, 100.0,
              "a decimal from 1 to 100");
    p.decimal("OUTBOX_BACKOFF_JITTER", c.backoff_jitter, 0.0, 1.0, "a decimal from 0 to 1");
    p.integer("OUTBOX_WORKERS", c.workers, 1, 256);
    p.integer("OUTBOX_BATCH_SIZE", c.batch_size, 1, 10000);
    p.integer("OUTBOX_LEASE_MS", c.lease_ms, 1000, 86400000);
    p.integer("OUTBOX_HANDLER_TIMEOUT_MS", c.handler_timeout_ms, 1, 86400000);
    p.integer("OUTBOX_SHUTDOWN_TIMEOUT_MS", c.shutdown_timeout_ms, 0, 3600000);
    p.integer("OUTBOX_WORKER_MAX_EVENTS", c.worker_max_events, 0, 1000000000);
    p.integer("OUTBOX_WORKER_MEMORY_MB", c.worker_memory_mb, 0, 1048576);
    if (!p.failed() && c.worker_memory_mb != 0 && c.worker_memory_mb < 16) {
        p.fail("OUTBOX_WORKER_MEMORY_MB", std::to_string(c.worker_memory_mb),
               "too small to start a process; allowed: 0 (no limit) or 16 to 1048576");
    }
    p.integer("OUTBOX_RETENTION_HOURS", c.retention_hours, 0, 876000);
    p.text("OUTBOX_HANDLERS", c.handlers_path, 4096);
    p.text("OUTBOX_HTTP_HOST", c.http_host, 253);
    if (!p.failed() && !valid_host(c.http_host)) {
        p.fail("OUTBOX_HTTP_HOST", c.http_host,
               "not an address; allowed: an IPv4 or IPv6 address or a host name");
    }
    p.integer("OUTBOX_HTTP_PORT", c.http_port, 0, 65535);
    p.integer("OUTBOX_DLQ_ALERT_THRESHOLD", c.dlq_alert_threshold, 0, 1000000000);
    p.integer("OUTBOX_METRICS_LOG_INTERVAL_MS", c.metrics_log_interval_ms, 0, 86400000);
    if (!p.failed() && c.metrics_log_interval_ms != 0 && c.metrics_log_interval_ms < 1000) {
        p.fail("OUTBOX_METRICS_LOG_INTERVAL_MS", std::to_string(c.metrics_log_interval_ms),
               "too short; allowed: 0 (off) or 1000 to 86400000");
    }
    p.text("OUTBOX_INSTANCE_ID", c.instance_id, 200);
    p.word("LOG_LEVEL", c.log_level,
           {{"debug", LogLevel::debug},
            {"info", LogLevel::info},
            {"warn", LogLevel::warn},
            {"error", LogLevel::error}},
           "debug, info, warn, error");
    p.word("LOG_FORMAT", c.log_format, {{"text", LogFormat::text}, {"json", LogFormat::json}},
           "text, json", &c.log_format_explicit);
    p.text("SERVICE_NAME", c.service_name, 100);
    p.word("OUTBOX_ON_COMPLETE", c.on_complete,
           {{"keep", OnComplete::keep}, {"delete", OnComplete::remove}}, "keep, delete");
    p.word("OUTBOX_SYNCHRONOUS_COMMIT", c.synchronous_commit, {{"on", true}, {"off", false}},
           "on, off");
    p.word("OUTBOX_ORDERING_ON_DEAD_LETTER", c.ordering_on_dead_letter,
           {{"block", OrderingOnDeadLetter::block}, {"skip", OrderingOnDeadLetter::skip}},
           "block, skip");

    // Checked here rather than with text(), whose errors repeat the value: this one is a secret.
    if (auto token = p.raw("OUTBOX_ADMIN_TOKEN"); token && !p.failed()) {
        bool printable = std::all_of(token->begin(), token->end(),
                                     [](unsigned char ch) { return ch > 0x20 && ch < 0x7f; });
        if (!printable || token->size() > 1024) {
            p.fail("OUTBOX_ADMIN_TOKEN", "****",
                   "allowed: 1 to 1024 printable ASCII characters without spaces (it travels "
                   "in an HTTP header)");
        } else {
            c.admin_token = *token;
        }
    }

    if (!p.failed() && c.max_delay_ms < c.initial_delay_ms) {
        p.fail("OUTBOX_MAX_DELAY_MS", std::to_string(c.max_delay_ms),
               "smaller than OUTBOX_INITIAL_DELAY_MS (" + std::to_string(c.initial_delay_ms) +
                   "); allowed: at least the initial delay");
    }

    if (p.failed()) {
        return {std::nullopt, p.error()};
    }
    if (c.instance_id.empty()) {
        c.instance_id = default_instance_id();
    }
    return {c, {}};
}

} // namespace outbox
