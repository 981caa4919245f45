// Chaos: three instances of the example application work one backlog while the test SIGKILLs
// instances and handler processes at random and restarts PostgreSQL; the handlers crash, hang and
// fail by design (examples/app.cpp, "example.chaos"). Afterwards every event must be where its
// handler dictates: COMPLETED, or in the dead-letter queue for the ones rejected permanently.
// Nothing is lost.
//
// Delivery is at least once, so an event may be delivered again, but only for a reason the test
// can name. The handler records each delivery as its last act before it reports success (event
// id, attempt, handler process pid, supervisor pid), and a trigger the test adds to "Outbox" keeps
// the error of every failed attempt charged ("lastError" keeps only the latest, and success
// clears it). So:
// - every charged attempt must be a failure the handler causes by design (its fate allows it at
//   that attempt) or one the test caused: a process it killed, a lease that expired, a timeout;
// - an event delivered again must have been charged the attempt of its earlier delivery, although
//   that delivery's handler had finished, and the charge must name a disturbance that explains it.
// The test prints both tallies by cause and fails on anything it cannot explain.
//
// CHAOS_SECONDS sets how long the disturbances go on (default 20, the short form CI runs;
// `make chaos` runs longer). CHAOS_SEED picks the disturbances: the test prints the seed it used,
// and CHAOS_SEED=N repeats the same sequence of disturbances (their timing still varies).
// CHAOS_LOG_DIR, an existing directory, receives every instance's log and the delivery record.
#include "tests/integration/engine_support.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

using namespace outbox::test;

