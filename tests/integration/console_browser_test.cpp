// The console in a real browser: headless Chromium (tests/support/browser.h) against the real
// service on the real PostgreSQL. The page must show what the database holds, find events, act
// on dead letters once logged in (and be refused when the console is read-only), show hostile
// text as text, and never throw. Every test waits on conditions with deadlines and ends with no
// JavaScript error and a clean stop of the service.
//
// Each view is saved as a screenshot under <build>/test-artifacts/console/ (the paths are
// printed). With OUTBOX_UPDATE_DOCS_SCREENSHOT=1 the overview is also copied to docs/console.png,
// the README's picture; without it the source tree is left alone.
#include "tests/integration/engine_support.h"
#include "tests/support/browser.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

using namespace outbox::test;

namespace {

std::string artifact_path(const std::string& name) {
    auto dir = std::filesystem::path(OUTBOX_BINARY).parent_path() / "test-artifacts" / "console";
    std::filesystem::create_directories(dir);
    return (dir / name).string();
}

std::string save_screenshot(Browser& browser, const std::string& view) {
    std::string path = artifact_path(view + ".png");
    browser.screenshot(path);
    std::cout << "console screenshot (" << view << "): " << path << std::endl;
    return path;
}

// The service with its console on a free port. `token` empty: a read-only console.
struct ConsoleService {
    ConsoleService(const TestDatabase& db, const std::string& handlers, const std::string& token,
                   EnvMap extra = {})
        : port(free_tcp_port()), service(db, environment(handlers, token, port, extra)) {}

    static EnvMap environment(const std::string& handlers, const std::string& token, int port,
                              EnvMap extra) {
        EnvMap env = {{"OUTBOX_HANDLERS", handlers},
                      {"OUTBOX_HTTP_PORT", std::to_string(port)},
                      {"OUTBOX_ADMIN_TOKEN",
                       token.empty() ? std::nullopt : std::optional<std::string>(token)}};
        for (auto& [k, v] : extra) {
            env[k] = v;
        }
        return env;
    }

    std::string url(const std::string& route = "") const {
        return "http://127.0.0.1:" + std::to_string(port) + "/" + route;
    }

    int port;
    Service service;
};

// Writes one event and returns its Outbox id.
std::string write_event(const TestDatabase& db, const std::string& event_key,
                        const std::string& type, const std::string& payload,
                        const std::string& ordering_key = "") {
    std::string ordering = ordering_key.empty() ? "NULL" : "'" + ordering_key + "'";
    return db.scalar("SELECT outbox_id FROM outbox_write_event('" + event_key + "', 'tenant-1', '" +
                     type + "', '" + payload + "'::jsonb, NULL, NULL, NULL, NULL, " + ordering +
                     ")");
}

// True when the overview's figure `id` shows `expected` (its data-value, the unformatted number).
std::string figure_condition(const std::string& id, long expected) {
    return "document.querySelector('#" + id + "').dataset.value === '" + std::to_string(expected) +
           "'";
}

// True when the rows of `table` are exactly those whose data-id is in `ids`.
std::string rows_are(const std::string& table, const std::set<std::string>& ids) {
    std::string list;
    for (const auto& id : ids) {
        list += (list.empty() ? "" : ",") + js_string(id);
    }
    return "(() => { const want = [" + list +
           "].sort(); const got = [...document.querySelectorAll(" +
           js_string(table + " tbody tr[data-id]") +
           ")].map(r => r.dataset.id).sort(); return JSON.stringify(want) === "
           "JSON.stringify(got); })()";
}

long parent_pid_of(long pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // "pid (comm) state ppid ...": comm may hold spaces, so read after its closing parenthesis.
    size_t close = stat.rfind(')');
    if (close == std::string::npos) {
        return -1;
    }
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    long ppid = -1;
    rest >> state >> ppid;
    return ppid;
}

// Every JavaScript error the page produced; the tests expect none.
void check_no_page_errors(Browser& browser) {
    std::string all;
    for (const auto& e : browser.errors()) {
        all += e + "\n";
    }
    INFO("page errors:\n" << all);
    CHECK(browser.errors().empty());
}

constexpr auto kPageTimeout = 30s;

// Opens a route of the console ("#/dlq") and waits until the page has switched to it: a change
// of the fragment only is a same-document navigation, and the page routes on the hashchange
// event that follows it, so until then the previous view (and its rows) is still there.
void open_view(Browser& browser, const ConsoleService& console, const std::string& route) {
    browser.navigate(console.url(route));
    bool switched =
        browser.wait_for("document.body.dataset.route === " + js_string(route), kPageTimeout);
    INFO(browser.last_wait_detail());
    REQUIRE(switched);
}

// Waits for a condition of the page; on failure the message says what the condition last saw.
#define CHECK_PAGE(browser, condition, timeout)                                                    \
    do {                                                                                           \
        bool met_ = (browser).wait_for((condition), (timeout));                                    \
        INFO((browser).last_wait_detail());                                                        \
        CHECK(met_);                                                                               \
    } while (false)
#define REQUIRE_PAGE(browser, condition, timeout)                                                  \
    do {                                                                                           \
        bool met_ = (browser).wait_for((condition), (timeout));                                    \
        INFO((browser).last_wait_detail());                                                        \
        REQUIRE(met_);                                                                             \
    } while (false)

} // namespace

