// Chaos: instances of the example application work one backlog while the test SIGKILLs instances
// and handler processes at random and restarts PostgreSQL; the handlers crash, hang and fail by
// design (examples/app.cpp, chaos_attempt()). Afterwards every event must be where its handler
// dictates: COMPLETED, or in the dead-letter queue for the ones rejected permanently. Nothing is
// lost.
//
// Delivery is at least once, so an event may be delivered again, but only for a reason the test
// can name. The handler records each attempt it sees through, a success as its last act before it
// reports it (event id, attempt, handler process pid, supervisor pid, start and end), and a trigger
// the test adds to "Outbox" keeps the error of every failed attempt charged ("lastError" keeps only
// the latest, and success clears it). So:
// - every charged attempt must be a failure the handler causes by design (its fate allows it at
//   that attempt) or one the test caused: a process it killed, a lease that expired, a timeout;
// - an event delivered again must have been charged the attempt of its earlier delivery, although
//   that delivery's handler had finished, and the charge must name a disturbance that explains it.
// The test prints both tallies by cause and fails on anything it cannot explain.
//
// Two cases. The first works a backlog of unordered events. The second (SPEC 2a, [ordering])
// gives 200 ordering keys 50 events each, written while the instances run by concurrent writers
// whose transactions overlap and whose "createdAt" says nothing of the commit order, and checks
// on top of the above that each key's events were attempted in the order in which their
// transactions committed (PostgreSQL's commit timestamps, ordering_support.h) and one at a time,
// except where a lost lease explains two attempts of a key at once.
//
// CHAOS_SECONDS sets how long the disturbances go on in each case (default 20, the short form CI
// runs; `make chaos` runs longer). CHAOS_SEED picks the disturbances (and the ordered case's
// writers): the test prints the seed it used, and CHAOS_SEED=N repeats the same sequence (their
// timing still varies). CHAOS_ORDERED_KEYS and CHAOS_ORDERED_EVENTS (per key) size the ordered
// case (default 200 and 50); its OUTBOX_ORDERING_ON_DEAD_LETTER comes from the seed unless
// CHAOS_ORDERED_POLICY (block or skip) sets it. CHAOS_LOG_DIR, an existing directory, receives
// every instance's log and the record of attempts.
#include "tests/integration/ordering_support.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
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