namespace {

long env_long(const char* name, long fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? std::strtol(v, nullptr, 10) : fallback;
}

std::vector<pid_t> children_of(pid_t parent) {
    auto r = run_process("/usr/bin/pgrep", command({"-P", std::to_string(parent)}));
    std::vector<pid_t> pids;
    std::istringstream in(r.out);
    for (pid_t p; in >> p;) {
        pids.push_back(p);
    }
    return pids;
}

bool starts_with(const std::string& s, const std::string& prefix) {
    return s.compare(0, prefix.size(), prefix) == 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The fate examples/app.cpp gives an "example.chaos" event, from the same hash of its id (the
// test and the application use the same standard library): 0 crashes with SIGSEGV on attempt 1,
// 1 fails on attempts 1 and 2, 2 is rejected permanently, 3 hangs on attempt 1; the rest succeed.
enum Fate { kCrashOnce = 0, kFailTwice = 1, kRejected = 2, kHangOnce = 3 };
size_t fate_of(const std::string& id) {
    return std::hash<std::string>{}(id) % 10;
}

// Keeps every failed attempt charged to an event: the supervisor's retry and dead-letter outcomes
// (the handler's error, a crash naming the pid and the signal, "timed out after N ms") and the
// lease sweep's ("lease expired (owner X)"). Every charge raises "retryCount" by one, so the row
// with retry_count n is the charge of attempt n. No constraint: a surprise here must not fail the
// service's own statements; the test checks afterwards.
const char* const kChargedAttemptsDdl = R"sql(
CREATE TABLE chaos_charged_attempts (
    id text NOT NULL,
    retry_count int NOT NULL,
    last_error text
);
CREATE FUNCTION chaos_keep_charged_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_charged_attempts VALUES (NEW."id", NEW."retryCount", NEW."lastError");
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_keep_charged_attempt AFTER UPDATE ON "Outbox" FOR EACH ROW
    WHEN (NEW."retryCount" > OLD."retryCount") EXECUTE FUNCTION chaos_keep_charged_attempt();
)sql";

// One line of examples/app.cpp record_chaos_delivery().
struct ChaosDelivery {
    std::string id;
    int attempt = 0;
    pid_t handler_pid = 0;
    pid_t instance_pid = 0;
};

std::vector<ChaosDelivery> read_chaos_deliveries(const std::string& path) {
    std::vector<ChaosDelivery> out;
    std::ifstream in(path);
    ChaosDelivery d;
    while (in >> d.id >> d.attempt >> d.handler_pid >> d.instance_pid) {
        out.push_back(d);
    }
    return out;
}

// One run of the example application. Its lease owner name is set, so that a "lease expired
// (owner X)" charge names the instance; killed instances are kept for their logs.
struct Instance {
    std::string name;
    std::unique_ptr<Service> service;
    bool killed = false;
};

// A tally by cause, printed as a table.
template <typename Cause, size_t N>
struct Tally {
    std::array<const char*, N> names;
    std::array<long, N> counts{};
    void add(Cause c) { ++counts[static_cast<size_t>(c)]; }
    long operator[](Cause c) const { return counts[static_cast<size_t>(c)]; }
    void print(std::ostream& out, const char* title) const {
        long total = 0;
        out << title << ":\n";
        for (size_t i = 0; i < N; ++i) {
            char line[120];
            std::snprintf(line, sizeof line, "  %-62s %6ld\n", names[i], counts[i]);
            out << line;
            total += counts[i];
        }
        char line[120];
        std::snprintf(line, sizeof line, "  %-62s %6ld\n", "total", total);
        out << line;
    }
};

// Why an attempt was charged.
enum class Charge {
    crash_by_design,
    failure_by_design,
    rejected_by_design,
    hang_by_design,
    timed_out,
    handler_killed,
    lease_expired_instance_killed,
    lease_expired_not_started,
    lease_expired_instance_alive,
    unexplained,
};
constexpr size_t kCharges = 10;

// Why an event was delivered again: what kept the success of its earlier delivery, whose handler
// had finished, from being recorded.
enum class Duplicate {
    instance_killed,
    handler_killed,
    timed_out,
    lease_lost_logged,
    lease_lost_not_logged,
    unexplained,
};
constexpr size_t kDuplicates = 6;

} // namespace

TEST_CASE("chaos: kills, restarts and misbehaving handlers lose nothing", "[chaos]") {
    const long seconds = env_long("CHAOS_SECONDS", 20);
    const unsigned seed = static_cast<unsigned>(env_long("CHAOS_SEED", std::random_device{}()));
    const char* restart = std::getenv("OUTBOX_TEST_PG_RESTART");
    REQUIRE(restart != nullptr);
    // In the output of every run, not only of a failing one, so that any run can be repeated.
    std::cout << "chaos: CHAOS_SEED=" << seed << " CHAOS_SECONDS=" << seconds
              << " (repeat the disturbances with CHAOS_SEED=" << seed << ")" << std::endl;
    INFO("CHAOS_SEED=" << seed);
    std::mt19937 rng(seed);

    TestDatabase db;
    db.migrate();
    db.exec(kChargedAttemptsDdl);
    const int events = 1500;
    write_events(db, "example.chaos", events, 10);
    std::string record = temp_path("chaos-deliveries.txt");
    EnvMap env{{"EXAMPLE_RECORD_FILE", record},
               {"OUTBOX_LEASE_MS", "2000"},
               {"OUTBOX_BATCH_SIZE", "20"},
               {"OUTBOX_INITIAL_DELAY_MS", "50"},
               {"OUTBOX_MAX_DELAY_MS", "500"}};
    std::vector<Instance> all; // every instance started, killed ones included
    auto start_instance = [&] {
        Instance inst;
        inst.name = "chaos-" + std::to_string(all.size() + 1);
        EnvMap e = env;
        e["OUTBOX_INSTANCE_ID"] = inst.name;
        inst.service = std::make_unique<Service>(db, e, OUTBOX_EXAMPLE_APP);
        all.push_back(std::move(inst));
        return all.size() - 1;
    };
    std::vector<size_t> live; // indexes into `all`
    for (int i = 0; i < 3; ++i) {
        live.push_back(start_instance());
    }

    long instance_kills = 0, db_restarts = 0;
    std::set<pid_t> killed_handlers;
    const std::string finished_sql =
        R"(SELECT count(*) FROM "Outbox" WHERE status IN ('COMPLETED', 'FAILED'))";
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < until) {
        // Each step waits for some progress (or a short deadline) rather than a fixed sleep, so
        // disturbances land while work is actually happening.
        long before = db.count(finished_sql);
        wait_until([&] { return db.count(finished_sql) > before + 50; }, 1500ms);
        switch (rng() % 6) {
        case 0: { // SIGKILL an instance and start a replacement
            size_t& slot = live[rng() % live.size()];
            Instance& victim = all[slot];
            victim.service->process().send_signal(SIGKILL);
            victim.service->process().wait_exit(10s);
            victim.killed = true;
            slot = start_instance();
            ++instance_kills;
            break;
        }
        case 1:
        case 2:
        case 3: { // SIGKILL a handler process of some instance
            auto kids = children_of(all[live[rng() % live.size()]].service->process().pid());
            if (!kids.empty()) {
                pid_t victim = kids[rng() % kids.size()];
                if (::kill(victim, SIGKILL) == 0) {
                    killed_handlers.insert(victim);
                }
            }
            break;
        }
        case 4:
            if (db_restarts < 3) {
                auto r = run_process(restart, SpawnOptions{}, 90s);
                CHECK(r.status.exited_with(0));
                ++db_restarts;
            }
            break;
        default:
            break;
        }
    }

