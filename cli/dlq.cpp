// `outbox-worker dlq list|retry|skip|purge`: the dead-letter queue ("DlqEventLog") for operators.
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/queries.h"
#include "common/json.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace outbox::cli {

const char* const kDlqUsage =
    R"(usage: outbox-worker dlq list [--type TYPE] [--tenant ID] [--limit N] [--json]
       outbox-worker dlq retry DLQ_ID... | --all [--type TYPE]
       outbox-worker dlq skip DLQ_ID...
       outbox-worker dlq purge --older-than DURATION | --all

list    the dead-lettered events, newest first, as a table (the failure reason cut short; an
        ORDERING KEY column when an entry has one) or, with --json, as a JSON array of objects
        with id, originalId, eventKey, eventType, tenantId, projectId, orderingKey (null when
        the event was unordered), retryCount, failedAt and the whole failureReason.
        --limit N: at most N entries (default 50).
retry   gives each entry a new PENDING "Outbox" row, due now with a fresh attempt budget, and
        removes it from the queue, in one transaction per entry; prints "<dlq id> -> <outbox id>".
        An entry that still blocks its ordering key goes back to the head of the key, before
        the events that waited, and runs only the subscribers that had not succeeded.
        --all retries every entry (of --type TYPE). An unknown id is reported and the others are
        still retried; the exit code is then 1.
skip    releases the ordering key that each entry's event blocks, so that the later events of
        the key continue without it; the entry stays in the queue (retry or purge it later).
        Prints "<dlq id>: released key KEY", or "<dlq id>: did not block a key" when its event
        was unordered or its key had moved on already. An unknown id is reported and the others
        are still processed; the exit code is then 1.
purge   deletes entries that failed longer ago than DURATION (90s, 30m, 12h, 7d, 2w), or all of
        them with --all; prints how many.

Environment: DATABASE_URL (required).
)";

namespace {

constexpr int kReasonColumnWidth = 60;

int dlq_list(Session& session, const ParsedArgs& a, long long limit) {
    PgResult res = pg_exec_params(session.conn.get(), sql::kDlqList,
                                  {a.value("type"), a.value("tenant"), std::to_string(limit)});
    if (!res.ok()) {
        print_error("dlq list", res.error());
        return kExitFailure;
    }
    if (a.has("json")) {
        Json array(cJSON_CreateArray());
        for (int row = 0; row < res.rows(); ++row) {
            cJSON* item = cJSON_CreateObject();
            cJSON_AddStringToObject(item, "id", res.value(row, 0).c_str());
            cJSON_AddStringToObject(item, "originalId", res.value(row, 1).c_str());
            cJSON_AddStringToObject(item, "eventKey", res.value(row, 7).c_str());
            cJSON_AddStringToObject(item, "eventType", res.value(row, 2).c_str());
            cJSON_AddStringToObject(item, "tenantId", res.value(row, 3).c_str());
            for (auto [name, col] : {std::pair{"projectId", 8}, std::pair{"orderingKey", 9}}) {
                if (res.is_null(row, col)) {
                    cJSON_AddNullToObject(item, name);
                } else {
                    cJSON_AddStringToObject(item, name, res.value(row, col).c_str());
                }
            }
            cJSON_AddNumberToObject(item, "retryCount", std::atof(res.value(row, 4).c_str()));
            cJSON_AddStringToObject(item, "failedAt", res.value(row, 5).c_str());
            cJSON_AddStringToObject(item, "failureReason", res.value(row, 6).c_str());
            cJSON_AddItemToArray(array.get(), item);
        }
        std::printf("%s\n", json_print(array.get()).c_str());
        return kExitOk;
    }
    if (res.rows() == 0) {
        std::printf("no dead-lettered events\n");
        return kExitOk;
    }
    // The ordering key gets a column only when some entry has one, so that the table of a
    // deployment without ordering stays as narrow as it was.
    bool any_ordering_key = false;
    for (int row = 0; row < res.rows(); ++row) {
        any_ordering_key = any_ordering_key || !res.is_null(row, 9);
    }
    std::vector<std::string> headers = {"ID", "ORIGINAL ID", "TYPE", "TENANT"};
    if (any_ordering_key) {
        headers.push_back("ORDERING KEY");
    }
    for (const char* h : {"RETRIES", "FAILED AT", "REASON"}) {
        headers.push_back(h);
    }
    std::vector<std::vector<std::string>> rows;
    for (int row = 0; row < res.rows(); ++row) {
        std::vector<std::string> cells = {res.value(row, 0), res.value(row, 1), res.value(row, 2),
                                          res.value(row, 3)};
        if (any_ordering_key) {
            cells.push_back(res.is_null(row, 9) ? "-" : res.value(row, 9));
        }
        cells.push_back(res.value(row, 4));
        cells.push_back(res.value(row, 5));
        cells.push_back(shorten(res.value(row, 6), kReasonColumnWidth));
        rows.push_back(std::move(cells));
    }
    print_table(headers, rows);
    return kExitOk;
}

int dlq_retry(Session& session, const ParsedArgs& a) {
    std::vector<std::string> ids = a.positionals;
    if (a.has("all")) {
        PgResult res = pg_exec_params(session.conn.get(), sql::kDlqIds, {a.value("type")});
        if (!res.ok()) {
            print_error("dlq retry", res.error());
            return kExitFailure;
        }
        for (int row = 0; row < res.rows(); ++row) {
            ids.push_back(res.value(row, 0));
        }
        if (ids.empty()) {
            std::fprintf(stderr, "%s dlq retry: nothing to retry\n", kProgram);
            return kExitOk;
        }
    }
    // One transaction per entry (the statement's own): a bad id costs nothing to the others.
    int exit_code = kExitOk;
    for (const auto& id : ids) {
        PgResult res = pg_exec_params(session.conn.get(), sql::kDlqRetry, {id});
        if (!res.ok()) {
            if (res.sqlstate() == "P0002") {
                print_error("dlq retry", "no dead-letter entry with id \"" + id + "\"");
            } else {
                print_error("dlq retry", "retrying \"" + id + "\" failed: " + res.error());
            }
            exit_code = kExitFailure;
            continue;
        }
        std::printf("%s -> %s\n", id.c_str(), res.value(0, 0).c_str());
        std::fflush(stdout);
    }
    return exit_code;
}

// Like retry, one statement (and so one transaction) per entry: an unknown id costs the others
// nothing.
int dlq_skip(Session& session, const ParsedArgs& a) {
    int exit_code = kExitOk;
    for (const auto& id : a.positionals) {
        PgResult res = pg_exec_params(session.conn.get(), sql::kDlqSkip, {id});
        if (!res.ok()) {
            if (res.sqlstate() == "P0002") {
                print_error("dlq skip", "no dead-letter entry with id \"" + id + "\"");
            } else {
                print_error("dlq skip", "skipping \"" + id + "\" failed: " + res.error());
            }
            exit_code = kExitFailure;
            continue;
        }
        if (res.value(0, 0) == "t") {
            std::printf("%s: released key %s\n", id.c_str(), res.value(0, 1).c_str());
        } else if (res.is_null(0, 1)) {
            std::printf("%s: did not block a key (the event has no ordering key)\n", id.c_str());
        } else {
            std::printf("%s: did not block a key (key %s had moved on already)\n", id.c_str(),
                        res.value(0, 1).c_str());
        }
        std::fflush(stdout);
    }
    return exit_code;
}

// `older_than_s`: nullopt purges everything.
int dlq_purge(Session& session, std::optional<long long> older_than_s) {
    PgResult res = older_than_s ? pg_exec_params(session.conn.get(), sql::kDlqPurgeOlderThan,
                                                 {std::to_string(*older_than_s)})
                                : pg_exec(session.conn.get(), sql::kDlqPurgeAll);
    if (!res.ok()) {
        print_error("dlq purge", res.error());
        return kExitFailure;
    }
    std::printf("deleted %s dead-letter entries\n", PQcmdTuples(res.get()));
    return kExitOk;
}

} // namespace

