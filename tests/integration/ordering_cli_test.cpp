// Ordering per key from the operator's side (SPEC 2a, 3, 5), black-box: the real binary against a
// private database. `ordering set/show/blocked`, `emit --ordering-key`, the rule applied to rows
// an application inserts with plain SQL, and `dlq skip` and `dlq retry` on a key that the real
// service found blocked by a dead-lettered head.
#include "tests/integration/engine_support.h"

#include "common/json.h"

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <vector>

using namespace outbox::test;

namespace {

// Runs the binary with a clean environment plus `env`, so that nothing of the test's own
// environment (OUTBOX_TEST_PG, a developer's LOG_LEVEL) changes the outcome.
RunResult cli(std::vector<std::string> args, EnvMap env = {}) {
    SpawnOptions options;
    options.args = std::move(args);
    options.env = std::move(env);
    options.inherit_environment = false;
    return run_process(OUTBOX_BINARY, std::move(options), std::chrono::seconds(120));
}

EnvMap db_env(const TestDatabase& db) {
    return {{"DATABASE_URL", db.url()}};
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        out.push_back(line);
    }
    return out;
}

std::string describe(const RunResult& r) {
    return r.status.describe() + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

#define REQUIRE_EXIT(result, code)                                                                 \
    do {                                                                                           \
        INFO(describe(result));                                                                    \
        REQUIRE((result).status.exited_with(code));                                                \
    } while (false)

// `emit` one event and return its Outbox id.
std::string emit(const TestDatabase& db, std::vector<std::string> args) {
    args.insert(args.begin(), "emit");
    RunResult r = cli(args, db_env(db));
    REQUIRE_EXIT(r, 0);
    std::vector<std::string> ids = lines(r.out);
    REQUIRE(ids.size() == 1);
    return ids[0];
}

// The ordering key of an Outbox row, "<null>" for none.
std::string ordering_key(const TestDatabase& db, const std::string& outbox_id) {
    return db.scalar(R"(SELECT coalesce("orderingKey", '<null>') FROM "Outbox" WHERE "id" = ')" +
                     outbox_id + "'");
}

// An event as the Calibr application writes it: its own INSERTs into "EventLog" and "Outbox" in
// one transaction, naming none of the columns the migrations added. `metadata` is SQL ("NULL" or
// a quoted literal).
void insert_like_the_application(const TestDatabase& db, const std::string& id,
                                 const std::string& tenant, const std::string& type,
                                 const std::string& payload, const std::string& metadata = "NULL") {
    db.exec(
        "BEGIN;"
        R"(INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType", "payload", "metadata")
                    VALUES ('evl-)" +
        id + "', 'key-" + id + "', '" + tenant + "', '" + type + "', '" + payload + "', " +
        metadata + ");" +
        R"(INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "updatedAt")
                    VALUES (')" +
        id + "', 'evl-" + id + "', '" + tenant + "', '" + type + "', '" + payload +
        "', now());"
        "COMMIT");
}

std::string dlq_id_of(const TestDatabase& db, const std::string& outbox_id) {
    return db.scalar(R"(SELECT "id" FROM "DlqEventLog" WHERE "originalId" = ')" + outbox_id + "'");
}

} // namespace

TEST_CASE("ordering: help, and usage errors found before connecting", "[cli][ordering]") {
    RunResult top = cli({"--help"});
    REQUIRE_EXIT(top, 0);
    CHECK(top.out.find("  ordering ") != std::string::npos);
    for (std::vector<std::string> args : {std::vector<std::string>{"ordering", "--help"},
                                          {"ordering", "set", "--help"},
                                          {"ordering", "show", "--help"},
                                          {"ordering", "blocked", "--help"},
                                          {"help", "ordering"}}) {
        RunResult help = cli(args);
        INFO(args[1]);
        REQUIRE_EXIT(help, 0);
        CHECK(help.out.rfind("usage: outbox-worker ordering set RULE\n", 0) == 0);
        CHECK(help.out.find("outbox-worker ordering blocked [--json]") != std::string::npos);
        CHECK(help.out.find("metadata.FIELD[.FIELD...]") != std::string::npos);
        CHECK(help.err.empty());
    }
    RunResult dlq_help = cli({"dlq", "skip", "--help"});
    REQUIRE_EXIT(dlq_help, 0);
    CHECK(dlq_help.out.find("outbox-worker dlq skip DLQ_ID...") != std::string::npos);
    RunResult emit_help = cli({"emit", "--help"});
    REQUIRE_EXIT(emit_help, 0);
    CHECK(emit_help.out.find("--ordering-key KEY") != std::string::npos);
    CHECK(emit_help.out.find("--ordering-keys N") != std::string::npos);

    struct Case {
        std::vector<std::string> args;
        const char* message;
    };
    for (const auto& c : std::vector<Case>{
             {{"ordering"}, "which one: set, show or blocked?"},
             {{"ordering", "sort"}, "unknown action \"sort\""},
             {{"ordering", "set"}, "give the RULE (or none)"},
             {{"ordering", "set", "tenantId", "eventType"}, "give one RULE, not 2"},
             {{"ordering", "set", "--rule", "tenantId"}, "unknown option --rule"},
             {{"ordering", "show", "all"}, "unexpected argument \"all\""},
             {{"ordering", "blocked", "--json=yes"}, "--json takes no value"},
             {{"ordering", "blocked", "--limit", "3"}, "unknown option --limit"},
             {{"dlq", "skip"}, "give the DLQ ids to skip"},
             {{"dlq", "skip", "d1", "--all"}, "unknown option --all"},
             {{"emit", "--type", "a", "--ordering-key", ""}, "--ordering-key must not be empty"},
             {{"emit", "--type", "a", "--ordering-keys", "3"},
              "--ordering-keys goes with --count and --ordering-key"},
             {{"emit", "--type", "a", "--count", "4", "--ordering-keys", "3"},
              "--ordering-keys goes with --count and --ordering-key"},
             {{"emit", "--type", "a", "--count", "4", "--ordering-key", "k", "--ordering-keys",
               "0"},
              "--ordering-keys \"0\": allowed: an integer from 1 to"},
         }) {
        std::string joined;
        for (const auto& a : c.args) {
            joined += a + " ";
        }
        INFO(joined);
        // A database that does not exist: a usage error must be found before connecting.
        RunResult r = cli(c.args, {{"DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none"}});
        REQUIRE_EXIT(r, 64);
        CHECK(r.err.find(c.message) != std::string::npos);
        CHECK(r.err.find("usage: outbox-worker") != std::string::npos);
        CHECK(r.out.empty());
    }
}

TEST_CASE("ordering: OUTBOX_ORDERING_ON_DEAD_LETTER is validated, and the schema is required",
          "[cli][ordering]") {
    TestDatabase db;
    for (std::vector<std::string> args : {std::vector<std::string>{"ordering", "show"},
                                          {"dlq", "skip", "d1"},
                                          {"check-config"},
                                          {"run"}}) {
        INFO(args[0]);
        RunResult r =
            cli(args, {{"DATABASE_URL", db.url()}, {"OUTBOX_ORDERING_ON_DEAD_LETTER", "later"}});
        REQUIRE_EXIT(r, 78);
        CHECK(r.err == "outbox-worker: OUTBOX_ORDERING_ON_DEAD_LETTER=\"later\": unknown value; "
                       "allowed: block, skip\n");
        CHECK(r.out.empty());
    }
    RunResult skip = cli({"check-config"},
                         {{"DATABASE_URL", db.url()}, {"OUTBOX_ORDERING_ON_DEAD_LETTER", "skip"}});
    REQUIRE_EXIT(skip, 0);
    CHECK(skip.out.find("OUTBOX_ORDERING_ON_DEAD_LETTER=skip\n") != std::string::npos);
    RunResult block = cli({"check-config"}, db_env(db));
    REQUIRE_EXIT(block, 0);
    CHECK(block.out.find("OUTBOX_ORDERING_ON_DEAD_LETTER=block\n") != std::string::npos);

    // Nothing of the ordering commands works, or creates anything, before `migrate`.
    for (std::vector<std::string> args : {std::vector<std::string>{"ordering", "show"},
                                          {"ordering", "set", "tenantId"},
                                          {"ordering", "blocked", "--json"},
                                          {"dlq", "skip", "d1"}}) {
        INFO(args[0] + " " + args[1]);
        RunResult r = cli(args, db_env(db));
        REQUIRE_EXIT(r, 1);
        CHECK(r.err.find("run `outbox-worker migrate`") != std::string::npos);
        CHECK(r.err.find(db.password()) == std::string::npos);
    }
    CHECK(db.count("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0);
}

TEST_CASE("ordering set and show: the rule, when it was set, none, and bad rules",
          "[cli][ordering]") {
    TestDatabase db;
    db.migrate();
    RunResult initially = cli({"ordering", "show"}, db_env(db));
    REQUIRE_EXIT(initially, 0);
    CHECK(initially.out == "none\n");

    RunResult set = cli({"ordering", "set", "payload.customer.id"}, db_env(db));
    REQUIRE_EXIT(set, 0);
    CHECK(set.out == "ordering rule: payload.customer.id (applies to rows inserted from now on "
                     "without an ordering key)\n");
    CHECK(db.scalar("SELECT rule FROM outbox_worker_ordering_rule") == "payload.customer.id");
    RunResult shown = cli({"ordering", "show"}, db_env(db));
    REQUIRE_EXIT(shown, 0);
    CHECK(shown.out == "payload.customer.id (set " +
                           db.scalar(R"(SELECT to_char("updatedAt" AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                             FROM outbox_worker_ordering_rule)") +
                           ")\n");

    // A rule the database refuses is the operator's bad argument: exit 64, the database's reason,
    // and the rule in force stays as it was.
    for (const char* bad : {"payload", "metadata", "payload.", "payload..id", "customer.id",
                            "tenantid", "eventType.name", "payload.a b", "NONE", ""}) {
        INFO("rule \"" << bad << "\"");
        RunResult r = cli({"ordering", "set", bad}, db_env(db));
        REQUIRE_EXIT(r, 64);
        CHECK(r.err.rfind("outbox-worker ordering set: ordering rule \"" + std::string(bad) +
                              "\" is not valid",
                          0) == 0);
        CHECK(r.err.find("tenantId, eventType, payload.<field>") != std::string::npos);
        CHECK(r.err.find("usage: outbox-worker ordering set RULE") != std::string::npos);
        CHECK(r.out.empty());
    }
    RunResult unchanged = cli({"ordering", "show"}, db_env(db));
    REQUIRE_EXIT(unchanged, 0);
    CHECK(unchanged.out.rfind("payload.customer.id (set ", 0) == 0);

    REQUIRE_EXIT(cli({"ordering", "set", "tenantId"}, db_env(db)), 0);
    RunResult tenant = cli({"ordering", "show"}, db_env(db));
    REQUIRE_EXIT(tenant, 0);
    CHECK(tenant.out.rfind("tenantId (set ", 0) == 0);

    RunResult none = cli({"ordering", "set", "none"}, db_env(db));
    REQUIRE_EXIT(none, 0);
    CHECK(none.out.rfind("ordering rule: none ", 0) == 0);
    CHECK(db.count("SELECT count(*) FROM outbox_worker_ordering_rule") == 0);
    RunResult shown_none = cli({"ordering", "show"}, db_env(db));
    REQUIRE_EXIT(shown_none, 0);
    CHECK(shown_none.out == "none\n");
    // Removing no rule is not an error.
    REQUIRE_EXIT(cli({"ordering", "set", "none"}, db_env(db)), 0);
}

TEST_CASE("emit --ordering-key writes the key, once or for every event of --count",
          "[cli][ordering]") {
    TestDatabase db;
    db.migrate();
    std::string first = emit(db, {"--type", "o.one", "--key", "one", "--ordering-key", "cust-1"});
    CHECK(ordering_key(db, first) == "cust-1");

    RunResult many =
        cli({"emit", "--type", "o.many", "--key", "m", "--count", "5", "--ordering-key", "cust-1"},
            db_env(db));
    REQUIRE_EXIT(many, 0);
    REQUIRE(lines(many.out).size() == 5);
    // Every event of the run has the key, numbered in the order in which they were written.
    CHECK(db.scalar(R"(SELECT string_agg(e."eventKey", ',' ORDER BY o."orderingSeq")
                         FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId"
                        WHERE o."orderingKey" = 'cust-1')") == "one,m-1,m-2,m-3,m-4,m-5");

    RunResult spread = cli({"emit", "--type", "o.spread", "--key", "s", "--count", "7",
                            "--ordering-key", "shard", "--ordering-keys", "3"},
                           db_env(db));
    REQUIRE_EXIT(spread, 0);
    CHECK(db.scalar(R"(SELECT string_agg(k, ' ' ORDER BY k) FROM (
                           SELECT o."orderingKey" || '=' ||
                                  string_agg(e."eventKey", ',' ORDER BY o."orderingSeq") AS k
                             FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId"
                            WHERE o."eventType" = 'o.spread' GROUP BY o."orderingKey") x)") ==
          "shard-1=s-1,s-4,s-7 shard-2=s-2,s-5 shard-3=s-3,s-6");

    // Without the option and without a rule, an event is unordered.
    std::string loose = emit(db, {"--type", "o.loose"});
    CHECK(ordering_key(db, loose) == "<null>");
    CHECK(db.scalar(R"(SELECT coalesce("orderingSeq"::text, '<null>') FROM "Outbox"
                        WHERE "id" = ')" +
                    loose + "'") == "<null>");

    // The writer's key comes first; the rule fills in only where the writer gave none, also for
    // the metadata that the writer puts in the "EventLog" row.
    REQUIRE_EXIT(cli({"ordering", "set", "tenantId"}, db_env(db)), 0);
    CHECK(ordering_key(db, emit(db, {"--type", "o.r", "--tenant", "t7", "--ordering-key",
                                     "mine"})) == "mine");
    CHECK(ordering_key(db, emit(db, {"--type", "o.r", "--tenant", "t7"})) == "t7");
    REQUIRE_EXIT(cli({"ordering", "set", "metadata.source"}, db_env(db)), 0);
    CHECK(ordering_key(db, emit(db, {"--type", "o.r", "--metadata", R"({"source": "api"})"})) ==
          "api");
}

TEST_CASE("the ordering rule keys rows that the application inserts with plain SQL",
          "[cli][ordering]") {
    TestDatabase db;
    db.create_calibr_tables_like_the_application();
    db.migrate();
    auto set_rule = [&](const std::string& rule) {
        RunResult r = cli({"ordering", "set", rule}, db_env(db));
        REQUIRE_EXIT(r, 0);
    };

    insert_like_the_application(db, "before-any-rule", "t1", "order.paid", R"({"n": 1})");
    CHECK(ordering_key(db, "before-any-rule") == "<null>");

    set_rule("tenantId");
    insert_like_the_application(db, "by-tenant", "t1", "order.paid", R"({"n": 1})");
    CHECK(ordering_key(db, "by-tenant") == "t1");

    set_rule("eventType");
    insert_like_the_application(db, "by-type", "t1", "order.paid", R"({"n": 1})");
    CHECK(ordering_key(db, "by-type") == "order.paid");
    // A new rule applies to rows inserted from then on; earlier rows keep their key.
    CHECK(ordering_key(db, "by-tenant") == "t1");

    set_rule("payload.customerId");
    insert_like_the_application(db, "by-field", "t1", "order.paid", R"({"customerId": "c-42"})");
    insert_like_the_application(db, "by-number", "t1", "order.paid", R"({"customerId": 42})");
    insert_like_the_application(db, "field-missing", "t1", "order.paid", R"({"other": "x"})");
    CHECK(ordering_key(db, "by-field") == "c-42");
    CHECK(ordering_key(db, "by-number") == "42");
    CHECK(ordering_key(db, "field-missing") == "<null>");

    set_rule("payload.customer.address.city");
    insert_like_the_application(db, "by-nested", "t1", "order.paid",
                                R"({"customer": {"address": {"city": "Berlin"}}})");
    insert_like_the_application(db, "nested-missing", "t1", "order.paid",
                                R"({"customer": {"name": "A"}})");
    CHECK(ordering_key(db, "by-nested") == "Berlin");
    CHECK(ordering_key(db, "nested-missing") == "<null>");

    // Metadata lives in the "EventLog" row (id = "eventLogId"), which the application inserts
    // first in its transaction.
    set_rule("metadata.source");
    insert_like_the_application(db, "by-metadata", "t1", "order.paid", R"({"n": 1})",
                                R"('{"source": "checkout"}')");
    insert_like_the_application(db, "no-metadata", "t1", "order.paid", R"({"n": 1})");
    CHECK(ordering_key(db, "by-metadata") == "checkout");
    CHECK(ordering_key(db, "no-metadata") == "<null>");

    set_rule("metadata.trace.account");
    insert_like_the_application(db, "by-nested-metadata", "t1", "order.paid", R"({"n": 1})",
                                R"('{"trace": {"account": "acct-9"}}')");
    insert_like_the_application(db, "by-nested-metadata-2", "t1", "order.paid", R"({"n": 2})",
                                R"('{"trace": {"account": "acct-9"}}')");
    CHECK(ordering_key(db, "by-nested-metadata") == "acct-9");
    // Rows of one key are numbered in the order in which they were committed.
    CHECK(db.scalar(R"(SELECT string_agg("id", ',' ORDER BY "orderingSeq") FROM "Outbox"
                        WHERE "orderingKey" = 'acct-9')") ==
          "by-nested-metadata,by-nested-metadata-2");

    // An application that writes the column itself keeps its key whatever the rule says.
    db.exec(
        R"(INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType", "payload", "metadata")
                    VALUES ('evl-own', 'key-own', 't1', 'order.paid', '{}', '{"trace": {"account": "x"}}');
               INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "updatedAt", "orderingKey")
                    VALUES ('own', 'evl-own', 't1', 'order.paid', '{}', now(), 'chosen-by-app'))");
    CHECK(ordering_key(db, "own") == "chosen-by-app");

    set_rule("none");
    insert_like_the_application(db, "after-none", "t1", "order.paid", R"({"customerId": "c-42"})",
                                R"('{"trace": {"account": "acct-9"}}')");
    CHECK(ordering_key(db, "after-none") == "<null>");
}

TEST_CASE("ordering blocked and dlq skip on a key blocked by a dead-lettered head",
          "[cli][ordering]") {
    TestDatabase db;
    db.migrate();
    std::string delivered = temp_path("delivered.txt");
    // A payload with "poison" in it fails for good (exit 65): straight to the DLQ. Every other
    // event succeeds and appends its Outbox id to `delivered`, in delivery order.
    std::string handlers = write_handlers_file(
        R"([{"name": "job", "eventTypes": ["ord.*"], "exec": {"command": ["sh", "-c",
              "input=$(cat); case \"$input\" in *poison*) echo poisoned payload >&2; exit 65;; esac; echo \"$OUTBOX_EVENT_ID\" >> )" +
        delivered + R"("]}}])");
    std::string head = emit(db, {"--type", "ord.job", "--key", "head", "--ordering-key", "acct-1",
                                 "--payload", R"({"poison": true})"});
    std::string w1 = emit(db, {"--type", "ord.job", "--key", "w1", "--ordering-key", "acct-1"});
    std::string w2 = emit(db, {"--type", "ord.job", "--key", "w2", "--ordering-key", "acct-1"});
    std::string loose =
        emit(db, {"--type", "ord.job", "--key", "loose", "--payload", R"({"poison": true})"});
    std::string other =
        emit(db, {"--type", "ord.job", "--key", "other", "--ordering-key", "acct-2"});
    std::string last = emit(db, {"--type", "ord.job", "--key", "last"});

    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 2));
    REQUIRE(wait_for_count(db, kCompleted, 2));
    // The events behind the dead-lettered head were never attempted.
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE "id" IN (')" + w1 + "', '" + w2 +
                   R"(') AND "status" = 'PENDING' AND "retryCount" = 0)") == 2);
    std::string head_dlq = dlq_id_of(db, head);
    std::string loose_dlq = dlq_id_of(db, loose);

    RunResult table = cli({"ordering", "blocked"}, db_env(db));
    REQUIRE_EXIT(table, 0);
    std::vector<std::string> rows = lines(table.out);
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].rfind("KEY ", 0) == 0);
    CHECK(rows[0].find("HEAD EVENT") != std::string::npos);
    CHECK(rows[1].rfind("acct-1 ", 0) == 0);
    CHECK(rows[1].find(" " + head + " ") != std::string::npos);
    CHECK(rows[1].find(" FAILED ") != std::string::npos);
    CHECK(rows[1].find(" 2 ") != std::string::npos); // waiting
    CHECK(rows[1].find("poisoned payload") != std::string::npos);

    RunResult json = cli({"ordering", "blocked", "--json"}, db_env(db));
    REQUIRE_EXIT(json, 0);
    outbox::Json array = outbox::json_parse(json.out);
    REQUIRE(cJSON_IsArray(array.get()));
    REQUIRE(cJSON_GetArraySize(array.get()) == 1);
    const cJSON* blocked = cJSON_GetArrayItem(array.get(), 0);
    CHECK(outbox::json_string(blocked, "orderingKey") == "acct-1");
    CHECK(outbox::json_string(blocked, "headId") == head);
    CHECK(outbox::json_string(blocked, "headStatus") == "FAILED");
    CHECK(outbox::json_string(blocked, "reason").value_or("").find("poisoned payload") !=
          std::string::npos);
    CHECK(outbox::json_string(blocked, "blockedSince").value_or("").find('T') == 10);
    CHECK(cJSON_GetObjectItemCaseSensitive(blocked, "waiting")->valuedouble == 2);

    // dlq list shows the key of the ordered entry, and no key for the unordered one.
    RunResult list = cli({"dlq", "list"}, db_env(db));
    REQUIRE_EXIT(list, 0);
    std::vector<std::string> list_rows = lines(list.out);
    REQUIRE(list_rows.size() == 3);
    CHECK(list_rows[0].find(" ORDERING KEY ") != std::string::npos);
    for (size_t i = 1; i < list_rows.size(); ++i) {
        bool ordered = list_rows[i].rfind(head_dlq + " ", 0) == 0;
        INFO(list_rows[i]);
        CHECK(list_rows[i].find(ordered ? " acct-1 " : " - ") != std::string::npos);
    }
    RunResult list_json = cli({"dlq", "list", "--json"}, db_env(db));
    REQUIRE_EXIT(list_json, 0);
    outbox::Json entries = outbox::json_parse(list_json.out);
    REQUIRE(cJSON_GetArraySize(entries.get()) == 2);
    for (int i = 0; i < 2; ++i) {
        const cJSON* entry = cJSON_GetArrayItem(entries.get(), i);
        const cJSON* key = cJSON_GetObjectItemCaseSensitive(entry, "orderingKey");
        if (outbox::json_string(entry, "id") == head_dlq) {
            CHECK(outbox::json_string(entry, "orderingKey") == "acct-1");
        } else {
            CHECK(cJSON_IsNull(key));
        }
    }

    // Skip: the ordered entry releases its key, the unordered one blocked nothing, an unknown id
    // is reported after the others were processed.
    RunResult skip = cli({"dlq", "skip", head_dlq, loose_dlq, "no-such-id"}, db_env(db));
    REQUIRE_EXIT(skip, 1);
    CHECK(skip.out == head_dlq + ": released key acct-1\n" + loose_dlq +
                          ": did not block a key (the event has no ordering key)\n");
    CHECK(skip.err == "outbox-worker dlq skip: no dead-letter entry with id \"no-such-id\"\n");
    REQUIRE(wait_for_count(db, kCompleted, 4));
    std::vector<std::string> order = lines(read_text_file(delivered));
    auto at = [&](const std::string& id) {
        return std::find(order.begin(), order.end(), id) - order.begin();
    };
    CHECK(at(w1) < at(w2));
    CHECK(at(w2) < static_cast<long>(order.size()));
    // The entries stay in the queue.
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 2);

    RunResult none = cli({"ordering", "blocked"}, db_env(db));
    REQUIRE_EXIT(none, 0);
    CHECK(none.out == "no blocked ordering keys\n");
    RunResult none_json = cli({"ordering", "blocked", "--json"}, db_env(db));
    REQUIRE_EXIT(none_json, 0);
    CHECK(none_json.out == "[]\n");

    RunResult again = cli({"dlq", "skip", head_dlq}, db_env(db));
    REQUIRE_EXIT(again, 0);
    CHECK(again.out == head_dlq + ": did not block a key (key acct-1 had moved on already)\n");
    stop_cleanly(service, db);
}

