// Logging for both processes: spdlog's default logger, writing to stderr (journald and container
// runtimes collect it there), synchronously and without threads so that fork() is safe.
//
// Formats (SPEC 3): text (default) and json, one object a line with timestamp, level, service,
// message and fields (pid, process). Under journald (JOURNAL_STREAM set) with LOG_FORMAT unset,
// text lines start with the syslog priority prefix (<3> error ... <7> debug) and carry no
// timestamp, because journald adds its own and reads the priority from the prefix.
#pragma once

#include "common/config.h"

#include <spdlog/common.h>

#include <string>

namespace outbox {

struct LogSettings {
    LogLevel level = LogLevel::info;
    LogFormat format = LogFormat::text;
    bool journald_prefixes = false;
    std::string service = "calibr-outbox-worker";
};

// From the validated configuration and the environment (JOURNAL_STREAM).
LogSettings log_settings_for(const Config& config);

// The spdlog level of a configured level (also used by the `log` handler kind).
spdlog::level::level_enum to_spdlog_level(LogLevel level);

// Installs the default logger. May be called again (after fork, or to change the level).
void setup_logging(const LogSettings& settings);

// The process name in every line: "supervisor", "handler-2", "cli". Called after fork.
void set_log_process_name(const std::string& name);

} // namespace outbox