TEST_CASE("console overview: the figures are the database's, and the charts are drawn",
          "[browser]") {
    TestDatabase db;
    db.migrate();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["c.ok"], "log": {}},
        {"eventTypes": ["c.bad"], "exec": {"command": ["sh", "-c", "cat >/dev/null; echo rejected >&2; exit 65"]}}])");
    write_events(db, "c.ok", 7);
    write_events(db, "c.bad", 3);
    write_events(db, "c.unowned", 2); // nobody takes these: they stay pending
    ConsoleService console(db, handlers, "", {{"OUTBOX_WORKERS", "2"}});
    REQUIRE(console.service.wait_ready());
    INFO(console.service.log());
    REQUIRE(wait_for_count(db, kCompleted, 7));
    REQUIRE(wait_for_count(db, R"(SELECT count(*) FROM "DlqEventLog")", 3));

    Browser browser;
    open_view(browser, console, "#/");
    long pending = count_status(db, "PENDING");
    long completed = count_status(db, "COMPLETED");
    long failed = count_status(db, "FAILED");
    long processing = count_status(db, "PROCESSING");
    long dlq = db.count(R"(SELECT count(*) FROM "DlqEventLog")");
    CHECK(pending == 2);
    // The janitor reads the counts every 5 s; the page polls every 2 s.
    CHECK_PAGE(browser,
               figure_condition("count-completed", completed) + " && " +
                   figure_condition("count-pending", pending) + " && " +
                   figure_condition("count-dlq", dlq),
               kPageTimeout);
    CHECK_PAGE(browser, figure_condition("count-failed", failed), 5s);
    CHECK_PAGE(browser, figure_condition("count-processing", processing), 5s);
    CHECK(browser.evaluate_string("document.querySelector('#count-completed').textContent") ==
          std::to_string(completed));
    CHECK(browser.evaluate_string("document.querySelector('#database-up').textContent") == "up");
    CHECK(browser.evaluate_string("document.querySelector('#service-state').textContent") ==
          "serving");
    // Backlog: the two unowned events, written at the start.
    CHECK(browser.evaluate_number("Number(document.querySelector('#backlog-age').dataset.value)") >=
          0);

    // The handler processes are the supervisor's children, as the page lists them.
    REQUIRE_PAGE(browser,
                 "document.querySelectorAll('#workers-table tbody tr[data-slot]')"
                 ".length === 2",
                 kPageTimeout);
    for (int slot = 0; slot < 2; ++slot) {
        long pid = static_cast<long>(browser.evaluate_number(
            "Number(document.querySelector('#workers-table tbody tr[data-slot=\"" +
            std::to_string(slot) + "\"] td:nth-child(2)').textContent)"));
        INFO("slot " << slot << " pid " << pid);
        CHECK(parent_pid_of(pid) == console.service.process().pid());
    }

    // The throughput chart: samples every 5 s, so two points within about 10 s of the start; the
    // completed line is a path through them, with axes and labels around it.
    CHECK_PAGE(browser,
               "(() => { const p = document.querySelector('#chart-throughput svg "
               "path[data-series=completed]'); return p && Number(p.dataset.points) >= 3 && "
               "/^M[-0-9.]+,[-0-9.]+( L[-0-9.]+,[-0-9.]+)+$/.test(p.getAttribute('d')); })()",
               kPageTimeout);
    CHECK(browser.evaluate_number("document.querySelectorAll('#chart-throughput svg "
                                  "path.series').length") == 3);
    CHECK(browser.evaluate_number("document.querySelectorAll('#chart-throughput svg text')"
                                  ".length") >= 6);
    CHECK(browser.evaluate_number("document.querySelectorAll('#chart-latency svg "
                                  "path.series').length") == 2);
    // No event type is paused.
    CHECK(browser.evaluate_string("document.querySelector('#paused-table tbody').textContent") ==
          "no event type is paused");
    std::string overview = save_screenshot(browser, "overview");
    const char* update_docs = std::getenv("OUTBOX_UPDATE_DOCS_SCREENSHOT");
    if (update_docs != nullptr && std::string(update_docs) == "1") {
        std::string docs = std::string(OUTBOX_SOURCE_DIR) + "/docs/console.png";
        std::filesystem::copy_file(overview, docs,
                                   std::filesystem::copy_options::overwrite_existing);
        std::cout << "console screenshot copied to " << docs << std::endl;
    }

    // Every view opens without a JavaScript error, an unknown route included.
    for (const char* route_text : {"#/events", "#/dlq", "#/keys", "#/login", "#/no-such-view"}) {
        std::string route = route_text;
        open_view(browser, console, route);
        std::string view = route == "#/no-such-view" ? "notfound" : route.substr(2);
        CHECK_PAGE(browser,
                   "document.body.dataset.view === " + js_string(view) +
                       " && !document.querySelector('#view-" + view + "').hidden",
                   kPageTimeout);
    }
    // Leaving the overview stops its polling: no request for /api/overview is made any more.
    CHECK(browser.evaluate_bool("performance.getEntriesByType('resource').length > 0"));
    double before = browser.evaluate_number(
        "performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/overview'))"
        ".length");
    open_view(browser, console, "#/keys");
    REQUIRE_PAGE(browser, "document.body.dataset.view === 'keys'", kPageTimeout);
    // Absence of requests can only be seen over a span of time: two poll periods and a little
    // more, measured by the page's own clock.
    browser.evaluate("new Promise(resolve => setTimeout(resolve, 4500))");
    double after = browser.evaluate_number(
        "performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/overview'))"
        ".length");
    CHECK(after == before);

    check_no_page_errors(browser);
    stop_cleanly(console.service, db);
}