// The fate examples/app.cpp chaos_attempt() gives an event, from the same hash of its id (the test
// and the application use the same standard library), one in `modulus` each: 0 crashes with
// SIGSEGV on attempt 1, 1 fails on attempts 1 and 2, 2 is rejected permanently, 3 hangs on attempt
// 1; the rest succeed. "example.chaos" uses 10, "example.chaos.ordered" 40.
enum Fate { kCrashOnce = 0, kFailTwice = 1, kRejected = 2, kHangOnce = 3 };
size_t fate_of(const std::string& id, size_t modulus) {
    return std::hash<std::string>{}(id) % modulus;
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

// The instances of one case and the disturbances the test inflicts on them. Belongs to the test's
// thread (the instances are its ChildProcesses).
class Chaos {
  public:
    // Instances are named `name_prefix` 1, 2, ... (their lease owner names).
    Chaos(const TestDatabase& db, std::string name_prefix, EnvMap env, std::mt19937& rng)
        : db_(db), name_prefix_(std::move(name_prefix)), env_(std::move(env)), rng_(rng) {
        const char* restart = std::getenv("OUTBOX_TEST_PG_RESTART");
        REQUIRE(restart != nullptr);
        restart_ = restart;
    }

    void start_instances(int n) {
        for (int i = 0; i < n; ++i) {
            live_.push_back(start_instance());
        }
    }

    // One disturbance at random, after some progress (or a short deadline) rather than a fixed
    // sleep, so that disturbances land while work is actually happening. `progress_sql` counts
    // finished events.
    void disturb_at_random(const std::string& progress_sql) {
        long before = db_.count(progress_sql);
        wait_until([&] { return db_.count(progress_sql) > before + 50; }, 1500ms);
        switch (rng_() % 6) {
        case 0:
            kill_instance();
            break;
        case 1:
        case 2:
        case 3:
            kill_handler_process();
            break;
        case 4:
            if (db_restarts_ < 3) {
                restart_database();
            }
            break;
        default:
            break;
        }
    }

    // SIGKILL an instance and start a replacement.
    void kill_instance() {
        size_t& slot = live_[rng_() % live_.size()];
        Instance& victim = all_[slot];
        victim.service->process().send_signal(SIGKILL);
        victim.service->process().wait_exit(10s);
        victim.killed = true;
        slot = start_instance();
        ++instance_kills_;
    }

    // SIGKILL a handler process of some instance.
    void kill_handler_process() {
        auto kids = children_of(all_[live_[rng_() % live_.size()]].service->process().pid());
        if (!kids.empty()) {
            pid_t victim = kids[rng_() % kids.size()];
            if (::kill(victim, SIGKILL) == 0) {
                killed_handlers_.insert(victim);
            }
        }
    }

    // pg_ctl restart -m fast: every connection is cut (tests/run_with_postgres.sh).
    void restart_database() {
        auto r = run_process(restart_, SpawnOptions{}, 90s);
        CHECK(r.status.exited_with(0));
        ++db_restarts_;
    }

    // Waits until no event is PENDING or PROCESSING, calling `each_poll` (if any) before every
    // look; on failure, reports the live instances' logs.
    bool settle(std::chrono::milliseconds timeout, const std::function<void()>& each_poll = {}) {
        bool settled = wait_until(
            [&] {
                if (each_poll) {
                    each_poll();
                }
                return db_.count(
                           R"(SELECT count(*) FROM "Outbox" WHERE status IN ('PENDING', 'PROCESSING'))") ==
                       0;
            },
            timeout, 200ms);
        if (!settled) {
            for (size_t i : live_) {
                std::string log = all_[i].service->log();
                UNSCOPED_INFO("log tail of "
                              << all_[i].name << ":\n"
                              << log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
            }
            UNSCOPED_INFO(db_.scalar(
                R"(SELECT string_agg(status || ':' || n, ' ') FROM (SELECT status, count(*) n FROM "Outbox" GROUP BY 1) x)"));
        }
        return settled;
    }

    // Reads every instance's log: call once everything has settled.
    void collect_logs() {
        logs_.clear();
        for (auto& instance : all_) {
            logs_.push_back(instance.service->log());
        }
    }

    // SIGTERM to every live instance: each must exit 0.
    void stop_all() {
        for (size_t i : live_) {
            // An instance restarted just before the end may not have reached main() yet, and no
            // program can handle a signal before that: wait until it has said it is starting.
            wait_until(
                [&] {
                    return all_[i].service->log().find("starting:") != std::string::npos ||
                           !all_[i].service->process().is_running();
                },
                10s);
            auto status = all_[i].service->stop();
            REQUIRE(status.has_value());
            if (!status->exited_with(0)) {
                std::string log = all_[i].service->log();
                INFO("instance " << i << " " << status->describe() << "; the end of its log:\n"
                                 << log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
                CHECK(status->exited_with(0));
            }
        }
    }

    // CHAOS_LOG_DIR receives the logs and the record.
    void save_logs(const std::string& record, const std::string& prefix) const {
        const char* dir = std::getenv("CHAOS_LOG_DIR");
        if (dir == nullptr || *dir == '\0') {
            return;
        }
        for (size_t i = 0; i < all_.size(); ++i) {
            std::ofstream(std::string(dir) + "/" + all_[i].name + ".log") << logs_[i];
        }
        std::filesystem::copy_file(record, std::string(dir) + "/" + prefix + "attempts.txt",
                                   std::filesystem::copy_options::overwrite_existing);
    }

    std::string summary() const {
        std::ostringstream out;
        out << instance_kills_ << " instance kills, " << killed_handlers_.size()
            << " handler process kills, " << db_restarts_ << " database restarts";
        return out.str();
    }

    const std::vector<Instance>& all() const { return all_; }
    const std::vector<std::string>& logs() const { return logs_; }
    const std::set<pid_t>& killed_handlers() const { return killed_handlers_; }
    long db_restarts() const { return db_restarts_; }

  private:
    size_t start_instance() {
        Instance inst;
        inst.name = name_prefix_ + std::to_string(all_.size() + 1);
        EnvMap e = env_;
        e["OUTBOX_INSTANCE_ID"] = inst.name;
        inst.service = std::make_unique<Service>(db_, e, OUTBOX_EXAMPLE_APP);
        all_.push_back(std::move(inst));
        return all_.size() - 1;
    }
    const TestDatabase& db_;
    std::string name_prefix_;
    EnvMap env_;
    std::mt19937& rng_;
    std::string restart_;
    std::vector<Instance> all_; // every instance started, killed ones included
    std::vector<size_t> live_;  // indexes into all_
    std::set<pid_t> killed_handlers_;
    long instance_kills_ = 0;
    long db_restarts_ = 0;
    std::vector<std::string> logs_;
};

// Names the cause of every charged attempt and of every duplicate delivery, from the charges the
// trigger kept, the disturbances of `chaos` and the instances' logs.
class Causes {
  public:
    Causes(const TestDatabase& db, const Chaos& chaos, size_t fate_modulus)
        : chaos_(chaos), modulus_(fate_modulus) {
        outbox::PgResult r =
            db.exec("SELECT id, retry_count, COALESCE(last_error, '') FROM chaos_charged_attempts");
        for (int i = 0; i < r.rows(); ++i) {
            bool added =
                charged_.emplace(std::pair{r.value(i, 0), std::stoi(r.value(i, 1))}, r.value(i, 2))
                    .second;
            charged_twice_ += added ? 0 : 1;
        }
        const auto& all = chaos_.all();
        for (size_t i = 0; i < all.size(); ++i) {
            instance_by_pid_[all[i].service->process().pid()] = i;
            instance_by_name_[all[i].name] = i;
        }
    }

    // Each charge raises "retryCount" by one: one attempt charged twice is a bug.
    long charged_twice() const { return charged_twice_; }

    void classify_charges() {
        for (const auto& [key, error] : charged_) {
            charges.add(classify_charge(key.first, key.second, error));
        }
    }

    // Every delivery after the first of an event. The charge of the earlier delivery's attempt
    // says what kept its success from being recorded.
    void explain_duplicates(const std::vector<Attempt>& successes) {
        std::map<std::string, std::vector<Attempt>> by_event;
        for (const auto& d : successes) {
            by_event[d.id].push_back(d);
        }
        for (auto& [id, list] : by_event) {
            std::sort(list.begin(), list.end(),
                      [](const auto& a, const auto& b) { return a.attempt < b.attempt; });
            for (size_t i = 1; i < list.size(); ++i) {
                duplicates.add(explain(list[i - 1], list[i]));
            }
        }
    }

    // Why an attempt may still have run when a later attempt of its key started: its lease was
    // gone (the sweep charged it "lease expired") while its handler ran on. "" when nothing
    // explains it.
    std::string overlap_reason(const Attempt& earlier) const {
        auto c = charged_.find({earlier.id, earlier.attempt});
        auto ran = instance_by_pid_.find(earlier.instance_pid);
        if (c == charged_.end() || ran == instance_by_pid_.end()) {
            return "";
        }
        const Instance& instance = chaos_.all()[ran->second];
        if (c->second != "lease expired (owner " + instance.name + ")") {
            return "";
        }
        return instance.killed ? "lease expired, instance SIGKILLed" : "lease lost, instance alive";
    }

    std::string unexplained() const { return unexplained_.str(); }

    Tally<Charge, kCharges> charges{
        {"crash by design (SIGSEGV on attempt 1)", "failure by design (attempts 1 and 2)",
         "rejected by design (dead-lettered)", "hang by design, timed out (attempt 1)",
         "timed out, no hang by design", "handler process SIGKILLed by the test",
         "lease expired, its instance SIGKILLed by the test",
         "lease expired, not started for want of a renewal", "lease expired, its instance alive",
         "unexplained"}};
    Tally<Duplicate, kDuplicates> duplicates{
        {"its instance SIGKILLed by the test (lease expired)",
         "its handler process SIGKILLed by the test after the handler",
         "its handler process timed out after the handler",
         "lease lost while its instance lived; the instance logged it",
         "lease lost while its instance lived; not logged", "unexplained"}};

  private:
    Charge classify_charge(const std::string& id, int attempt, const std::string& error) {
        size_t fate = fate_of(id, modulus_);
        const auto& all = chaos_.all();
        const auto& logs = chaos_.logs();
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
            if (chaos_.killed_handlers().count(pid) != 0) {
                return Charge::handler_killed;
            }
        }
        if (starts_with(error, "lease expired (owner ") && ends_with(error, ")")) {
            auto owner = instance_by_name_.find(error.substr(21, error.size() - 22));
            if (owner != instance_by_name_.end()) {
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
        unexplained_ << "  event " << id << " (fate " << fate << "): attempt " << attempt
                     << " charged with \"" << error << "\"\n";
        return Charge::unexplained;
    }

    Duplicate explain(const Attempt& earlier, const Attempt& later) {
        std::ostringstream what;
        what << "  event " << earlier.id << " delivered at attempt " << earlier.attempt
             << " (handler process " << earlier.handler_pid << " of instance pid "
             << earlier.instance_pid << ") and again at attempt " << later.attempt;
        auto fail = [&](const std::string& reason) {
            unexplained_ << what.str() << ": " << reason << "\n";
            return Duplicate::unexplained;
        };
        if (later.attempt <= earlier.attempt) {
            return fail("no attempt was charged in between");
        }
        auto c = charged_.find({earlier.id, earlier.attempt});
        if (c == charged_.end()) {
            return fail("its attempt has no recorded charge");
        }
        const std::string& error = c->second;
        what << "; that attempt was charged with \"" << error << "\"";
        auto ran = instance_by_pid_.find(earlier.instance_pid);
        if (ran == instance_by_pid_.end()) {
            return fail("its supervisor is no instance the test started");
        }
        const Instance& instance = chaos_.all()[ran->second];
        if (error == "lease expired (owner " + instance.name + ")") {
            if (instance.killed) {
                return Duplicate::instance_killed;
            }
            // The supervisor logs "event ID: lease lost ..." when a renewal or an outcome finds
            // the lease gone.
            return chaos_.logs()[ran->second].find("event " + earlier.id + ": lease lost") !=
                           std::string::npos
                       ? Duplicate::lease_lost_logged
                       : Duplicate::lease_lost_not_logged;
        }
        if (error == "handler process " + std::to_string(earlier.handler_pid) +
                         " killed by signal 9 (SIGKILL)" &&
            chaos_.killed_handlers().count(earlier.handler_pid) != 0) {
            return Duplicate::handler_killed;
        }
        if (starts_with(error, "timed out after ")) {
            return Duplicate::timed_out;
        }
        // A failure the handler causes by design (crash, hang, transient failure) is never
        // recorded as a success ("ok"), so none of them can be charged to a recorded delivery.
        return fail("no disturbance of the test explains that charge");
    }

    const Chaos& chaos_;
    size_t modulus_;
    std::map<std::pair<std::string, int>, std::string> charged_; // (id, attempt) -> error
    long charged_twice_ = 0;
    std::map<pid_t, size_t> instance_by_pid_;
    std::map<std::string, size_t> instance_by_name_;
    std::ostringstream unexplained_;
};

// Counted rather than compared as sets, so that a failure prints numbers, not thousands of ids.
long count_missing(const std::set<std::string>& from, const std::set<std::string>& in) {
    return std::count_if(from.begin(), from.end(),
                         [&](const std::string& id) { return in.count(id) == 0; });
}

// Where every event ended: the ones rejected by design in the dead-letter queue with the
// handler's reason, every other one COMPLETED; and the events delivered (recorded "ok") are exactly
// the COMPLETED ones: none lost, none dead-lettered after its handler had succeeded. Returns the
// counts of completed and dead-lettered events.
std::pair<size_t, size_t> check_final_places(const TestDatabase& db, long expected_events,
                                             size_t modulus,
                                             const std::vector<Attempt>& successes) {
    std::set<std::string> completed_ids, failed_ids, rejected_by_design;
    outbox::PgResult r = db.exec(R"(SELECT id, status FROM "Outbox")");
    REQUIRE(r.rows() == expected_events);
    for (int i = 0; i < r.rows(); ++i) {
        std::string id = r.value(i, 0);
        (r.value(i, 1) == "COMPLETED" ? completed_ids : failed_ids).insert(id);
        if (fate_of(id, modulus) == kRejected) {
            rejected_by_design.insert(id);
        }
    }
    CHECK(count_missing(rejected_by_design, failed_ids) == 0);
    CHECK(count_missing(failed_ids, rejected_by_design) == 0);
    CHECK(static_cast<long>(failed_ids.size()) ==
          db.count(R"(SELECT count(*) FROM "DlqEventLog")"));
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "DlqEventLog" WHERE "failureReason" NOT LIKE '%chaos: rejected%')") ==
        0);
    std::set<std::string> delivered_ids;
    for (const auto& d : successes) {
        delivered_ids.insert(d.id);
    }
    CHECK(count_missing(completed_ids, delivered_ids) == 0);
    CHECK(count_missing(delivered_ids, completed_ids) == 0);
    return {completed_ids.size(), failed_ids.size()};
}

std::vector<Attempt> successes_of(const std::vector<Attempt>& attempts) {
    std::vector<Attempt> out;
    std::copy_if(attempts.begin(), attempts.end(), std::back_inserter(out),
                 [](const Attempt& a) { return a.outcome == "ok"; });
    return out;
}

long count_lease_lost_lines(const std::vector<std::string>& logs) {
    long n = 0;
    for (const auto& log : logs) {
        for (size_t at = log.find(": lease lost"); at != std::string::npos;
             at = log.find(": lease lost", at + 1)) {
            ++n;
        }
    }
    return n;
}

// ---- the ordered case's writers ----------------------------------------------------------------

// How a writer's transaction is shaped. Each writes one to four events, of keys in ascending order
// (so that writers, which lock a key's sequence row when they insert an event of it, cannot
// deadlock one another), and commits.
enum class TxShape {
    // outbox_write_event() with the ordering key, at once.
    function_call,
    // BEGIN, then wait until other writers have committed a few more events (or a short
    // deadline), then write: "createdAt" (the transaction's start) is older than theirs, and the
    // commit later.
    held_before_writing,
    // Write, then hold the transaction open while other writers go on, some of them waiting
    // behind this one's key locks.
    held_after_writing,
    // As an application that knows the columns: INSERT into "EventLog" and "Outbox" directly,
    // "orderingKey" set, and "createdAt" from the writer's own clock, which runs backwards.
    own_clock_insert,
};

struct PlannedEvent {
    std::string key;
    int n = 0; // the event's number among its key's (names it; says nothing of the order)
};

struct PlannedTx {
    TxShape shape = TxShape::function_call;
    std::vector<PlannedEvent> events;
};

// keys x per_key events, in a random interleaving, cut into transactions of random shapes.
std::vector<PlannedTx> plan_writes(int keys, int per_key, std::mt19937& rng) {
    std::vector<PlannedEvent> all;
    for (int k = 0; k < keys; ++k) {
        char key[16];
        std::snprintf(key, sizeof key, "key-%03d", k);
        for (int n = 0; n < per_key; ++n) {
            all.push_back({key, n});
        }
    }
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<PlannedTx> txs;
    for (size_t at = 0; at < all.size();) {
        PlannedTx tx;
        tx.shape = static_cast<TxShape>(rng() % 4);
        size_t size = std::min<size_t>(1 + rng() % 4, all.size() - at);
        tx.events.assign(all.begin() + static_cast<long>(at),
                         all.begin() + static_cast<long>(at + size));
        std::stable_sort(tx.events.begin(), tx.events.end(),
                         [](const auto& a, const auto& b) { return a.key < b.key; });
        txs.push_back(std::move(tx));
        at += size;
    }
    return txs;
}

// Threads, each with its own connection, that commit the planned transactions paced evenly over
// a window, so that events keep arriving while the instances work and the test disturbs them.
// They ride out database restarts: a transaction cut by one is written again unless it had
// committed (its first event exists). No Catch2 assertion here (not thread-safe): problems are
// collected and checked by the test's thread after join().
class OrderedWriters {
  public:
    OrderedWriters(std::string conninfo, std::vector<PlannedTx> plan, std::string type)
        : conninfo_(std::move(conninfo)), plan_(std::move(plan)), type_(std::move(type)) {}
    ~OrderedWriters() { join(); }

    void start(int threads, std::chrono::milliseconds window) {
        start_ = std::chrono::steady_clock::now();
        interval_ = std::chrono::duration_cast<std::chrono::nanoseconds>(window) /
                    static_cast<long>(std::max<size_t>(plan_.size(), 1));
        for (int w = 0; w < threads; ++w) {
            threads_.emplace_back([this, w] { run(w); });
        }
    }

    void join() {
        for (auto& t : threads_) {
            if (t.joinable()) {
                t.join();
            }
        }
    }

    bool done() const { return finished_threads_ == static_cast<int>(threads_.size()); }
    long committed_events() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return committed_events_;
    }
    long retried_transactions() const { return retried_; }
    std::vector<std::string> errors() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return errors_;
    }
    // Retries by SQLSTATE (deadlocks and the like), for the report.
    std::map<std::string, long> retry_causes() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return retry_causes_;
    }

  private:
    static std::string event_key(const PlannedEvent& e) {
        return "ord-" + e.key + "-" + std::to_string(e.n);
    }

    void fail(const std::string& what) {
        std::lock_guard<std::mutex> lock(mutex_);
        errors_.push_back(what);
    }

    // Waits until other writers have committed `more` events since `since`, or `deadline` passed.
    void wait_for_others(long since, long more, std::chrono::milliseconds deadline) {
        std::unique_lock<std::mutex> lock(mutex_);
        committed_cv_.wait_for(lock, deadline,
                               [&] { return committed_events_ >= since + more || stopping_; });
    }

    bool connect(outbox::PgConn& conn, std::chrono::steady_clock::time_point give_up) {
        for (;;) {
            std::string error;
            conn = outbox::pg_connect(conninfo_, error);
            if (conn) {
                return true;
            }
            if (std::chrono::steady_clock::now() > give_up) {
                fail("cannot reconnect: " + error);
                return false;
            }
            // The database is restarting: try again shortly (bounded by give_up).
            std::this_thread::sleep_for(100ms);
        }
    }

    void run(int w) {
        outbox::PgConn conn;
        auto give_up = [] {
            return std::chrono::steady_clock::now() + 90s;
        };
        if (!connect(conn, give_up())) {
            ++finished_threads_;
            return;
        }
        for (;;) {
            size_t index = next_.fetch_add(1);
            if (index >= plan_.size()) {
                break;
            }
            std::this_thread::sleep_until(start_ + interval_ * static_cast<long>(index));
            const PlannedTx& tx = plan_[index];
            auto deadline = give_up();
            bool first_try = true;
            for (;;) {
                if (PQstatus(conn.get()) != CONNECTION_OK && !connect(conn, deadline)) {
                    break;
                }
                std::string sqlstate;
                std::string error;
                if (!first_try && already_committed(conn.get(), tx)) {
                    break;
                }
                if (write(conn.get(), w, index, tx, sqlstate, error)) {
                    {
                        std::lock_guard<std::mutex> lock(mutex_);
                        committed_events_ += static_cast<long>(tx.events.size());
                    }
                    committed_cv_.notify_all();
                    break;
                }
                first_try = false;
                ++retried_;
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    ++retry_causes_[sqlstate.empty() ? "connection" : sqlstate];
                }
                bool transient = sqlstate.empty() || sqlstate == "40P01" || sqlstate == "40001" ||
                                 sqlstate.compare(0, 2, "08") == 0 ||
                                 sqlstate.compare(0, 2, "57") == 0;
                if (!transient || std::chrono::steady_clock::now() > deadline) {
                    fail("transaction " + std::to_string(index) + " failed: " + sqlstate + " " +
                         error);
                    break;
                }
                if (PQstatus(conn.get()) != CONNECTION_OK) {
                    conn.reset();
                }
            }
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        committed_cv_.notify_all();
        ++finished_threads_;
    }

    bool already_committed(PGconn* conn, const PlannedTx& tx) {
        outbox::PgResult r =
            outbox::pg_exec_params(conn, R"(SELECT count(*) FROM "EventLog" WHERE "eventKey" = $1)",
                                   {event_key(tx.events.front())});
        return r.ok() && r.value(0, 0) == "1";
    }

    // One attempt at the transaction; false with the SQLSTATE ("" for a lost connection) and the
    // error when it did not commit.
    bool write(PGconn* conn, int w, size_t index, const PlannedTx& tx, std::string& sqlstate,
               std::string& error) {
        auto step = [&](outbox::PgResult r) {
            if (r.ok()) {
                return true;
            }
            sqlstate = PQstatus(conn) == CONNECTION_OK ? r.sqlstate() : "";
            error = r.error();
            return false;
        };
        auto rollback = [&] {
            if (PQstatus(conn) == CONNECTION_OK) {
                outbox::pg_exec(conn, "ROLLBACK");
            }
            return false;
        };
        if (!step(outbox::pg_exec(conn, "BEGIN"))) {
            return false;
        }
        if (tx.shape == TxShape::held_before_writing) {
            if (!step(outbox::pg_exec(conn, "SELECT now()"))) {
                return rollback();
            }
            wait_for_others(committed_events(), 3, 100ms);
        }
        for (size_t j = 0; j < tx.events.size(); ++j) {
            const PlannedEvent& e = tx.events[j];
            std::string payload = R"({"key": ")" + e.key + R"(", "n": )" + std::to_string(e.n) +
                                  R"(, "w": )" + std::to_string(w) + R"(, "t": )" +
                                  std::to_string(index) + R"(, "j": )" + std::to_string(j) + "}";
            bool ok;
            if (tx.shape == TxShape::own_clock_insert) {
                // The writer's clock runs backwards: the later the transaction in the plan, the
                // older its "createdAt".
                std::string seconds_back = std::to_string(index * 10 + j);
                ok = step(
                    outbox::pg_exec_params(conn, R"(
                    WITH l AS (
                        INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "eventType",
                                                "payload", "createdAt")
                        VALUES ('evl_' || md5($1), $1, 'tenant-1', $2, $3::jsonb,
                                timestamptz '2030-01-01 00:00:00+00' - make_interval(secs => $5::int))
                        RETURNING "id", "createdAt")
                    INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload",
                                          "maxRetries", "orderingKey", "createdAt", "updatedAt")
                    SELECT 'obx_' || md5($1), l."id", 'tenant-1', $2, $3::jsonb, 20, $4,
                           l."createdAt", now()
                      FROM l)",
                                           {event_key(e), type_, payload, e.key, seconds_back}));
            } else {
                ok = step(outbox::pg_exec_params(
                    conn,
                    "SELECT outbox_id FROM outbox_write_event($1, 'tenant-1', $2, $3::jsonb, NULL, "
                    "NULL, NULL, 20, $4)",
                    {event_key(e), type_, payload, e.key}));
            }
            if (!ok) {
                return rollback();
            }
        }
        if (tx.shape == TxShape::held_after_writing) {
            wait_for_others(committed_events(), 3, 50ms);
        }
        if (!step(outbox::pg_exec(conn, "COMMIT"))) {
            return rollback();
        }
        return true;
    }

    std::string conninfo_;
    std::vector<PlannedTx> plan_;
    std::string type_;
    std::vector<std::thread> threads_;
    std::chrono::steady_clock::time_point start_;
    std::chrono::steady_clock::duration interval_{};
    std::atomic<size_t> next_{0};
    std::atomic<int> finished_threads_{0};
    std::atomic<long> retried_{0};
    mutable std::mutex mutex_;
    std::condition_variable committed_cv_;
    long committed_events_ = 0; // under mutex_
    bool stopping_ = false;     // under mutex_: a writer ran out of work; nobody waits for it
    std::vector<std::string> errors_;
    std::map<std::string, long> retry_causes_;
};

} // namespace