    // Calm: everything must settle.
    bool settled = wait_until(
        [&] {
            return db.count(
                       R"(SELECT count(*) FROM "Outbox" WHERE status IN ('PENDING', 'PROCESSING'))") ==
                   0;
        },
        180s, 200ms);
    if (!settled) {
        for (size_t i : live) {
            std::string log = all[i].service->log();
            UNSCOPED_INFO("log tail of " << all[i].name << ":\n"
                                         << log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
        }
        UNSCOPED_INFO(db.scalar(
            R"(SELECT string_agg(status || ':' || n, ' ') FROM (SELECT status, count(*) n FROM "Outbox" GROUP BY 1) x)"));
    }
    REQUIRE(settled);

    // Where every event ended: the ones rejected by design in the dead-letter queue with the
    // handler's reason, every other one COMPLETED.
    std::set<std::string> completed_ids, failed_ids, rejected_by_design;
    {
        outbox::PgResult r = db.exec(R"(SELECT id, status FROM "Outbox")");
        REQUIRE(r.rows() == events);
        for (int i = 0; i < r.rows(); ++i) {
            std::string id = r.value(i, 0);
            (r.value(i, 1) == "COMPLETED" ? completed_ids : failed_ids).insert(id);
            if (fate_of(id) == kRejected) {
                rejected_by_design.insert(id);
            }
        }
    }
    // Counted rather than compared as sets, so that a failure prints numbers, not 1500 ids.
    auto count_missing = [](const std::set<std::string>& from, const std::set<std::string>& in) {
        return std::count_if(from.begin(), from.end(),
                             [&](const std::string& id) { return in.count(id) == 0; });
    };
    CHECK(count_missing(rejected_by_design, failed_ids) == 0);
    CHECK(count_missing(failed_ids, rejected_by_design) == 0);
    CHECK(static_cast<long>(failed_ids.size()) ==
          db.count(R"(SELECT count(*) FROM "DlqEventLog")"));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "DlqEventLog" WHERE "failureReason" NOT LIKE '%chaos: rejected%')") ==
        0);
    // The events delivered are exactly the COMPLETED ones: none lost, none dead-lettered after
    // its handler had succeeded.
    std::vector<ChaosDelivery> deliveries = read_chaos_deliveries(record);
    std::map<std::string, std::vector<ChaosDelivery>> by_event;
    for (const auto& d : deliveries) {
        by_event[d.id].push_back(d);
    }
    std::set<std::string> delivered_ids;
    for (const auto& [id, list] : by_event) {
        delivered_ids.insert(id);
    }
    CHECK(count_missing(completed_ids, delivered_ids) == 0);
    CHECK(count_missing(delivered_ids, completed_ids) == 0);

    // What the test needs to explain: the charges, the instances (by supervisor pid and by lease
    // owner name) and their logs, read now that every event has settled.
    std::map<std::pair<std::string, int>, std::string> charged; // (id, attempt) -> error
    {
        outbox::PgResult r =
            db.exec("SELECT id, retry_count, COALESCE(last_error, '') FROM chaos_charged_attempts");
        long charged_twice = 0;
        for (int i = 0; i < r.rows(); ++i) {
            bool added =
                charged.emplace(std::pair{r.value(i, 0), std::stoi(r.value(i, 1))}, r.value(i, 2))
                    .second;
            charged_twice += added ? 0 : 1;
        }
        // Each charge raises "retryCount" by one: one attempt charged twice is a bug.
        CHECK(charged_twice == 0);
    }
    std::map<pid_t, size_t> instance_by_pid;
    std::map<std::string, size_t> instance_by_name;
    std::vector<std::string> logs;
    for (size_t i = 0; i < all.size(); ++i) {
        instance_by_pid[all[i].service->process().pid()] = i;
        instance_by_name[all[i].name] = i;
        logs.push_back(all[i].service->log());
    }
    if (const char* dir = std::getenv("CHAOS_LOG_DIR"); dir != nullptr && *dir != '\0') {
        for (size_t i = 0; i < all.size(); ++i) {
            std::ofstream(std::string(dir) + "/" + all[i].name + ".log") << logs[i];
        }
        std::filesystem::copy_file(record, std::string(dir) + "/deliveries.txt",
                                   std::filesystem::copy_options::overwrite_existing);
    }
    std::ostringstream unexplained;

    // Every charged attempt.
    Tally<Charge, kCharges> charges{
        {"crash by design (SIGSEGV on attempt 1)", "failure by design (attempts 1 and 2)",
         "rejected by design (dead-lettered)", "hang by design, timed out (attempt 1)",
         "timed out, no hang by design", "handler process SIGKILLed by the test",
         "lease expired, its instance SIGKILLed by the test",
         "lease expired, not started for want of a renewal", "lease expired, its instance alive",
         "unexplained"}};
    auto classify_charge = [&](const std::string& id, int attempt,
                               const std::string& error) -> Charge {
        size_t fate = fate_of(id);
        if (starts_with(error, "handler process ") &&
            ends_with(error, " killed by signal 11 (SIGSEGV)") && fate == kCrashOnce &&
            attempt == 1) {
            return Charge::crash_by_design;
        }
        if (ends_with(error, ": chaos: transient failure") && fate == kFailTwice && attempt <= 2) {
            return Charge::failure_by_design;
        }
        if (ends_with(error, ": chaos: rejected") && fate == kRejected) {
            return Charge::rejected_by_design;
        }
        if (starts_with(error, "timed out after ")) {
            // A handler that does not hang still times out when it is not done, or its result not
            // read, by the time the supervisor's timer fires (a slow or loaded machine).
            return fate == kHangOnce && attempt == 1 ? Charge::hang_by_design : Charge::timed_out;
        }
        if (starts_with(error, "handler process ") &&
            ends_with(error, " killed by signal 9 (SIGKILL)")) {
            pid_t pid = static_cast<pid_t>(std::stol(error.substr(16)));
            if (killed_handlers.count(pid) != 0) {
                return Charge::handler_killed;
            }
        }
        if (starts_with(error, "lease expired (owner ") && ends_with(error, ")")) {
            auto owner = instance_by_name.find(error.substr(21, error.size() - 22));
            if (owner != instance_by_name.end()) {
                if (all[owner->second].killed) {
                    return Charge::lease_expired_instance_killed;
                }
                // An instance that could not renew a lease (the database away) does not start
                // the event any more and leaves it to expire.
                return logs[owner->second].find("event " + id + " not started: its lease") !=
                               std::string::npos
                           ? Charge::lease_expired_not_started
                           : Charge::lease_expired_instance_alive;
            }
        }
        unexplained << "  event " << id << " (fate " << fate << "): attempt " << attempt
                    << " charged with \"" << error << "\"\n";
        return Charge::unexplained;
    };
    for (const auto& [key, error] : charged) {
        charges.add(classify_charge(key.first, key.second, error));
    }

    // Every delivery after the first of an event. The charge of the earlier delivery's attempt
    // says what kept its success from being recorded.
    Tally<Duplicate, kDuplicates> duplicates{
        {"its instance SIGKILLed by the test (lease expired)",
         "its handler process SIGKILLed by the test after the handler",
         "its handler process timed out after the handler",
         "lease lost while its instance lived; the instance logged it",
         "lease lost while its instance lived; not logged", "unexplained"}};
    auto explain = [&](const ChaosDelivery& earlier, const ChaosDelivery& later) -> Duplicate {
        std::ostringstream what;
        what << "  event " << earlier.id << " delivered at attempt " << earlier.attempt
             << " (handler process " << earlier.handler_pid << " of instance pid "
             << earlier.instance_pid << ") and again at attempt " << later.attempt;
        auto fail = [&](const std::string& reason) {
            unexplained << what.str() << ": " << reason << "\n";
            return Duplicate::unexplained;
        };
        if (later.attempt <= earlier.attempt) {
            return fail("no attempt was charged in between");
        }
        auto c = charged.find({earlier.id, earlier.attempt});
        if (c == charged.end()) {
            return fail("its attempt has no recorded charge");
        }
        const std::string& error = c->second;
        what << "; that attempt was charged with \"" << error << "\"";
        auto ran = instance_by_pid.find(earlier.instance_pid);
        if (ran == instance_by_pid.end()) {
            return fail("its supervisor is no instance the test started");
        }
        const Instance& instance = all[ran->second];
        if (error == "lease expired (owner " + instance.name + ")") {
            if (instance.killed) {
                return Duplicate::instance_killed;
            }
            // The supervisor logs "event ID: lease lost ..." when a renewal or an outcome finds
            // the lease gone.
            return logs[ran->second].find("event " + earlier.id + ": lease lost") !=
                           std::string::npos
                       ? Duplicate::lease_lost_logged
                       : Duplicate::lease_lost_not_logged;
        }
        if (error == "handler process " + std::to_string(earlier.handler_pid) +
                         " killed by signal 9 (SIGKILL)" &&
            killed_handlers.count(earlier.handler_pid) != 0) {
            return Duplicate::handler_killed;
        }
        if (starts_with(error, "timed out after ")) {
            return Duplicate::timed_out;
        }
        // The handler records a delivery after every failure it causes by design (crash, hang,
        // transient failure), so none of them can be charged to a recorded delivery.
        return fail("no disturbance of the test explains that charge");
    };
    for (auto& [id, list] : by_event) {
        std::sort(list.begin(), list.end(),
                  [](const auto& a, const auto& b) { return a.attempt < b.attempt; });
        for (size_t i = 1; i < list.size(); ++i) {
            duplicates.add(explain(list[i - 1], list[i]));
        }
    }

    long lease_lost_lines = 0;
    for (const auto& log : logs) {
        for (size_t at = log.find(": lease lost"); at != std::string::npos;
             at = log.find(": lease lost", at + 1)) {
            ++lease_lost_lines;
        }
    }
    std::ostringstream report;
    report << "chaos (CHAOS_SEED=" << seed << ", " << seconds << " s): " << instance_kills
           << " instance kills, " << killed_handlers.size() << " handler process kills, "
           << db_restarts << " database restarts; " << completed_ids.size() << " completed, "
           << failed_ids.size() << " dead-lettered; " << lease_lost_lines
           << " \"lease lost\" log lines\n";
    charges.print(report, "attempts charged, by cause");
    duplicates.print(report, "duplicate deliveries, by what happened to the earlier one");
    if (!unexplained.str().empty()) {
        report << "unexplained:\n" << unexplained.str();
    }
    std::cout << report.str() << std::flush;
    INFO(report.str());
    CHECK(charges[Charge::unexplained] == 0);
    CHECK(duplicates[Duplicate::unexplained] == 0);

    for (size_t i : live) {
        // An instance restarted just before the end may not have reached main() yet, and no
        // program can handle a signal before that: wait until it has said it is starting.
        wait_until(
            [&] {
                return all[i].service->log().find("starting:") != std::string::npos ||
                       !all[i].service->process().is_running();
            },
            10s);
        auto status = all[i].service->stop();
        REQUIRE(status.has_value());
        if (!status->exited_with(0)) {
            std::string log = all[i].service->log();
            INFO("instance " << i << " " << status->describe() << "; the end of its log:\n"
                             << log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
            CHECK(status->exited_with(0));
        }
    }
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'PROCESSING')") == 0);
}