TEST_CASE("console events: search by event key and by ordering key, and the detail", "[browser]") {
    TestDatabase db;
    db.migrate();
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["none.*"], "log": {}}])");
    // Nobody takes these types: the events stay pending, unchanged while the test reads them.
    std::string first = write_event(db, "order-7781", "shop.order",
                                    R"({"orderId": 7781, "items": [1, 2]})", "customer-42");
    std::string second = write_event(db, "order-7782", "shop.order",
                                     R"({"orderId": 7782, "items": [3]})", "customer-42");
    std::string other = write_event(db, "order-7783", "shop.order",
                                    R"({"orderId": 7783, "items": []})", "customer-43");
    std::string hostile_key = "<img src=x onerror=window.__xss=3>";
    std::string hostile = write_event(
        db, hostile_key, "shop.note",
        R"({"note": "<script>window.__xss=1</script>", "img": "<img src=x onerror=window.__xss=2>"})");
    write_events(db, "shop.noise", 5);
    ConsoleService console(db, handlers, "");
    REQUIRE(console.service.wait_ready());
    INFO(console.service.log());

    Browser browser;
    open_view(browser, console, "#/events");
    // The first page lists everything, newest first.
    CHECK_PAGE(browser,
               "document.querySelectorAll('#events-table tbody tr[data-id]').length "
               "=== 9",
               kPageTimeout);

    // By event key: refused with the advice while the optional index is missing (migration 005
    // leaves it to the operator), the page showing the service's message; found once it exists.
    browser.type("#events-event-key", "order-7781");
    browser.click("#events-search");
    CHECK_PAGE(browser,
               "!document.querySelector('#error-banner').hidden && "
               "document.querySelector('#error-banner').textContent.includes('CREATE INDEX')",
               kPageTimeout);
    db.exec(R"(CREATE INDEX "Outbox_worker_eventLogId_idx" ON "Outbox" ("eventLogId"))");
    browser.click("#events-search");
    CHECK_PAGE(browser, rows_are("#events-table", {first}), kPageTimeout);
    CHECK(browser.evaluate_string("location.hash") == "#/events?eventKey=order-7781");

    // By ordering key: both events of customer-42, not customer-43's.
    browser.type("#events-event-key", "");
    browser.type("#events-ordering-key", "customer-42");
    browser.click("#events-search");
    CHECK_PAGE(browser, rows_are("#events-table", {first, second}), kPageTimeout);
    save_screenshot(browser, "events");

    // The detail: payload pretty-printed, keys shown.
    browser.click("#events-table tbody tr[data-id=" + js_string(first) + "] a");
    REQUIRE_PAGE(browser,
                 "document.body.dataset.view === 'event' && "
                 "document.querySelector('#event-payload').textContent.includes("
                 "'7781')",
                 kPageTimeout);
    CHECK(browser.evaluate_string("location.hash") == "#/events/" + first);
    CHECK(browser.evaluate_bool(
        "(() => { const p = JSON.parse(document.querySelector('#event-payload').textContent);"
        " return p.orderId === 7781 && JSON.stringify(p.items) === '[1,2]'; })()"));
    // Pretty-printed: one member a line.
    CHECK(browser.evaluate_bool(
        "document.querySelector('#event-payload').textContent.split('\\n').length > 3"));
    CHECK(browser.evaluate_string("document.querySelector('#event-event-key').textContent") ==
          "order-7781");
    CHECK(browser.evaluate_string("document.querySelector('#event-ordering-key').textContent") ==
          "customer-42");
    save_screenshot(browser, "detail");

    // Hostile text is shown as text: in the list (the event key) and in the detail (the payload).
    open_view(browser, console, "#/events");
    REQUIRE_PAGE(browser, "document.body.dataset.view === 'events'", kPageTimeout);
    browser.type("#events-event-key", hostile_key);
    browser.click("#events-search");
    CHECK_PAGE(browser, rows_are("#events-table", {hostile}), kPageTimeout);
    CHECK(browser.evaluate_string(
              "document.querySelector('#events-table tbody tr[data-id=" + js_string(hostile) +
              "] td:nth-child(9)').textContent") == hostile_key);
    browser.click("#events-table tbody tr[data-id=" + js_string(hostile) + "] a");
    REQUIRE_PAGE(browser,
                 "document.querySelector('#event-payload').textContent.includes("
                 "'__xss')",
                 kPageTimeout);
    std::string payload =
        browser.evaluate_string("document.querySelector('#event-payload').textContent");
    CHECK(payload.find("<script>window.__xss=1</script>") != std::string::npos);
    CHECK(payload.find("<img src=x onerror=window.__xss=2>") != std::string::npos);
    // The page has no image and no script element of its own in the document: any would have
    // come from the payload.
    CHECK(browser.evaluate_number("document.querySelectorAll('img, body script').length") == 0);
    CHECK(browser.evaluate_string("typeof window.__xss") == "undefined");

    // An id that does not exist: the page says so, without a JavaScript error.
    open_view(browser, console, "#/events/no-such-event");
    CHECK_PAGE(browser, "!document.querySelector('#error-banner').hidden", kPageTimeout);

    // The 400 (no index) and the 404 above are the browser's logged failed requests, not page
    // errors; drop them.
    std::vector<std::string> errors;
    for (const auto& e : browser.errors()) {
        if (e.find("status of 404") == std::string::npos &&
            e.find("status of 400") == std::string::npos) {
            errors.push_back(e);
        }
    }
    std::string all;
    for (const auto& e : errors) {
        all += e + "\n";
    }
    INFO(all);
    CHECK(errors.empty());
    stop_cleanly(console.service, db);
}