TEST_CASE("chaos: kills, restarts and misbehaving handlers lose nothing", "[chaos]") {
    const long seconds = env_long("CHAOS_SECONDS", 20);
    const unsigned seed = static_cast<unsigned>(env_long("CHAOS_SEED", std::random_device{}()));
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
    std::string record = temp_path("chaos-attempts.txt");
    Chaos chaos(db, "chaos-",
                {{"EXAMPLE_RECORD_FILE", record},
                 {"OUTBOX_LEASE_MS", "2000"},
                 {"OUTBOX_BATCH_SIZE", "20"},
                 {"OUTBOX_INITIAL_DELAY_MS", "50"},
                 {"OUTBOX_MAX_DELAY_MS", "500"}},
                rng);
    chaos.start_instances(3);

    const std::string finished_sql =
        R"(SELECT count(*) FROM "Outbox" WHERE status IN ('COMPLETED', 'FAILED'))";
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < until) {
        chaos.disturb_at_random(finished_sql);
    }

    // Calm: everything must settle.
    REQUIRE(chaos.settle(180s));
    std::vector<Attempt> successes = successes_of(read_attempts(record));
    auto [completed, dead_lettered] = check_final_places(db, events, 10, successes);

    // What the test needs to explain: the charges, the instances (by supervisor pid and by lease
    // owner name) and their logs, read now that every event has settled.
    chaos.collect_logs();
    chaos.save_logs(record, "");
    Causes causes(db, chaos, 10);
    CHECK(causes.charged_twice() == 0);
    causes.classify_charges();
    causes.explain_duplicates(successes);

    std::ostringstream report;
    report << "chaos (CHAOS_SEED=" << seed << ", " << seconds << " s): " << chaos.summary() << "; "
           << completed << " completed, " << dead_lettered << " dead-lettered; "
           << count_lease_lost_lines(chaos.logs()) << " \"lease lost\" log lines\n";
    causes.charges.print(report, "attempts charged, by cause");
    causes.duplicates.print(report, "duplicate deliveries, by what happened to the earlier one");
    if (!causes.unexplained().empty()) {
        report << "unexplained:\n" << causes.unexplained();
    }
    std::cout << report.str() << std::flush;
    INFO(report.str());
    CHECK(causes.charges[Charge::unexplained] == 0);
    CHECK(causes.duplicates[Duplicate::unexplained] == 0);

    chaos.stop_all();
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'PROCESSING')") == 0);
}