TEST_CASE("dlq retry puts a dead-lettered head back before the events that waited",
          "[cli][ordering]") {
    TestDatabase db;
    db.migrate();
    std::string delivered = temp_path("delivered.txt");
    std::string flag = temp_path("poison-is-fatal");
    std::ofstream(flag) << "1";
    // "poison" fails for good while the flag file exists, and succeeds once it is gone.
    std::string handlers = write_handlers_file(
        R"([{"name": "job", "eventTypes": ["ord.*"], "exec": {"command": ["sh", "-c",
              "input=$(cat); case \"$input\" in *poison*) if [ -f )" +
        flag +
        R"( ]; then echo still poisoned >&2; exit 65; fi;; esac; echo \"$OUTBOX_EVENT_ID\" >> )" +
        delivered + R"("]}}])");
    std::string head = emit(db, {"--type", "ord.job", "--key", "head", "--ordering-key", "acct-1",
                                 "--payload", R"({"poison": true})"});
    std::string w1 = emit(db, {"--type", "ord.job", "--key", "w1", "--ordering-key", "acct-1"});
    std::string w2 = emit(db, {"--type", "ord.job", "--key", "w2", "--ordering-key", "acct-1"});

    Service service(db, {{"OUTBOX_HANDLERS", handlers}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 1));
    RunResult blocked = cli({"ordering", "blocked", "--json"}, db_env(db));
    REQUIRE_EXIT(blocked, 0);
    outbox::Json array = outbox::json_parse(blocked.out);
    REQUIRE(cJSON_GetArraySize(array.get()) == 1);
    CHECK(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(array.get(), 0), "waiting")
              ->valuedouble == 2);

    std::filesystem::remove(flag);
    RunResult retry = cli({"dlq", "retry", dlq_id_of(db, head)}, db_env(db));
    REQUIRE_EXIT(retry, 0);
    std::vector<std::string> out = lines(retry.out);
    REQUIRE(out.size() == 1);
    std::string new_head = out[0].substr(out[0].find(" -> ") + 4);
    REQUIRE(wait_for_count(db, kCompleted, 3));
    CHECK(lines(read_text_file(delivered)) == std::vector<std::string>{new_head, w1, w2});
    RunResult none = cli({"ordering", "blocked"}, db_env(db));
    REQUIRE_EXIT(none, 0);
    CHECK(none.out == "no blocked ordering keys\n");
    stop_cleanly(service, db);
}