TEST_CASE("console dead letters: log in, retry a selection and one entry, purge, pause",
          "[browser]") {
    TestDatabase db;
    db.migrate();
    // The handler refuses for good (a dead letter at once) until the flag file exists.
    std::string flag = temp_path("deliver-now");
    std::string handlers = write_handlers_file(
        R"([{"eventTypes": ["d.flaky"], "exec": {"command": ["sh", "-c", "cat >/dev/null; test -e )" +
        flag + R"( || { echo 'downstream said no' >&2; exit 65; }"]}}])");
    std::string a = write_event(db, "flaky-a", "d.flaky", R"({"n": 1})");
    std::string b = write_event(db, "flaky-b", "d.flaky", R"({"n": 2})");
    std::string c = write_event(db, "flaky-c", "d.flaky", R"({"n": 3})");
    const std::string token = "console-test-token-5b1e";
    ConsoleService console(db, handlers, token);
    REQUIRE(console.service.wait_ready());
    INFO(console.service.log());
    const std::string dlq_count = R"(SELECT count(*) FROM "DlqEventLog")";
    REQUIRE(wait_for_count(db, dlq_count, 3));
    auto dlq_id_of = [&](const std::string& outbox_id) {
        return db.scalar(R"(SELECT id FROM "DlqEventLog" WHERE "originalId" = ')" + outbox_id +
                         "'");
    };
    std::string dlq_a = dlq_id_of(a);
    std::string dlq_b = dlq_id_of(b);
    std::string dlq_c = dlq_id_of(c);
    std::ofstream(flag) << "yes\n";
    // A retry inserts a new Outbox row for the same EventLog row (outbox_retry_dlq): the rows of
    // that event other than the dead-lettered one, in `status` (any when empty).
    auto retried_rows = [&](const std::string& outbox_id, const std::string& status) {
        return R"(SELECT count(*) FROM "Outbox" WHERE "eventLogId" = (SELECT "eventLogId" FROM "Outbox" WHERE id = ')" +
               outbox_id + "') AND id <> '" + outbox_id + "'" +
               (status.empty() ? "" : " AND status = '" + status + "'");
    };

    Browser browser;
    open_view(browser, console, "#/dlq");
    // The groups come from the janitor's reading (every 5 s), read when the view opens: open it
    // again once the janitor has seen the three.
    REQUIRE_PAGE(browser,
                 "fetch('/api/overview').then(r => r.json()).then(o => o.counts.dlq === 3)",
                 kPageTimeout);
    open_view(browser, console, "#/");
    REQUIRE_PAGE(browser, "document.body.dataset.view === 'overview'", kPageTimeout);
    open_view(browser, console, "#/dlq");
    REQUIRE_PAGE(browser, rows_are("#dlq-table", {dlq_a, dlq_b, dlq_c}), kPageTimeout);
    // Not logged in: the actions are there but disabled, and the page says why.
    CHECK(browser.evaluate_bool("document.querySelector('#dlq-table tbody tr[data-id=" +
                                js_string(dlq_a) + "] button[data-action=retry]').disabled"));
    CHECK(browser.evaluate_bool("document.querySelector('#dlq-retry-matching').disabled"));
    CHECK(browser.evaluate_bool(
        "!document.querySelector('#permission-note').hidden && "
        "document.querySelector('#permission-note').textContent.includes('log in')"));
    // The group of the three, from the janitor's reading.
    CHECK_PAGE(browser,
               "[...document.querySelectorAll('#dlq-groups tbody tr')].some(r => "
               "r.dataset.eventType === 'd.flaky' && "
               "r.querySelector('td:nth-child(3)').textContent === '3')",
               kPageTimeout);

    // Log in through the form; the page comes back to the dead letters.
    browser.click("#login-link");
    REQUIRE_PAGE(browser, "document.body.dataset.view === 'login'", kPageTimeout);
    browser.type("#login-token", "wrong-token");
    browser.click("#login-submit");
    CHECK_PAGE(browser, "!document.querySelector('#login-error').hidden", kPageTimeout);
    save_screenshot(browser, "login");
    browser.type("#login-token", token);
    browser.click("#login-submit");
    REQUIRE_PAGE(browser,
                 "document.querySelector('#logout') !== null && "
                 "document.body.dataset.view === 'dlq'",
                 kPageTimeout);
    REQUIRE_PAGE(browser,
                 rows_are("#dlq-table", {dlq_a, dlq_b, dlq_c}) +
                     " && !document.querySelector('#dlq-table tbody "
                     "button[data-action=retry]').disabled",
                 kPageTimeout);
    // The token is nowhere in the page.
    CHECK_FALSE(browser.evaluate_bool("document.documentElement.outerHTML.includes(" +
                                      js_string(token) + ")"));

    // Retry a selection of one, through the confirm step.
    browser.click("#dlq-table tbody tr[data-id=" + js_string(dlq_a) + "] input[type=checkbox]");
    CHECK_PAGE(browser, "document.querySelector('#dlq-selection').textContent === '1 selected'",
               5s);
    save_screenshot(browser, "dlq");
    browser.click("#dlq-retry-selected");
    REQUIRE_PAGE(browser, "!document.querySelector('#confirm').hidden", kPageTimeout);
    CHECK(browser.evaluate_string("document.querySelector('#confirm-text').textContent") ==
          "Retry 1 selected dead letter?");
    browser.click("#confirm-ok");
    CHECK_PAGE(browser,
               "document.querySelector('#dlq-result').dataset.done === '1' && " +
                   rows_are("#dlq-table", {dlq_b, dlq_c}),
               kPageTimeout);
    // The entry left the dead letters, a new Outbox row of the same event was created, and the
    // service delivered it.
    CHECK(db.count(R"(SELECT count(*) FROM "DlqEventLog" WHERE id = ')" + dlq_a + "'") == 0);
    CHECK(db.count(retried_rows(a, "")) == 1);
    CHECK(wait_for_count(db, retried_rows(a, "COMPLETED"), 1));

    // Retry one entry with its own button: no confirm step.
    browser.click("#dlq-table tbody tr[data-id=" + js_string(dlq_b) +
                  "] button[data-action=retry]");
    CHECK_PAGE(browser,
               "document.querySelector('#dlq-result').dataset.done === '1' && " +
                   rows_are("#dlq-table", {dlq_c}),
               kPageTimeout);
    CHECK(db.count(retried_rows(b, "")) == 1);
    CHECK(wait_for_count(db, retried_rows(b, "COMPLETED"), 1));
    CHECK(count_status(db, "COMPLETED") == 2); // c was not retried

    // Purge the last one; cancelling first changes nothing.
    browser.click("#dlq-table tbody tr[data-id=" + js_string(dlq_c) +
                  "] button[data-action=purge]");
    REQUIRE_PAGE(browser, "!document.querySelector('#confirm').hidden", kPageTimeout);
    browser.click("#confirm-cancel");
    CHECK_PAGE(browser, "document.querySelector('#confirm').hidden", 5s);
    CHECK(db.count(dlq_count) == 1);
    browser.click("#dlq-table tbody tr[data-id=" + js_string(dlq_c) +
                  "] button[data-action=purge]");
    REQUIRE_PAGE(browser, "!document.querySelector('#confirm').hidden", kPageTimeout);
    browser.click("#confirm-ok");
    CHECK_PAGE(browser,
               "document.querySelector('#dlq-result').dataset.done === '1' && " +
                   rows_are("#dlq-table", {}),
               kPageTimeout);
    CHECK(db.count(dlq_count) == 0);

    // Pause an event type from the overview, then resume it.
    open_view(browser, console, "#/");
    REQUIRE_PAGE(browser,
                 "document.body.dataset.view === 'overview' && "
                 "!document.querySelector('#pause-submit').disabled",
                 kPageTimeout);
    browser.type("#pause-type", "d.paused");
    browser.click("#pause-submit");
    CHECK_PAGE(
        browser,
        "document.querySelector('#paused-table tbody tr[data-event-type=\"d.paused\"]') !== null",
        kPageTimeout);
    CHECK(db.count("SELECT count(*) FROM outbox_worker_paused WHERE \"eventType\" = 'd.paused'") ==
          1);
    browser.click("#paused-table tbody tr[data-event-type=\"d.paused\"] button");
    CHECK_PAGE(
        browser,
        "document.querySelector('#paused-table tbody tr[data-event-type=\"d.paused\"]') === null",
        kPageTimeout);
    CHECK(db.count("SELECT count(*) FROM outbox_worker_paused") == 0);

    // Log out: the actions are disabled again.
    browser.click("#logout");
    CHECK_PAGE(browser,
               "document.querySelector('#login-link') !== null && "
               "document.querySelector('#pause-submit').disabled",
               kPageTimeout);

    // The wrong token's 401 is logged by the browser as a failed request; nothing else may be.
    std::vector<std::string> errors;
    for (const auto& e : browser.errors()) {
        if (e.find("status of 401") == std::string::npos) {
            errors.push_back(e);
        }
    }
    std::string all;
    for (const auto& e : errors) {
        all += e + "\n";
    }
    INFO(all);
    CHECK(errors.empty());
    stop_cleanly(console.service, db);
}

