// `outbox-worker stats`: counts by status, the DLQ size and the oldest due event's age.
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/queries.h"
#include "common/json.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace outbox::cli {

const char* const kStatsUsage = R"(usage: outbox-worker stats [--json]

Prints the number of "Outbox" rows by status, the number of dead-lettered events and the age of
the oldest due event (PENDING and not waiting for a retry), in seconds.

  --json    one JSON object: {"pending", "processing", "completed", "failed", "total", "dlq",
            "oldestDueAgeSeconds" (null when nothing is due)}

"completed" counts rows whose status is COMPLETED. Instances running with
OUTBOX_ON_COMPLETE=delete delete a row when its event succeeds: their deliveries are counted by
the service's metric outbox_events_completed_total, and every event stays in "EventLog".

Environment: DATABASE_URL (required).
)";

namespace {

struct Stats {
    long long pending = 0;
    long long processing = 0;
    long long completed = 0;
    long long failed = 0;
    long long dlq = 0;
    std::optional<double> oldest_due_age_s;

    long long total() const { return pending + processing + completed + failed; }
};

bool read_stats(PGconn* conn, Stats& stats, std::string& error) {
    PgResult res = pg_exec(conn, sql::kStats);
    if (!res.ok()) {
        error = res.error();
        return false;
    }
    auto number = [&](int col) {
        return std::atoll(res.value(0, col).c_str());
    };
    stats.pending = number(0);
    stats.processing = number(1);
    stats.completed = number(2);
    stats.failed = number(3);
    stats.dlq = number(4);
    if (!res.is_null(0, 5)) {
        stats.oldest_due_age_s = std::max(0.0, std::atof(res.value(0, 5).c_str()));
    }
    return true;
}

void print_json(const Stats& s) {
    Json object(cJSON_CreateObject());
    cJSON_AddNumberToObject(object.get(), "pending", static_cast<double>(s.pending));
    cJSON_AddNumberToObject(object.get(), "processing", static_cast<double>(s.processing));
    cJSON_AddNumberToObject(object.get(), "completed", static_cast<double>(s.completed));
    cJSON_AddNumberToObject(object.get(), "failed", static_cast<double>(s.failed));
    cJSON_AddNumberToObject(object.get(), "total", static_cast<double>(s.total()));
    cJSON_AddNumberToObject(object.get(), "dlq", static_cast<double>(s.dlq));
    if (s.oldest_due_age_s) {
        // Milliseconds are as precise as an operator needs, and keep the number short.
        double rounded =
            static_cast<double>(static_cast<long long>(*s.oldest_due_age_s * 1000)) / 1000;
        cJSON_AddNumberToObject(object.get(), "oldestDueAgeSeconds", rounded);
    } else {
        cJSON_AddNullToObject(object.get(), "oldestDueAgeSeconds");
    }
    std::printf("%s\n", json_print(object.get()).c_str());
}

void print_table(const Stats& s) {
    std::printf("pending     %lld\n", s.pending);
    std::printf("processing  %lld\n", s.processing);
    std::printf("completed   %lld\n", s.completed);
    std::printf("failed      %lld\n", s.failed);
    std::printf("total       %lld\n", s.total());
    std::printf("dlq         %lld\n", s.dlq);
    if (s.oldest_due_age_s) {
        std::printf("oldest due  %.1f s\n", *s.oldest_due_age_s);
    } else {
        std::printf("oldest due  none\n");
    }
}

} // namespace

int stats_command(const std::vector<std::string>& args) {
    ParseResult parsed = parse_args(args, {{"json", false}});
    if (!parsed.error.empty()) {
        return usage_error("stats", parsed.error, kStatsUsage);
    }
    if (parsed.args.help) {
        std::fputs(kStatsUsage, stdout);
        return kExitOk;
    }
    int exit_code = kExitOk;
    std::optional<Session> session = open_session("stats", SchemaNeed::current, exit_code);
    if (!session) {
        return exit_code;
    }
    Stats stats;
    std::string error;
    if (!read_stats(session->conn.get(), stats, error)) {
        print_error("stats", error);
        return kExitFailure;
    }
    if (parsed.args.has("json")) {
        print_json(stats);
    } else {
        print_table(stats);
    }
    return kExitOk;
}

} // namespace outbox::cli