TEST_CASE(
    "OUTBOX_ORDERING_ON_DEAD_LETTER=skip: the events behind a dead-lettered head go on at once",
    "[cli][ordering]") {
    TestDatabase db;
    db.migrate();
    std::string delivered = temp_path("delivered.txt");
    std::string handlers = write_handlers_file(
        R"([{"name": "job", "eventTypes": ["ord.*"], "exec": {"command": ["sh", "-c",
              "input=$(cat); case \"$input\" in *poison*) echo poisoned payload >&2; exit 65;; esac; echo \"$OUTBOX_EVENT_ID\" >> )" +
        delivered + R"("]}}])");
    std::string head = emit(db, {"--type", "ord.job", "--key", "head", "--ordering-key", "acct-1",
                                 "--payload", R"({"poison": true})"});
    std::string w1 = emit(db, {"--type", "ord.job", "--key", "w1", "--ordering-key", "acct-1"});
    std::string w2 = emit(db, {"--type", "ord.job", "--key", "w2", "--ordering-key", "acct-1"});
    Service service(db,
                    {{"OUTBOX_HANDLERS", handlers}, {"OUTBOX_ORDERING_ON_DEAD_LETTER", "skip"}});
    INFO(service.log());
    REQUIRE(wait_for_count(db, kCompleted, 2));
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog")") == 1);
    CHECK(lines(read_text_file(delivered)) == std::vector<std::string>{w1, w2});
    RunResult blocked = cli({"ordering", "blocked", "--json"}, db_env(db));
    REQUIRE_EXIT(blocked, 0);
    CHECK(blocked.out.find("[]") != std::string::npos);
    // The entry no longer blocks anything: skipping it releases nothing.
    RunResult skip = cli({"dlq", "skip", dlq_id_of(db, head)}, db_env(db));
    REQUIRE_EXIT(skip, 0);
    CHECK(skip.out.find("did not block a key") != std::string::npos);
    stop_cleanly(service, db);
}