int dlq_command(const std::vector<std::string>& args) {
    if (args.empty()) {
        return usage_error("dlq", "which one: list, retry, skip or purge?", kDlqUsage);
    }
    const std::string& action = args[0];
    if (action == "--help" || action == "-h" || action == "help") {
        std::fputs(kDlqUsage, stdout);
        return kExitOk;
    }
    std::vector<std::string> rest(args.begin() + 1, args.end());
    ParseResult parsed;
    std::string command = "dlq " + action;
    if (action == "list") {
        parsed =
            parse_args(rest, {{"type", true}, {"tenant", true}, {"limit", true}, {"json", false}});
    } else if (action == "retry") {
        parsed = parse_args(rest, {{"all", false}, {"type", true}}, true);
    } else if (action == "skip") {
        parsed = parse_args(rest, {}, true);
    } else if (action == "purge") {
        parsed = parse_args(rest, {{"older-than", true}, {"all", false}});
    } else {
        return usage_error("dlq", "unknown action \"" + action + "\"", kDlqUsage);
    }
    if (!parsed.error.empty()) {
        return usage_error(command.c_str(), parsed.error, kDlqUsage);
    }
    const ParsedArgs& a = parsed.args;
    if (a.help) {
        std::fputs(kDlqUsage, stdout);
        return kExitOk;
    }
    if (action == "retry") {
        if (a.has("all") == !a.positionals.empty()) {
            return usage_error(command.c_str(), "give either DLQ ids or --all", kDlqUsage);
        }
        if (a.has("type") && !a.has("all")) {
            return usage_error(command.c_str(), "--type goes with --all", kDlqUsage);
        }
    }
    if (action == "skip" && a.positionals.empty()) {
        return usage_error(command.c_str(), "give the DLQ ids to skip", kDlqUsage);
    }
    if (action == "purge" && a.has("all") == a.has("older-than")) {
        return usage_error(command.c_str(), "give either --older-than DURATION or --all",
                           kDlqUsage);
    }
    // Option values are checked before connecting, so that a usage error never needs a database.
    long long limit = 50;
    if (auto text = a.value("limit")) {
        auto n = parse_integer(*text, 1, 1000000);
        if (!n) {
            return usage_error(command.c_str(),
                               "--limit \"" + *text + "\": allowed: an integer from 1 to 1000000",
                               kDlqUsage);
        }
        limit = *n;
    }
    std::optional<long long> older_than_s;
    if (auto text = a.value("older-than")) {
        older_than_s = parse_duration_seconds(*text);
        if (!older_than_s) {
            return usage_error(command.c_str(),
                               "--older-than \"" + *text +
                                   "\": allowed: a number and a unit, as in 90s, 30m, 12h, 7d, 2w",
                               kDlqUsage);
        }
    }

    int exit_code = kExitOk;
    std::optional<Session> session = open_session(command.c_str(), SchemaNeed::current, exit_code);
    if (!session) {
        return exit_code;
    }
    if (action == "list") {
        return dlq_list(*session, a, limit);
    }
    if (action == "retry") {
        return dlq_retry(*session, a);
    }
    if (action == "skip") {
        return dlq_skip(*session, a);
    }
    return dlq_purge(*session, older_than_s);
}

} // namespace outbox::cli
