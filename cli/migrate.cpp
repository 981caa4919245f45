// `outbox-worker migrate` (SPEC 1).
#include "cli/args.h"
#include "cli/commands.h"
#include "common/migrations.h"

#include <cstdio>

namespace outbox::cli {

const char* const kMigrateUsage = R"(usage: outbox-worker migrate

Creates the Calibr event-bus schema on an empty database, or adds what outbox-worker needs to an
existing one (additively: nothing is rewritten or dropped). Prints the migrations it applied and
the final schema version. Safe to run again, and from several instances at once.

Environment: DATABASE_URL (required), LOG_LEVEL, LOG_FORMAT.
)";

int migrate_command(const std::vector<std::string>& args) {
    ParseResult parsed = parse_args(args, {});
    if (!parsed.error.empty()) {
        return usage_error("migrate", parsed.error, kMigrateUsage);
    }
    if (parsed.args.help) {
        std::fputs(kMigrateUsage, stdout);
        return kExitOk;
    }
    int exit_code = kExitOk;
    std::optional<Session> session = open_session("migrate", SchemaNeed::none, exit_code);
    if (!session) {
        return exit_code;
    }
    MigrateOutcome outcome = migrate(session->conn.get());
    for (const auto& name : outcome.applied) {
        std::printf("applied %s\n", name.c_str());
    }
    if (!outcome.ok) {
        std::fflush(stdout);
        print_error("migrate", outcome.error);
        return kExitFailure;
    }
    if (outcome.applied.empty()) {
        std::printf("schema is up to date at version %d\n", outcome.version);
    } else {
        std::printf("schema version %d\n", outcome.version);
    }
    return kExitOk;
}

} // namespace outbox::cli
