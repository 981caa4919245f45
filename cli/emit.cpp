// `outbox-worker emit`: synthetic events through outbox::EventWriter, for trials, demos and
// benchmarks. With --count, events go out in batches of kBatchSize, each batch one statement in
// one transaction, which is what makes 100 000 events a matter of seconds.
#include "cli/args.h"
#include "cli/commands.h"
#include "common/json.h"
#include <outbox/outbox.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <sstream>

namespace outbox::cli {

const char* const kEmitUsage = R"(usage: outbox-worker emit --type TYPE [options]

Writes events through the writer API (one "EventLog" row plus one "Outbox" row each) and prints
the Outbox id of each, one a line; an event whose key already existed is printed as
"<id> duplicate" and written no second time.

  --type TYPE            event type (required)
  --tenant ID            tenant id (default: "default")
  --key KEY              event key (default: a generated unique key); with --count, the prefix
                         of the keys KEY-1 ... KEY-N
  --payload JSON         the payload: JSON text, @FILE to read it from FILE, or - for stdin
                         (default: {})
  --project ID           project id
  --correlation-id ID    correlation id
  --metadata JSON        metadata (JSON text)
  --max-retries N        attempts before the dead-letter queue (default: OUTBOX_MAX_RETRIES)
  --ordering-key KEY     the ordering key: events of one key are delivered one at a time, in
                         the order in which their transactions committed (default: what the
                         database's ordering rule derives, if any; `outbox-worker ordering
                         --help`); with --count, every event gets KEY
  --ordering-keys N      with --count and --ordering-key: spread the events over the N keys
                         KEY-1 ... KEY-N in turn (event i gets KEY-((i-1) mod N + 1)), for
                         ordered load on many keys
  --count N              write N events with unique keys, in transactions of 1000; shows
                         progress when stderr is a terminal and a summary at the end

Environment: DATABASE_URL (required). Exit codes: 0 written, 1 failure, 64 usage, 78 config.
)";

namespace {

constexpr size_t kBatchSize = 1000;
constexpr long long kMaxCount = 100000000;

std::string generated_key_prefix() {
    std::random_device random;
    char buf[64];
    auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
    std::snprintf(buf, sizeof buf, "emit-%llx-%d-%08x", static_cast<unsigned long long>(now_ms),
                  static_cast<int>(getpid()), random());
    return buf;
}

// The payload argument: JSON text, @FILE or - (stdin). nullopt after printing the problem.
std::optional<std::string> read_payload(const std::string& arg) {
    if (arg == "-") {
        return std::string(std::istreambuf_iterator<char>(std::cin), {});
    }
    if (!arg.empty() && arg[0] == '@') {
        std::ifstream in(arg.substr(1), std::ios::binary);
        if (!in) {
            print_error("emit", "cannot read the payload file " + arg.substr(1));
            return std::nullopt;
        }
        std::ostringstream text;
        text << in.rdbuf();
        return text.str();
    }
    return arg;
}

struct EmitOptions {
    NewEvent base;
    std::string key_prefix;
    long long count = 0;         // 0: one event, with base.eventKey as it is
    long long ordering_keys = 0; // with count: base.orderingKey-1 ... -N in turn; 0: all the same
};

void append_result(std::string& out, const WrittenEvent& written) {
    out += written.outboxId;
    if (written.duplicate) {
        out += " duplicate";
    }
    out += '\n';
}

int emit_one(Session& session, const EmitOptions& options) {
    EventWriter writer(session.conn.get());
    try {
        std::string line;
        append_result(line, writer.write(options.base));
        std::fputs(line.c_str(), stdout);
    } catch (const WriteError& e) {
        print_error("emit", e.what());
        return kExitFailure;
    }
    return kExitOk;
}

int emit_many(Session& session, const EmitOptions& options) {
    EventWriter writer(session.conn.get());
    const bool progress = isatty(STDERR_FILENO) != 0;
    const auto started = std::chrono::steady_clock::now();
    long long written = 0;
    long long duplicates = 0;
    std::vector<NewEvent> batch;
    std::string out;
    while (written < options.count) {
        size_t size = static_cast<size_t>(
            std::min<long long>(static_cast<long long>(kBatchSize), options.count - written));
        batch.assign(size, options.base);
        for (size_t i = 0; i < size; ++i) {
            long long n = written + static_cast<long long>(i); // 0-based over the whole run
            batch[i].eventKey = options.key_prefix + "-" + std::to_string(n + 1);
            if (options.ordering_keys > 0) {
                batch[i].orderingKey =
                    *options.base.orderingKey + "-" + std::to_string(n % options.ordering_keys + 1);
            }
        }
        // Each batch is its own transaction: a failure keeps what earlier batches wrote, and the
        // summary says how much that was.
        PgResult begin = pg_exec(session.conn.get(), "BEGIN");
        try {
            if (!begin.ok()) {
                throw WriteError("BEGIN failed: " + begin.error());
            }
            std::vector<WrittenEvent> results = writer.write_batch(batch);
            PgResult commit = pg_exec(session.conn.get(), "COMMIT");
            if (!commit.ok()) {
                throw WriteError("COMMIT failed: " + commit.error());
            }
            out.clear();
            for (const auto& r : results) {
                append_result(out, r);
                duplicates += r.duplicate ? 1 : 0;
            }
            std::fwrite(out.data(), 1, out.size(), stdout);
        } catch (const WriteError& e) {
            PgResult rollback = pg_exec(session.conn.get(), "ROLLBACK");
            (void)rollback;
            std::fflush(stdout);
            if (progress) {
                std::fputs("\n", stderr);
            }
            print_error("emit", std::string(e.what()) + " (" + std::to_string(written) + " of " +
                                    std::to_string(options.count) +
                                    " events were written before the failure)");
            return kExitFailure;
        }
        written += static_cast<long long>(size);
        if (progress) {
            std::fprintf(stderr, "\remitted %lld/%lld (%lld%%)", written, options.count,
                         written * 100 / options.count);
        }
    }
    std::fflush(stdout);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (progress) {
        std::fputs("\n", stderr);
    }
    std::fprintf(stderr, "emitted %lld events in %.2f s (%.0f/s)\n", written, seconds,
                 seconds > 0 ? static_cast<double>(written) / seconds : 0.0);
    if (duplicates > 0) {
        std::fprintf(stderr, "%lld of them were duplicates and wrote nothing\n", duplicates);
    }
    return kExitOk;
}

} // namespace

int emit_command(const std::vector<std::string>& args) {
    ParseResult parsed = parse_args(args, {{"type", true},
                                           {"tenant", true},
                                           {"key", true},
                                           {"payload", true},
                                           {"project", true},
                                           {"correlation-id", true},
                                           {"metadata", true},
                                           {"max-retries", true},
                                           {"ordering-key", true},
                                           {"ordering-keys", true},
                                           {"count", true}});
    if (!parsed.error.empty()) {
        return usage_error("emit", parsed.error, kEmitUsage);
    }
    const ParsedArgs& a = parsed.args;
    if (a.help) {
        std::fputs(kEmitUsage, stdout);
        return kExitOk;
    }
    EmitOptions options;
    std::optional<std::string> type = a.value("type");
    if (!type || type->empty()) {
        return usage_error("emit", "--type is required", kEmitUsage);
    }
    options.base.eventType = *type;
    options.base.tenantId = a.value("tenant").value_or("default");
    if (options.base.tenantId.empty()) {
        return usage_error("emit", "--tenant must not be empty", kEmitUsage);
    }
    options.base.projectId = a.value("project");
    options.base.correlationId = a.value("correlation-id");
    if (auto count = a.value("count")) {
        auto n = parse_integer(*count, 1, kMaxCount);
        if (!n) {
            return usage_error("emit",
                               "--count \"" + *count + "\": allowed: an integer from 1 to " +
                                   std::to_string(kMaxCount),
                               kEmitUsage);
        }
        options.count = *n;
    }
    if (auto ordering_key = a.value("ordering-key")) {
        if (ordering_key->empty()) {
            return usage_error("emit", "--ordering-key must not be empty", kEmitUsage);
        }
        options.base.orderingKey = *ordering_key;
    }
    if (auto keys = a.value("ordering-keys")) {
        if (!options.base.orderingKey || options.count == 0) {
            return usage_error("emit", "--ordering-keys goes with --count and --ordering-key",
                               kEmitUsage);
        }
        auto n = parse_integer(*keys, 1, kMaxCount);
        if (!n) {
            return usage_error("emit",
                               "--ordering-keys \"" + *keys + "\": allowed: an integer from 1 to " +
                                   std::to_string(kMaxCount),
                               kEmitUsage);
        }
        options.ordering_keys = *n;
    }
    if (auto retries = a.value("max-retries")) {
        auto n = parse_integer(*retries, 1, 1000);
        if (!n) {
            return usage_error(
                "emit", "--max-retries \"" + *retries + "\": allowed: an integer from 1 to 1000",
                kEmitUsage);
        }
        options.base.maxRetries = static_cast<int>(*n);
    }
    if (auto key = a.value("key")) {
        if (key->empty()) {
            return usage_error("emit", "--key must not be empty", kEmitUsage);
        }
        options.key_prefix = *key;
    } else {
        options.key_prefix = generated_key_prefix();
    }
    options.base.eventKey = options.key_prefix;
    if (auto payload_arg = a.value("payload")) {
        std::optional<std::string> payload = read_payload(*payload_arg);
        if (!payload) {
            return kExitFailure;
        }
        if (!json_parse(*payload)) {
            return usage_error("emit", "--payload is not valid JSON", kEmitUsage);
        }
        options.base.payload = std::move(*payload);
    }
    if (auto metadata = a.value("metadata")) {
        if (!json_parse(*metadata)) {
            return usage_error("emit", "--metadata is not valid JSON", kEmitUsage);
        }
        options.base.metadata = *metadata;
    }

    int exit_code = kExitOk;
    std::optional<Session> session = open_session("emit", SchemaNeed::current, exit_code);
    if (!session) {
        return exit_code;
    }
    // OUTBOX_MAX_RETRIES is the attempt budget of events this service writes (SPEC 3).
    if (!options.base.maxRetries) {
        options.base.maxRetries = session->config.max_retries;
    }
    return options.count == 0 ? emit_one(*session, options) : emit_many(*session, options);
}

} // namespace outbox::cli