TEST_CASE("console without a token: read-only, actions absent and refused, blocked keys listed",
          "[browser]") {
    TestDatabase db;
    db.migrate();
    // An ordered event that dead-letters blocks its key (the default), and the two behind it wait.
    std::string handlers = write_handlers_file(R"([{"eventTypes": ["k.*"],
        "exec": {"command": ["sh", "-c", "cat >/dev/null; echo 'account closed' >&2; exit 65"]}}])");
    std::string head = write_event(db, "acct-1", "k.update", R"({"n": 1})", "account-9");
    write_event(db, "acct-2", "k.update", R"({"n": 2})", "account-9");
    write_event(db, "acct-3", "k.update", R"({"n": 3})", "account-9");
    ConsoleService console(db, handlers, "");
    REQUIRE(console.service.wait_ready());
    INFO(console.service.log());
    const std::string dlq_count = R"(SELECT count(*) FROM "DlqEventLog")";
    REQUIRE(wait_for_count(db, dlq_count, 1));
    std::string dlq_id = db.scalar(R"(SELECT id FROM "DlqEventLog")");

    Browser browser;
    open_view(browser, console, "#/dlq");
    REQUIRE_PAGE(browser, rows_are("#dlq-table", {dlq_id}), kPageTimeout);
    CHECK(browser.evaluate_bool("document.querySelector('#readonly-badge') !== null"));
    CHECK(browser.evaluate_bool(
        "!document.querySelector('#permission-note').hidden && "
        "document.querySelector('#permission-note').textContent.includes('Read-only')"));
    // No action can be seen or used: every element that acts is hidden.
    CHECK(browser.evaluate_bool(
        "[...document.querySelectorAll('[data-act]')].every(e => e.hidden && e.offsetParent === "
        "null)"));
    CHECK(browser.evaluate_number(
              "document.querySelectorAll('#dlq-table tbody button[data-action]').length") == 3);
    CHECK(browser.evaluate_bool(
        "[...document.querySelectorAll('#dlq-table tbody button')].every(b => b.offsetParent === "
        "null)"));
    CHECK(browser.evaluate_bool("document.querySelector('#login-link') === null"));

    open_view(browser, console, "#/");
    REQUIRE_PAGE(browser, "document.body.dataset.view === 'overview'", kPageTimeout);
    CHECK(browser.evaluate_bool("document.querySelector('#pause-form').offsetParent === null"));
    open_view(browser, console, "#/login");
    REQUIRE_PAGE(browser, "!document.querySelector('#login-state').hidden", kPageTimeout);
    CHECK(browser.evaluate_bool("document.querySelector('#login-form').hidden"));

    // Blocked keys: account-9, its head dead-lettered, two events waiting behind it.
    open_view(browser, console, "#/keys");
    CHECK_PAGE(
        browser,
        "(() => { const r = document.querySelector('#keys-table tbody tr[data-key=\"account-9\"]');"
        " return r && r.querySelector('td:nth-child(6)').textContent === '2'; })()",
        kPageTimeout);
    CHECK(browser.evaluate_bool("document.querySelector('#keys-table tbody tr a').getAttribute("
                                "'href') === " +
                                js_string("#/events/" + head)));
    save_screenshot(browser, "keys");
    check_no_page_errors(browser);

    // Forced from the page's own context (same origin, so only the missing token stops it):
    // every action answers 403 and changes nothing.
    auto status_of_post = [&](const std::string& path, const std::string& body) {
        return browser.evaluate_number(
            "fetch(" + js_string(path) +
            ", {method: 'POST', headers: {'Content-Type': 'application/json'}, body: " +
            js_string(body) + "}).then(r => r.status)");
    };
    CHECK(status_of_post("/api/dlq/retry", R"({"ids": [")" + dlq_id + R"("]})") == 403);
    CHECK(status_of_post("/api/dlq/purge", R"({"filter": {}, "all": true})") == 403);
    CHECK(status_of_post("/api/pause", R"({"eventType": "k.update"})") == 403);
    CHECK(status_of_post("/api/login", R"({"token": "anything"})") == 403);
    CHECK(db.count(dlq_count) == 1);
    CHECK(db.count("SELECT count(*) FROM outbox_worker_paused") == 0);
    stop_cleanly(console.service, db);
}
