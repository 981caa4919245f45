// `outbox-worker ordering set|show|blocked`: the database-wide ordering rule and the ordering keys
// that a failing event holds up (SPEC 2a). The rule's grammar and its storage belong to the
// migration's functions; this command passes the operator's words through and reports what the
// database answered, so that the command line and SQL callers can never disagree on a rule.
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/queries.h"
#include "common/json.h"

#include <cstdio>
#include <cstdlib>

namespace outbox::cli {

const char* const kOrderingUsage =
    R"(usage: outbox-worker ordering set RULE
       outbox-worker ordering show
       outbox-worker ordering blocked [--json]

Events with the same ordering key are delivered one at a time, in the order in which their
transactions committed. A writer may set the key itself (the ordering key argument of
outbox_write_event, outbox::NewEvent::orderingKey, `emit --ordering-key`, or the "Outbox" column
"orderingKey"); for a row inserted without one, the database-wide rule derives it.

set      stores RULE for rows inserted from now on (rows already written keep their key) and
         prints the rule as stored. RULE is one of:
           tenantId                     the event's "tenantId"
           eventType                    the event's "eventType"
           payload.FIELD[.FIELD...]     a field of the payload; nested fields joined by dots
           metadata.FIELD[.FIELD...]    a field of the metadata of the event's "EventLog" row
           none                         no rule: only keys that writers set order events
         A rule the database does not accept is a usage error (exit 64) with its reason.
show     prints the rule and when it was set, or "none".
blocked  lists the ordering keys whose head event has failed and is not delivered yet: the key,
         the head event's Outbox id, its status, the reason (its last error), since when, and
         how many events of the key wait behind it. A key whose head was dead-lettered stays
         blocked until `outbox-worker dlq retry ID` or `outbox-worker dlq skip ID` (unless the
         service runs with OUTBOX_ORDERING_ON_DEAD_LETTER=skip).
         --json: a JSON array of objects with orderingKey, headId, headStatus, reason,
         blockedSince and waiting; [] when nothing is blocked.

Environment: DATABASE_URL (required).
)";

