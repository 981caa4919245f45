// Configuration from the environment (SPEC section 3). Every value is validated before anything
// else happens; the first bad one becomes a single line naming the variable, the value and what is
// allowed, and the program exits with kExitConfig (78, EX_CONFIG).
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace outbox {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 64;  // EX_USAGE
constexpr int kExitConfig = 78; // EX_CONFIG

enum class LogLevel { debug, info, warn, error };
enum class LogFormat { text, json };
// OUTBOX_ON_COMPLETE (SPEC 2): what a success does to the Outbox row. `keep` marks it COMPLETED
// (retention deletes it later); `remove` (the word "delete") deletes it in the statement that
// records the success, the EventLog row keeping the history.
enum class OnComplete { keep, remove };
// OUTBOX_ORDERING_ON_DEAD_LETTER (SPEC 2a): what a dead-lettered event does to the later events of
// its ordering key. `block` keeps the key blocked until the DLQ entry is retried or skipped;
// `skip` lets the later events continue at once. The service applies it to its sessions as the
// setting outbox_worker.on_dead_letter, which the migration's dead-letter path reads.
enum class OrderingOnDeadLetter { block, skip };

struct Config {
    std::string database_url;
    long poll_interval_ms = 5000;
    int max_retries = 5;
    long initial_delay_ms = 1000;
    long max_delay_ms = 60000;
    double backoff_multiplier = 2.0;
    double backoff_jitter = 0.1;
    int workers = 1; // default: number of CPUs
    int batch_size = 100;
    long lease_ms = 30000;
    long handler_timeout_ms = 30000;
    long shutdown_timeout_ms = 25000;
    long worker_max_events = 0; // 0: never recycle
    long worker_memory_mb = 0;  // 0: no limit
    long retention_hours = 168; // 0: keep forever
    std::string handlers_path;  // empty: no handlers file
    std::string http_host = "127.0.0.1";
    int http_port = 3001; // 0: disabled
    long dlq_alert_threshold = 100;
    long metrics_log_interval_ms = 60000; // 0: no metrics log line
    std::string instance_id;              // default: host name and pid
    LogLevel log_level = LogLevel::info;
    LogFormat log_format = LogFormat::text;
    bool log_format_explicit = false; // LOG_FORMAT was set (journald prefixes only when it was not)
    std::string service_name = "calibr-outbox-worker";
    OnComplete on_complete = OnComplete::keep;
    // OUTBOX_SYNCHRONOUS_COMMIT: whether the service's own transactions (claims, outcomes, lease
    // renewals) wait for their commit to be flushed. Off trades duplicate deliveries after a
    // database crash for fewer flushes; it never loses an event (README, "Durability").
    bool synchronous_commit = true;
    OrderingOnDeadLetter ordering_on_dead_letter = OrderingOnDeadLetter::block;
    // OUTBOX_ADMIN_TOKEN: enables the console's actions (SPEC 6); empty: the console is read-only.
    // A secret: never logged, printed or sent, and compared in constant time.
    std::string admin_token;
};

struct ConfigResult {
    std::optional<Config> config;
    std::string error; // one line: VARIABLE="value": problem; allowed: ...
};

using EnvLookup = std::function<std::optional<std::string>(const char* name)>;

// The process environment.
EnvLookup process_environment();

// Parses and validates everything. `require_database` is false for commands that never connect
// (for example `health`, which only asks the running instance over HTTP).
[[nodiscard]] ConfigResult load_config(const EnvLookup& env, bool require_database = true);

const char* to_string(LogLevel level);
const char* to_string(OnComplete mode); // "keep" or "delete", as OUTBOX_ON_COMPLETE spells it
// "block" or "skip", as OUTBOX_ORDERING_ON_DEAD_LETTER and outbox_worker.on_dead_letter spell it.
const char* to_string(OrderingOnDeadLetter policy);

} // namespace outbox