TEST_CASE("chaos: ordering keys keep commit order under kills, restarts and failures",
          "[chaos][ordering]") {
    const long seconds = env_long("CHAOS_SECONDS", 20);
    const unsigned seed = static_cast<unsigned>(env_long("CHAOS_SEED", std::random_device{}()));
    const int keys = static_cast<int>(env_long("CHAOS_ORDERED_KEYS", 200));
    const int per_key = static_cast<int>(env_long("CHAOS_ORDERED_EVENTS", 50));
    std::mt19937 rng(seed);
    // The dead-letter policy comes from the seed as well (CHAOS_ORDERED_POLICY overrides it), so
    // that runs cover both.
    const char* policy_env = std::getenv("CHAOS_ORDERED_POLICY");
    const std::string policy = policy_env != nullptr && *policy_env != '\0' ? policy_env
                               : rng() % 2 == 0                             ? "block"
                                                                            : "skip";
    std::cout << "chaos ordered: CHAOS_SEED=" << seed << " CHAOS_SECONDS=" << seconds
              << " CHAOS_ORDERED_KEYS=" << keys << " CHAOS_ORDERED_EVENTS=" << per_key
              << " CHAOS_ORDERED_POLICY=" << policy
              << " (repeat the disturbances, the policy and the writers' plan with CHAOS_SEED="
              << seed << ")" << std::endl;
    INFO("CHAOS_SEED=" << seed);
    REQUIRE((policy == "block" || policy == "skip"));

    TestDatabase db;
    // The evidence of commit order: without it the test could only trust the service's own
    // sequence.
    INFO("the test cluster must run with track_commit_timestamp = on (tests/run_with_postgres.sh)");
    REQUIRE(db.scalar("SHOW track_commit_timestamp") == "on");
    db.migrate();
    db.exec(kChargedAttemptsDdl);

    const std::string type = "example.chaos.ordered";
    const long events = static_cast<long>(keys) * per_key;
    std::string record = temp_path("chaos-ordered-attempts.txt");
    // The events rejected by design go to the dead-letter queue. Under the policy skip
    // (OUTBOX_ORDERING_ON_DEAD_LETTER) their keys continue at once; under block (the default) they
    // stop their keys until an operator acts: the test is that operator, and skips every dead
    // letter it finds (`dlq skip`) between disturbances, under either policy (under skip, a skip
    // finds the key moved on already). A short hold in the handler makes two attempts of one key
    // at the same time visible in the record.
    Chaos chaos(db, "chaos-ordered-",
                {{"EXAMPLE_RECORD_FILE", record},
                 {"EXAMPLE_HOLD_MS", "2"},
                 {"OUTBOX_WORKERS", "4"},
                 {"OUTBOX_LEASE_MS", "2000"},
                 {"OUTBOX_BATCH_SIZE", "20"},
                 {"OUTBOX_INITIAL_DELAY_MS", "50"},
                 {"OUTBOX_MAX_DELAY_MS", "500"},
                 {"OUTBOX_ORDERING_ON_DEAD_LETTER", policy}},
                rng);
    chaos.start_instances(3);

    // The writers' plan comes from the seed too; they write over three quarters of the
    // disturbances' time, so that events keep arriving under fire.
    OrderedWriters writers(db.conninfo(), plan_writes(keys, per_key, rng), type);
    auto began = std::chrono::steady_clock::now();
    writers.start(8, std::chrono::milliseconds(seconds * 750));

    long keys_released_by_skips = 0;
    auto skip_dead_letters = [&] {
        keys_released_by_skips +=
            db.count(R"(SELECT count(*) FROM "DlqEventLog" d WHERE outbox_skip_dlq(d."id"))");
    };

    // One database restart at about the middle for certain, the other disturbances at random.
    const std::string finished_sql =
        R"(SELECT count(*) FROM "Outbox" WHERE status IN ('COMPLETED', 'FAILED'))";
    auto until = began + std::chrono::seconds(seconds);
    bool restarted_mid_run = false;
    while (std::chrono::steady_clock::now() < until) {
        if (!restarted_mid_run && std::chrono::steady_clock::now() > began + (until - began) / 2) {
            chaos.restart_database();
            restarted_mid_run = true;
            continue;
        }
        chaos.disturb_at_random(finished_sql);
        skip_dead_letters();
    }
    // The writers' window is shorter than the disturbances'; a database restart may have held them
    // up, which their own deadlines bound.
    REQUIRE(wait_until([&] { return writers.done(); }, 120s));
    writers.join();
    auto write_errors = writers.errors();
    for (const auto& e : write_errors) {
        UNSCOPED_INFO("writer: " << e);
    }
    REQUIRE(write_errors.empty());
    REQUIRE(db.count(R"(SELECT count(*) FROM "Outbox")") == events);

    REQUIRE(chaos.settle(180s, skip_dead_letters));
    std::vector<Attempt> attempts = read_attempts(record);
    std::vector<Attempt> successes = successes_of(attempts);
    auto [completed, dead_lettered] = check_final_places(db, events, 40, successes);
    // Under block, every dead letter blocked its key until the test skipped it; under skip, none
    // did. Either way no key is left blocked.
    CHECK(keys_released_by_skips == (policy == "block" ? static_cast<long>(dead_lettered) : 0));
    CHECK(db.count("SELECT count(*) FROM outbox_worker_blocked_keys") == 0);

    chaos.collect_logs();
    chaos.save_logs(record, "ordered-");
    Causes causes(db, chaos, 40);
    CHECK(causes.charged_twice() == 0);
    causes.classify_charges();
    causes.explain_duplicates(successes);

    // The order: PostgreSQL's commit times against the attempts' start times, per key.
    CommitOrder order = read_commit_order(db, type);
    CHECK(order.events_without_commit_time == 0);
    CHECK(static_cast<long>(order.by_id.size()) == events);
    KeyOrderReport ordered = check_key_order(
        order, attempts, [&](const Attempt& earlier) { return causes.overlap_reason(earlier); });

    std::ostringstream report;
    report << "chaos ordered (CHAOS_SEED=" << seed << ", " << seconds << " s, " << keys
           << " keys x " << per_key << " events): " << chaos.summary() << "; " << completed
           << " completed, " << dead_lettered << " dead-lettered (policy " << policy << "), "
           << keys_released_by_skips << " keys released by the test's dlq skip; "
           << count_lease_lost_lines(chaos.logs()) << " \"lease lost\" log lines\n";
    report << "writers: " << writers.committed_events() << " events committed, "
           << writers.retried_transactions() << " transactions written again";
    for (const auto& [cause, n] : writers.retry_causes()) {
        report << " (" << cause << ": " << n << ")";
    }
    report << "; " << order.same_microsecond_ties
           << " pairs of one key committed in the same microsecond (not ordered by the evidence)\n";
    report << "createdAt out of commit order: " << db.count(R"(
                  SELECT count(*) FROM (
                      SELECT o."createdAt" < lag(o."createdAt") OVER w AS inverted
                        FROM "Outbox" o JOIN "EventLog" e ON e."id" = o."eventLogId"
                       WHERE o."orderingKey" IS NOT NULL
                      WINDOW w AS (PARTITION BY o."orderingKey"
                                   ORDER BY pg_xact_commit_timestamp(e.xmin), e.xmin::text::bigint,
                                            (e."payload"->>'j')::int)) x
                   WHERE inverted)")
           << " adjacent pairs of a key (the order the service must not follow)\n";
    report << "per key: " << describe(ordered);
    if (order.seq_disagreements > 0) {
        report << "orderingSeq against commit order: " << order.seq_disagreements
               << " disagreements\n"
               << order.seq_disagreement_examples;
    }
    causes.charges.print(report, "attempts charged, by cause");
    causes.duplicates.print(report, "duplicate deliveries, by what happened to the earlier one");
    if (!causes.unexplained().empty()) {
        report << "unexplained:\n" << causes.unexplained();
    }
    std::cout << report.str() << std::flush;
    INFO(report.str());
    CHECK(chaos.db_restarts() >= 1);
    CHECK(causes.charges[Charge::unexplained] == 0);
    CHECK(causes.duplicates[Duplicate::unexplained] == 0);
    CHECK(ordered.order_violations == 0);
    CHECK(ordered.overlaps_unexplained == 0);

    chaos.stop_all();
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'PROCESSING')") == 0);
}