namespace {

constexpr int kReasonColumnWidth = 60;

// "42s", "5m07s", "3h12m", "2d04h": how long a key has been blocked, at a glance.
std::string short_duration(double seconds) {
    long long s = seconds > 0 ? static_cast<long long>(seconds) : 0;
    char buf[32];
    if (s < 60) {
        std::snprintf(buf, sizeof buf, "%llds", s);
    } else if (s < 3600) {
        std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
    } else if (s < 86400) {
        std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
    } else {
        std::snprintf(buf, sizeof buf, "%lldd%02lldh", s / 86400, (s % 86400) / 3600);
    }
    return buf;
}

int ordering_set(Session& session, const std::string& rule) {
    PgResult res = pg_exec_params(session.conn.get(), sql::kOrderingSet, {rule});
    if (!res.ok()) {
        // invalid_parameter_value is the function's verdict on the rule: the operator's argument
        // was wrong, which is a usage error, and the database's message says why.
        if (res.sqlstate() == "22023") {
            return usage_error("ordering set", one_line(res.error()), kOrderingUsage);
        }
        print_error("ordering set", res.error());
        return kExitFailure;
    }
    std::string stored = res.value(0, 0);
    if (stored == "none") {
        std::printf("ordering rule: none (rows inserted from now on get an ordering key only "
                    "from their writer)\n");
    } else {
        std::printf("ordering rule: %s (applies to rows inserted from now on without an "
                    "ordering key)\n",
                    stored.c_str());
    }
    return kExitOk;
}

int ordering_show(Session& session) {
    PgResult res = pg_exec(session.conn.get(), sql::kOrderingShow);
    if (!res.ok()) {
        print_error("ordering show", res.error());
        return kExitFailure;
    }
    if (res.rows() == 0) {
        std::printf("none\n");
        return kExitOk;
    }
    if (res.is_null(0, 1)) {
        std::printf("%s\n", res.value(0, 0).c_str());
    } else {
        std::printf("%s (set %s)\n", res.value(0, 0).c_str(), res.value(0, 1).c_str());
    }
    return kExitOk;
}

int ordering_blocked(Session& session, bool json) {
    PgResult res = pg_exec(session.conn.get(), sql::kOrderingBlocked);
    if (!res.ok()) {
        print_error("ordering blocked", res.error());
        return kExitFailure;
    }
    if (json) {
        Json array(cJSON_CreateArray());
        auto add_text = [&](cJSON* item, const char* name, int row, int col) {
            if (res.is_null(row, col)) {
                cJSON_AddNullToObject(item, name);
            } else {
                cJSON_AddStringToObject(item, name, res.value(row, col).c_str());
            }
        };
        for (int row = 0; row < res.rows(); ++row) {
            cJSON* item = cJSON_CreateObject();
            add_text(item, "orderingKey", row, 0);
            add_text(item, "headId", row, 1);
            add_text(item, "headStatus", row, 2);
            add_text(item, "reason", row, 3);
            add_text(item, "blockedSince", row, 4);
            cJSON_AddNumberToObject(item, "waiting", std::atof(res.value(row, 5).c_str()));
            cJSON_AddItemToArray(array.get(), item);
        }
        std::printf("%s\n", json_print(array.get()).c_str());
        return kExitOk;
    }
    if (res.rows() == 0) {
        std::printf("no blocked ordering keys\n");
        return kExitOk;
    }
    std::vector<std::vector<std::string>> rows;
    for (int row = 0; row < res.rows(); ++row) {
        std::string since = "-";
        if (!res.is_null(row, 4)) {
            since = res.value(row, 4) + " (" +
                    short_duration(std::atof(res.value(row, 6).c_str())) + ")";
        }
        // The view joins the head row loosely: an operator may have deleted it meanwhile.
        auto cell = [&](int col) {
            return res.is_null(row, col) ? std::string("-") : res.value(row, col);
        };
        rows.push_back({res.value(row, 0), cell(1), cell(2), since, res.value(row, 5),
                        shorten(cell(3), kReasonColumnWidth)});
    }
    print_table({"KEY", "HEAD EVENT", "STATUS", "BLOCKED SINCE", "WAITING", "REASON"}, rows);
    return kExitOk;
}

} // namespace

int ordering_command(const std::vector<std::string>& args) {
    if (args.empty()) {
        return usage_error("ordering", "which one: set, show or blocked?", kOrderingUsage);
    }
    const std::string& action = args[0];
    if (action == "--help" || action == "-h" || action == "help") {
        std::fputs(kOrderingUsage, stdout);
        return kExitOk;
    }
    std::vector<std::string> rest(args.begin() + 1, args.end());
    std::string command = "ordering " + action;
    ParseResult parsed;
    if (action == "set") {
        parsed = parse_args(rest, {}, true);
    } else if (action == "show") {
        parsed = parse_args(rest, {});
    } else if (action == "blocked") {
        parsed = parse_args(rest, {{"json", false}});
    } else {
        return usage_error("ordering", "unknown action \"" + action + "\"", kOrderingUsage);
    }
    if (!parsed.error.empty()) {
        return usage_error(command.c_str(), parsed.error, kOrderingUsage);
    }
    const ParsedArgs& a = parsed.args;
    if (a.help) {
        std::fputs(kOrderingUsage, stdout);
        return kExitOk;
    }
    if (action == "set" && a.positionals.size() != 1) {
        return usage_error(command.c_str(),
                           a.positionals.empty()
                               ? "give the RULE (or none)"
                               : "give one RULE, not " + std::to_string(a.positionals.size()),
                           kOrderingUsage);
    }

    int exit_code = kExitOk;
    std::optional<Session> session = open_session(command.c_str(), SchemaNeed::current, exit_code);
    if (!session) {
        return exit_code;
    }
    if (action == "set") {
        return ordering_set(*session, a.positionals[0]);
    }
    if (action == "show") {
        return ordering_show(*session);
    }
    return ordering_blocked(*session, a.has("json"));
}

} // namespace outbox::cli
