// `outbox-worker check-config`: everything `run` would validate before starting, without starting.
#include "cli/args.h"
#include "cli/commands.h"
#include "worker/handlers_file.h"

#include <cstdio>

namespace outbox::cli {

const char* const kCheckConfigUsage = R"(usage: outbox-worker check-config

Validates every variable of the environment (SPEC section 3) and the handlers file named by
OUTBOX_HANDLERS, then prints the effective configuration, with the password of DATABASE_URL
masked. Connects to nothing. Exits 0 when everything is valid, 78 with a one-line error when not.
)";

int check_config_command(const std::vector<std::string>& args) {
    ParseResult parsed = parse_args(args, {});
    if (!parsed.error.empty()) {
        return usage_error("check-config", parsed.error, kCheckConfigUsage);
    }
    if (parsed.args.help) {
        std::fputs(kCheckConfigUsage, stdout);
        return kExitOk;
    }
    std::optional<Config> loaded = load_cli_config();
    if (!loaded) {
        return kExitConfig;
    }
    const Config& c = *loaded;
    std::string handlers = "unset (handlers registered in code only)";
    if (!c.handlers_path.empty()) {
        HandlersFileResult file = load_handlers_file(c.handlers_path, c.handler_timeout_ms);
        if (!file.subscribers) {
            std::fprintf(stderr, "%s: OUTBOX_HANDLERS: %s\n", kProgram, file.error.c_str());
            return kExitConfig;
        }
        handlers = c.handlers_path + " (" + std::to_string(file.subscribers->size()) +
                   (file.subscribers->size() == 1 ? " subscriber)" : " subscribers)");
        for (const auto& s : *file.subscribers) {
            std::string patterns;
            for (const auto& p : s.patterns) {
                patterns += (patterns.empty() ? "" : ", ") + p;
            }
            handlers += "\n    " + s.name + ": " + patterns + " (timeout " +
                        std::to_string(s.timeout_ms) + " ms)";
        }
    }

    std::printf("configuration is valid\n");
    std::printf("DATABASE_URL=%s\n", mask_conninfo(c.database_url).c_str());
    std::printf("OUTBOX_POLL_INTERVAL_MS=%ld\n", c.poll_interval_ms);
    std::printf("OUTBOX_MAX_RETRIES=%d\n", c.max_retries);
    std::printf("OUTBOX_INITIAL_DELAY_MS=%ld\n", c.initial_delay_ms);
    std::printf("OUTBOX_MAX_DELAY_MS=%ld\n", c.max_delay_ms);
    std::printf("OUTBOX_BACKOFF_MULTIPLIER=%g\n", c.backoff_multiplier);
    std::printf("OUTBOX_BACKOFF_JITTER=%g\n", c.backoff_jitter);
    std::printf("OUTBOX_WORKERS=%d\n", c.workers);
    std::printf("OUTBOX_BATCH_SIZE=%d\n", c.batch_size);
    std::printf("OUTBOX_LEASE_MS=%ld\n", c.lease_ms);
    std::printf("OUTBOX_HANDLER_TIMEOUT_MS=%ld\n", c.handler_timeout_ms);
    std::printf("OUTBOX_SHUTDOWN_TIMEOUT_MS=%ld\n", c.shutdown_timeout_ms);
    std::printf("OUTBOX_WORKER_MAX_EVENTS=%ld\n", c.worker_max_events);
    std::printf("OUTBOX_WORKER_MEMORY_MB=%ld\n", c.worker_memory_mb);
    std::printf("OUTBOX_RETENTION_HOURS=%ld\n", c.retention_hours);
    std::printf("OUTBOX_HANDLERS=%s\n", handlers.c_str());
    std::printf("OUTBOX_HTTP_HOST=%s\n", c.http_host.c_str());
    std::printf("OUTBOX_HTTP_PORT=%d%s\n", c.http_port, c.http_port == 0 ? " (disabled)" : "");
    std::printf("OUTBOX_DLQ_ALERT_THRESHOLD=%ld\n", c.dlq_alert_threshold);
    std::printf("OUTBOX_METRICS_LOG_INTERVAL_MS=%ld\n", c.metrics_log_interval_ms);
    std::printf("OUTBOX_INSTANCE_ID=%s\n", c.instance_id.c_str());
    std::printf("LOG_LEVEL=%s\n", to_string(c.log_level));
    std::printf("LOG_FORMAT=%s\n", c.log_format == LogFormat::json ? "json" : "text");
    std::printf("SERVICE_NAME=%s\n", c.service_name.c_str());
    std::printf("OUTBOX_ORDERING_ON_DEAD_LETTER=%s\n", to_string(c.ordering_on_dead_letter));
    return kExitOk;
}

} // namespace outbox::cli
