// `outbox-worker check-config`: everything `run` would validate before starting, without starting.
#include "cli/args.h"
#include "cli/commands.h"
#include "worker/handlers_file.h"
#include "worker/sink.h"

#include <algorithm>
#include <cstdio>
#include <memory>

namespace outbox::cli {

const char* const kCheckConfigUsage = R"(usage: outbox-worker check-config [--connect]

Validates every variable of the environment (SPEC section 3) and the handlers file named by
OUTBOX_HANDLERS, then prints the effective configuration, with the password of DATABASE_URL
masked. Connects to nothing. Exits 0 when everything is valid, 78 with a one-line error when not.

  --connect   also reach the message broker of every kafka, nats, amqp and redis subscriber
              (each within its timeout, at most 10 s), report each on its own line, and exit 1
              when one cannot be reached or lacks its stream, exchange or topic
)";

namespace {

// The longest a broker check may take: an operator waits for this command, and a broker that
// needs longer to answer a connection is as good as down.
constexpr long kMaxConnectCheckMs = 10000;

// `--connect`: every broker subscriber's sink, made here (this process forks nothing), checked
// one after the other. Returns whether every one answered.
bool check_broker_connections(const std::vector<Subscriber>& subscribers) {
    bool all_ok = true;
    size_t brokers = 0;
    for (const Subscriber& subscriber : subscribers) {
        if (!subscriber.broker) {
            continue;
        }
        ++brokers;
        const BrokerSpec& spec = *subscriber.broker;
        std::unique_ptr<Sink> sink = spec.make_sink();
        const std::optional<std::string> problem =
            sink->check(std::min(subscriber.timeout_ms, kMaxConnectCheckMs));
        if (problem) {
            all_ok = false;
            std::printf("connect %s (%s): FAILED: %s\n", subscriber.name.c_str(),
                        spec.description.c_str(), problem->c_str());
        } else {
            std::printf("connect %s (%s): ok\n", subscriber.name.c_str(), spec.description.c_str());
        }
    }
    if (brokers == 0) {
        std::printf("connect: no kafka, nats, amqp or redis subscriber to reach\n");
    }
    return all_ok;
}

} // namespace

int check_config_command(const std::vector<std::string>& args) {
    ParseResult parsed = parse_args(args, {{"connect", false}});
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
    std::vector<Subscriber> subscribers;
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
                        std::to_string(s.timeout_ms) + " ms" +
                        (s.broker ? ", " + s.broker->description : std::string()) + ")";
        }
        subscribers = std::move(*file.subscribers);
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
    // The token itself is a secret: only whether it is set.
    std::printf("OUTBOX_ADMIN_TOKEN=%s\n",
                c.admin_token.empty() ? "unset (the console is read-only)"
                                      : "set, not shown (the console's actions are enabled)");
    if (parsed.args.has("connect")) {
        std::fflush(stdout);
        return check_broker_connections(subscribers) ? kExitOk : kExitFailure;
    }
    return kExitOk;
}

} // namespace outbox::cli
