// Chaos: three instances of the example application work one backlog while the test SIGKILLs
// instances and handler processes at random and restarts PostgreSQL; the handlers crash, hang and
// fail by design (examples/app.cpp, "example.chaos"). Afterwards every event must be where its
// handler dictates: COMPLETED, or in the dead-letter queue for the ones rejected permanently.
// Nothing is lost; an event delivered twice is only possible where a lease was really lost (an
// instance killed mid-event), and those are counted and reported.
//
// CHAOS_SECONDS sets how long the disturbances go on (default 20, the short form CI runs;
// `make chaos` runs longer). CHAOS_SEED makes a run repeatable.
#include "tests/integration/engine_support.h"

#include <cstdlib>
#include <functional>
#include <random>
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

} // namespace

TEST_CASE("chaos: kills, restarts and misbehaving handlers lose nothing", "[chaos]") {
    const long seconds = env_long("CHAOS_SECONDS", 20);
    const unsigned seed = static_cast<unsigned>(env_long("CHAOS_SEED", std::random_device{}()));
    const char* restart = std::getenv("OUTBOX_TEST_PG_RESTART");
    REQUIRE(restart != nullptr);
    INFO("CHAOS_SEED=" << seed);
    std::mt19937 rng(seed);

    TestDatabase db;
    db.migrate();
    const int events = 1500;
    write_events(db, "example.chaos", events, 10);
    std::string record = temp_path("chaos-deliveries.txt");
    EnvMap env{{"EXAMPLE_RECORD_FILE", record},
               {"OUTBOX_LEASE_MS", "2000"},
               {"OUTBOX_BATCH_SIZE", "20"},
               {"OUTBOX_INITIAL_DELAY_MS", "50"},
               {"OUTBOX_MAX_DELAY_MS", "500"}};
    std::vector<std::unique_ptr<Service>> instances;
    for (int i = 0; i < 3; ++i) {
        instances.push_back(std::make_unique<Service>(db, env, OUTBOX_EXAMPLE_APP));
    }

    long instance_kills = 0, handler_kills = 0, db_restarts = 0;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < until) {
        // Each step waits for some progress (or a short deadline) rather than a fixed sleep, so
        // disturbances land while work is actually happening.
        long before =
            db.count(R"(SELECT count(*) FROM "Outbox" WHERE status IN ('COMPLETED', 'FAILED'))");
        wait_until(
            [&] {
                return db.count(
                           R"(SELECT count(*) FROM "Outbox" WHERE status IN ('COMPLETED', 'FAILED'))") >
                       before + 50;
            },
            1500ms);
        switch (rng() % 6) {
        case 0: { // SIGKILL an instance and start a replacement
            auto& victim = instances[rng() % instances.size()];
            victim->process().send_signal(SIGKILL);
            victim->process().wait_exit(10s);
            victim = std::make_unique<Service>(db, env, OUTBOX_EXAMPLE_APP);
            ++instance_kills;
            break;
        }
        case 1:
        case 2:
        case 3: { // SIGKILL a handler process of some instance
            auto kids = children_of(instances[rng() % instances.size()]->process().pid());
            if (!kids.empty()) {
                ::kill(kids[rng() % kids.size()], SIGKILL);
                ++handler_kills;
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
    long completed = db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'COMPLETED')");
    long failed = db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'FAILED')");
    long dlq = db.count(R"(SELECT count(*) FROM "DlqEventLog")");
    Deliveries d = read_deliveries(record);
    std::set<std::string> distinct(d.ids.begin(), d.ids.end());
    long duplicates = static_cast<long>(d.ids.size() - distinct.size());
    long lease_expired = db.count(R"(SELECT count(*) FROM "Outbox" WHERE "retryCount" > 0)");
    WARN("chaos (seed " << seed << ", " << seconds << " s): " << instance_kills
                        << " instance kills, " << handler_kills << " handler kills, " << db_restarts
                        << " database restarts; " << completed << " completed, " << failed
                        << " dead-lettered, " << duplicates << " duplicate deliveries, "
                        << lease_expired << " events retried");
    if (!settled) {
        for (auto& s : instances) {
            std::string log = s->log();
            UNSCOPED_INFO("log tail of " << s->process().pid() << ":\n"
                                         << log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
        }
        UNSCOPED_INFO(db.scalar(
            R"(SELECT string_agg(status || ':' || n, ' ') FROM (SELECT status, count(*) n FROM "Outbox" GROUP BY 1) x)"));
    }
    REQUIRE(settled);
    CHECK(completed + failed == events);
    CHECK(failed == dlq);
    // Exactly the permanently rejected events are dead-lettered, all with the handler's reason.
    CHECK(
        db.count(
            R"(SELECT count(*) FROM "DlqEventLog" WHERE "failureReason" NOT LIKE '%chaos: rejected%')") ==
        0);
    CHECK(static_cast<long>(distinct.size()) == completed);
    // Duplicates need a lost lease, which needs an instance killed mid-event.
    if (instance_kills == 0) {
        CHECK(duplicates == 0);
    }
    for (auto& s : instances) {
        auto status = s->stop();
        REQUIRE(status.has_value());
        CHECK(status->exited_with(0));
    }
    CHECK(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'PROCESSING')") == 0);
}
