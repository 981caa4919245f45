#include "common/log.h"

#include "common/json.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>

namespace outbox {

namespace {

std::string g_process_name = "supervisor";

const char* level_word(spdlog::level::level_enum level) {
    switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
        return "debug";
    case spdlog::level::info:
        return "info";
    case spdlog::level::warn:
        return "warn";
    default:
        return "error";
    }
}

// syslog(3) priorities as sd-daemon(3) prefixes.
const char* syslog_prefix(spdlog::level::level_enum level) {
    switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
        return "<7>";
    case spdlog::level::info:
        return "<6>";
    case spdlog::level::warn:
        return "<4>";
    case spdlog::level::err:
        return "<3>";
    default:
        return "<2>";
    }
}

void append_timestamp(spdlog::memory_buf_t& dest, spdlog::log_clock::time_point tp) {
    auto since_epoch = tp.time_since_epoch();
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - secs).count();
    std::time_t t = static_cast<std::time_t>(secs.count());
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    n += static_cast<size_t>(
        std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(millis)));
    dest.append(buf, buf + n);
}

class LineFormatter final : public spdlog::formatter {
  public:
    explicit LineFormatter(LogSettings settings) : settings_(std::move(settings)) {}

    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        std::string_view text(msg.payload.data(), msg.payload.size());
        if (settings_.format == LogFormat::json) {
            dest.append(std::string_view("{\"timestamp\":\""));
            append_timestamp(dest, msg.time);
            append(dest, "\",\"level\":\"");
            append(dest, level_word(msg.level));
            append(dest, "\",\"service\":");
            append(dest, json_quote(settings_.service));
            append(dest, ",\"message\":");
            append(dest, json_quote(text));
            append(dest, ",\"pid\":");
            append(dest, std::to_string(getpid()));
            append(dest, ",\"process\":");
            append(dest, json_quote(g_process_name));
            append(dest, "}\n");
            return;
        }
        if (settings_.journald_prefixes) {
            append(dest, syslog_prefix(msg.level));
        } else {
            append_timestamp(dest, msg.time);
            append(dest, " ");
            append(dest, level_word(msg.level));
            append(dest, " ");
        }
        append(dest, settings_.service);
        append(dest, "[");
        append(dest, std::to_string(getpid()));
        append(dest, "] ");
        append(dest, g_process_name);
        append(dest, ": ");
        // A message must stay one line: journald and log shippers split on newlines.
        for (char c : text) {
            if (c == '\n') {
                append(dest, "\\n");
            } else {
                dest.push_back(c);
            }
        }
        dest.push_back('\n');
    }

    std::unique_ptr<spdlog::formatter> clone() const override {
        return std::make_unique<LineFormatter>(settings_);
    }

  private:
    static void append(spdlog::memory_buf_t& dest, std::string_view s) {
        dest.append(s.data(), s.data() + s.size());
    }

    LogSettings settings_;
};

} // namespace

spdlog::level::level_enum to_spdlog_level(LogLevel level) {
    switch (level) {
    case LogLevel::debug:
        return spdlog::level::debug;
    case LogLevel::info:
        return spdlog::level::info;
    case LogLevel::warn:
        return spdlog::level::warn;
    case LogLevel::error:
        return spdlog::level::err;
    }
    return spdlog::level::info;
}

LogSettings log_settings_for(const Config& config) {
    LogSettings s;
    s.level = config.log_level;
    s.format = config.log_format;
    s.service = config.service_name;
    const char* journal = std::getenv("JOURNAL_STREAM");
    s.journald_prefixes = !config.log_format_explicit && journal != nullptr && *journal != '\0';
    return s;
}

void setup_logging(const LogSettings& settings) {
    // stderr_sink_st: single-threaded, unbuffered writes; each line is one write(2), so lines of
    // the supervisor and of its handler processes do not interleave mid-line.
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_st>();
    auto logger = std::make_shared<spdlog::logger>("outbox", sink);
    logger->set_formatter(std::make_unique<LineFormatter>(settings));
    logger->set_level(to_spdlog_level(settings.level));
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
}

void set_log_process_name(const std::string& name) {
    g_process_name = name;
}

} // namespace outbox
