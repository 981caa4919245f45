// The relay (supervisor/relay.h) driven by fakes of its store, pool, clock and host: no loop, no
// processes, no PostgreSQL. Each fake records what the relay asked of it; the test answers when
// and how it chooses, which is how races (an outcome arriving while a statement is in flight, a
// lease lost between dispatch and recording) are played out exactly.
#include "supervisor/relay.h"
#include "supervisor/telemetry.h"

#include <catch2/catch.hpp>

#include <sstream>

using namespace outbox;

namespace {

struct FakeStore final : RelayStore {
    struct Claim {
        int limit;
        int64_t token;
        std::function<void(StoreStatus, ClaimBatch)> done;
    };
    struct Record {
        std::vector<std::string> ids;
        std::vector<int64_t> tokens;
        std::vector<OutcomeKind> kinds;
        std::vector<std::string> errors;
        std::vector<long> delays;
        std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done;
    };
    struct Leases {
        std::vector<std::string> ids;
        std::vector<int64_t> tokens;
        std::function<void(StoreStatus, std::vector<size_t>)> renewed;
        std::function<void(StoreStatus, long)> released;
    };

    bool record_up = true;
    bool claim_up = true;
    std::vector<Claim> claims;
    std::vector<Record> records;
    std::vector<Leases> renewals;
    std::vector<Leases> releases;

    bool can_record() const override { return record_up; }
    bool can_claim() const override { return claim_up; }
    void claim(int limit, int64_t token,
               std::function<void(StoreStatus, ClaimBatch)> done) override {
        claims.push_back({limit, token, std::move(done)});
    }
    void
    record(const std::vector<OutcomeRow>& rows,
           std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done) override {
        Record r;
        for (const auto& row : rows) {
            r.ids.push_back(*row.id);
            r.tokens.push_back(row.token);
            r.kinds.push_back(row.kind);
            r.errors.push_back(row.error ? *row.error : "");
            r.delays.push_back(row.delay_ms);
        }
        r.done = std::move(done);
        records.push_back(std::move(r));
    }
    static Leases leases_of(const std::vector<LeaseRef>& leases) {
        Leases l;
        for (const auto& ref : leases) {
            l.ids.push_back(*ref.id);
            l.tokens.push_back(ref.token);
        }
        return l;
    }
    void renew(const std::vector<LeaseRef>& leases,
               std::function<void(StoreStatus, std::vector<size_t>)> done) override {
        renewals.push_back(leases_of(leases));
        renewals.back().renewed = std::move(done);
    }
    void release(const std::vector<LeaseRef>& leases,
                 std::function<void(StoreStatus, long)> done) override {
        releases.push_back(leases_of(leases));
        releases.back().released = std::move(done);
    }

    // Answers the oldest unanswered claim with events e<first>..e<first+n-1>, and `parked`
    // candidates passed over (ordering per key).
    void answer_claim(int n, int first = 0, int retry_count = 0, int max_retries = 5,
                      int parked = 0) {
        REQUIRE(!claims.empty());
        Claim c = std::move(claims.front());
        claims.erase(claims.begin());
        std::vector<ClaimedEvent> events;
        for (int i = 0; i < n; ++i) {
            ClaimedEvent e;
            e.id = "e" + std::to_string(first + i);
            e.retry_count = retry_count;
            e.max_retries = max_retries;
            e.event_type = "order.created";
            e.created_at_ms = 1000;
            e.wire = "wire:" + e.id;
            events.push_back(std::move(e));
        }
        c.done({}, ClaimBatch{std::move(events), parked});
    }
    // Answers the oldest unanswered record statement.
    void answer_record(std::vector<std::pair<size_t, bool>> not_applied = {},
                       StoreStatus status = {}) {
        REQUIRE(!records.empty());
        Record r = std::move(records.front());
        records.erase(records.begin());
        r.done(std::move(status), std::move(not_applied));
    }
};

struct FakePool final : RelayPool {
    size_t room = 8;
    std::vector<std::pair<uint64_t, std::string>> running; // seq, wire; oldest first
    int batches = 0;
    int open_batches = 0;

    bool dispatch(uint64_t seq, std::string_view wire, long) override {
        if (running.size() >= room) {
            return false;
        }
        running.emplace_back(seq, std::string(wire));
        return true;
    }
    size_t in_flight() const override { return running.size(); }
    void begin_dispatch() override {
        ++batches;
        ++open_batches;
    }
    void end_dispatch() override { --open_batches; }

    uint64_t take(const std::string& wire) {
        for (auto it = running.begin(); it != running.end(); ++it) {
            if (it->second == wire) {
                uint64_t seq = it->first;
                running.erase(it);
                return seq;
            }
        }
        FAIL("not running: " << wire);
        return 0;
    }
};

struct FakeClock final : RelayClock {
    uint64_t now = 100000;
    int64_t wall = 5000;
    uint64_t now_ms() const override { return now; }
    int64_t wall_ms() const override { return wall; }
};

struct FakeHost final : RelayHost {
    std::vector<uint64_t> wakes;
    std::vector<uint64_t> flushes;
    int progress_calls = 0;
    void wake_at(uint64_t at_ms) override { wakes.push_back(at_ms); }
    void flush_after(uint64_t delay_ms) override { flushes.push_back(delay_ms); }
    std::vector<uint64_t> lingers;
    void linger(uint64_t delay_ms) override { lingers.push_back(delay_ms); }
    void progress() override { ++progress_calls; }
};

double metric(const Telemetry& t, const std::string& name) {
    std::istringstream in(t.render_prometheus());
    std::string line;
    double total = 0;
    while (std::getline(in, line)) {
        if (line.rfind(name, 0) == 0 && (line[name.size()] == ' ' || line[name.size()] == '{')) {
            total += std::stod(line.substr(line.rfind(' ') + 1));
        }
    }
    return total;
}

ResultMsg success() {
    return ResultMsg{};
}

ResultMsg failure(Outcome outcome, std::string error, long retry_after_ms = 0) {
    ResultMsg r;
    r.outcome = outcome;
    r.error = std::move(error);
    r.retry_after_ms = retry_after_ms;
    return r;
}

struct Fixture {
    FakeStore store;
    FakePool pool;
    FakeClock clock;
    FakeHost host;
    Telemetry telemetry;
    RelayOptions options = [] {
        RelayOptions o;
        o.batch_size = 10;
        o.lease_ms = 30000;
        o.backoff = BackoffPolicy{1000, 60000, 2.0, 0.0};
        o.max_outcomes_per_statement = 1000;
        o.first_token = 77;
        return o;
    }();
    std::unique_ptr<Relay> relay;

    Fixture() { make(); }
    void make() {
        relay = std::make_unique<Relay>(options, store, pool, clock, host, telemetry);
        relay->set_timeout_lookup([](const std::string&) { return 5000L; });
    }
};

} // namespace

TEST_CASE("relay: a claimed event is dispatched, its success recorded and forgotten", "[relay]") {
    Fixture f;
    f.relay->wake();
    CHECK(f.store.claims.empty()); // not before start_claiming()
    f.relay->start_claiming();
    REQUIRE(f.store.claims.size() == 1);
    CHECK(f.store.claims[0].limit == 10);
    CHECK(f.store.claims[0].token == 77);
    f.store.answer_claim(3);
    REQUIRE(f.pool.running.size() == 3);
    CHECK(f.pool.running[0].second == "wire:e0");
    CHECK(f.pool.open_batches == 0);
    CHECK(f.relay->held() == 3);

    uint64_t seq = f.pool.take("wire:e1");
    f.relay->on_result(seq, success());
    CHECK(f.store.records.empty()); // gathered until the end of the loop turn
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e1"});
    CHECK(f.store.records[0].tokens == std::vector<int64_t>{77});
    CHECK(f.store.records[0].kinds == std::vector<OutcomeKind>{OutcomeKind::success});
    f.store.answer_record();
    CHECK(f.relay->held() == 2);
    CHECK(f.telemetry.completed_total() == 1);
    CHECK(f.relay->drained());
}

TEST_CASE("relay: outcomes of one turn go out in one statement, later ones in the next",
          "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.store.answer_claim(6);
    for (int i = 0; i < 3; ++i) {
        f.relay->on_result(f.pool.take("wire:e" + std::to_string(i)), success());
    }
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids.size() == 3);
    // While that statement is in flight, more outcomes arrive over several turns: they wait and
    // then go out together, never as a second statement beside the first.
    for (int i = 3; i < 6; ++i) {
        f.relay->on_result(f.pool.take("wire:e" + std::to_string(i)), success());
        f.relay->flush();
    }
    CHECK(f.store.records.size() == 1);
    f.store.answer_record(); // answers the first, which sends the second at once
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e3", "e4", "e5"});
    f.store.answer_record();
    CHECK(f.telemetry.completed_total() == 6);
    CHECK(f.relay->held() == 0);
}

TEST_CASE("relay: an outcome whose lease was lost is discarded and counted", "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.store.answer_claim(3);
    f.relay->on_result(f.pool.take("wire:e0"), success());
    f.relay->on_result(f.pool.take("wire:e1"), success());
    f.relay->on_result(f.pool.take("wire:e2"), success());
    f.relay->flush();
    // e1's lease was lost (another instance holds it now); e2's outcome had been recorded by an
    // earlier statement whose answer never arrived.
    f.store.answer_record({{1, false}, {2, true}});
    CHECK(f.telemetry.completed_total() == 1);
    CHECK(metric(f.telemetry, "outbox_leases_lost_total") == 1);
    CHECK(f.relay->held() == 0);
}

TEST_CASE("relay: a failure is retried with backoff, then dead-lettered", "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    // e0 on its first attempt, e1 on its last (retryCount 4 of maxRetries 5 claimed).
    f.store.answer_claim(1, 0, 0, 5);
    f.relay->wake(); // the claim was not full: only a wake-up claims again
    f.store.answer_claim(1, 1, 4, 5);
    f.relay->on_result(f.pool.take("wire:e0"), failure(Outcome::retry, "upstream 503"));
    f.relay->on_result(f.pool.take("wire:e1"), failure(Outcome::retry, "upstream 503"));
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    const auto& r = f.store.records[0];
    CHECK(r.kinds == std::vector<OutcomeKind>{OutcomeKind::retry, OutcomeKind::dead_letter});
    CHECK(r.delays[0] == 1000); // INITIAL x MULTIPLIER^0, no jitter
    CHECK(r.errors[0] == "upstream 503");
    f.store.answer_record();
    CHECK(metric(f.telemetry, "outbox_events_retried_total") == 1);
    CHECK(metric(f.telemetry, "outbox_events_dead_lettered_total") == 1);
    // The retry's wake-up: when it comes due, plus the slack.
    REQUIRE(f.host.wakes.size() == 1);
    CHECK(f.host.wakes[0] == f.clock.now + 1000 + 20);
}

TEST_CASE("relay: a permanent failure goes to the DLQ at once, Retry-After raises the delay",
          "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.store.answer_claim(2);
    f.relay->on_result(f.pool.take("wire:e0"), failure(Outcome::permanent, "bad payload"));
    f.relay->on_result(f.pool.take("wire:e1"), failure(Outcome::retry, "429", 7000));
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].kinds ==
          std::vector<OutcomeKind>{OutcomeKind::dead_letter, OutcomeKind::retry});
    CHECK(f.store.records[0].delays[1] == 7000);
}

TEST_CASE("relay: a crash charges exactly the running event, the ones behind it go back uncharged",
          "[relay]") {
    Fixture f;
    f.pool.room = 3;
    f.relay->start_claiming();
    f.store.answer_claim(5);
    REQUIRE(f.pool.running.size() == 3);
    CHECK(f.relay->ready() == 2);
    // The process held e0 (running), e1 and e2 (queued) and died.
    uint64_t head = f.pool.take("wire:e0");
    uint64_t q1 = f.pool.take("wire:e1");
    uint64_t q2 = f.pool.take("wire:e2");
    f.relay->on_failed(head, "handler process 42 killed by signal 9 (SIGKILL)");
    f.relay->on_returned({q1, q2});
    // The returned ones go out again first, in their order, before e3 and e4.
    REQUIRE(f.pool.running.size() == 3);
    CHECK(f.pool.running[0].second == "wire:e1");
    CHECK(f.pool.running[1].second == "wire:e2");
    CHECK(f.pool.running[2].second == "wire:e3");
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e0"});
    CHECK(f.store.records[0].kinds == std::vector<OutcomeKind>{OutcomeKind::retry});
    CHECK(f.store.records[0].errors[0] == "handler process 42 killed by signal 9 (SIGKILL)");
}

TEST_CASE("relay: draining releases what has not started and waits for what runs", "[relay]") {
    Fixture f;
    f.pool.room = 2;
    f.relay->start_claiming();
    f.store.answer_claim(5);
    CHECK(f.relay->ready() == 3);
    f.relay->begin_drain();
    REQUIRE(f.store.releases.size() == 1);
    CHECK(f.store.releases[0].ids == std::vector<std::string>{"e2", "e3", "e4"});
    CHECK(!f.relay->drained());
    f.store.releases[0].released({}, 3);
    CHECK(f.relay->held() == 2);
    // No claims while draining, whatever wakes the relay.
    f.relay->wake();
    CHECK(f.store.claims.empty());
    // The running ones finish and are recorded as usual.
    f.relay->on_result(f.pool.take("wire:e0"), success());
    f.relay->on_result(f.pool.take("wire:e1"), failure(Outcome::retry, "x"));
    f.relay->flush();
    CHECK(!f.relay->drained());
    f.store.answer_record();
    CHECK(f.relay->drained());
    CHECK(f.relay->held() == 0);
}

TEST_CASE("relay: events handed back while draining are released, not dispatched", "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.store.answer_claim(2);
    f.relay->begin_drain();
    CHECK(f.store.releases.empty()); // nothing was waiting
    uint64_t a = f.pool.take("wire:e0");
    uint64_t b = f.pool.take("wire:e1");
    f.relay->on_returned({a, b}); // the drain deadline killed their process
    CHECK(f.pool.running.empty());
    REQUIRE(f.store.releases.size() == 1);
    CHECK(f.store.releases[0].ids == std::vector<std::string>{"e0", "e1"});
}

TEST_CASE("relay: a claim answered after the stop signal is released at once", "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.relay->begin_drain();
    CHECK(!f.relay->drained()); // the claim is in flight
    f.store.answer_claim(4);
    CHECK(f.pool.running.empty());
    REQUIRE(f.store.releases.size() == 1);
    CHECK(f.store.releases[0].ids.size() == 4);
    f.store.releases[0].released({}, 4);
    CHECK(f.relay->drained());
}

TEST_CASE("relay: claiming pauses while a statement's worth of outcomes is unrecorded", "[relay]") {
    Fixture f;
    f.options.batch_size = 100;
    f.options.max_outcomes_per_statement = 150;
    f.pool.room = 1000;
    f.make();
    f.relay->start_claiming();
    f.store.answer_claim(100);      // full: claims again at once
    f.store.answer_claim(100, 100); // and again
    REQUIRE(f.store.claims.size() == 1);
    // 200 outcomes arrive; the first statement takes 150 and hangs (a slow database).
    for (int i = 0; i < 200; ++i) {
        f.relay->on_result(f.pool.take("wire:e" + std::to_string(i)), success());
    }
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    f.store.answer_claim(100, 200); // full, but 200 outcomes are unrecorded
    CHECK(f.store.claims.empty());
    f.relay->wake();
    CHECK(f.store.claims.empty());
    // Once they are recorded, claiming resumes.
    f.store.answer_record();
    f.store.answer_record();
    CHECK(f.store.claims.size() == 1);
}

TEST_CASE("relay: a failed record statement is retried later without touching the retry wake",
          "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.store.answer_claim(2);
    f.relay->on_result(f.pool.take("wire:e0"), failure(Outcome::retry, "boom"));
    f.relay->flush();
    f.store.answer_record(); // e0 retries in 1 s: a wake-up is pending
    REQUIRE(f.host.wakes.size() == 1);
    f.relay->on_result(f.pool.take("wire:e1"), success());
    f.relay->flush();
    f.store.answer_record({}, StoreStatus::failed("deadlock detected"));
    CHECK(f.host.flushes == std::vector<uint64_t>{1000});
    CHECK(f.host.wakes.size() == 1); // the pending retry wake-up stands
    CHECK(f.relay->unrecorded() == 1);
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e1"});
}

TEST_CASE("relay: outcomes survive a lost connection and are written after the reconnect",
          "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    f.store.answer_claim(1);
    f.relay->on_result(f.pool.take("wire:e0"), success());
    f.relay->flush();
    f.store.record_up = false;
    f.store.answer_record({}, StoreStatus::connection_lost());
    CHECK(f.host.flushes.empty()); // the reconnect, not a timer, brings the retry
    f.relay->flush();
    CHECK(f.store.records.empty()); // still down
    f.store.record_up = true;
    f.relay->on_store_connected();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e0"});
    f.store.answer_record();
    CHECK(f.telemetry.completed_total() == 1);
}

TEST_CASE("relay: a lease that could not be renewed in time is not started", "[relay]") {
    Fixture f;
    f.pool.room = 1;
    f.relay->start_claiming();
    f.store.answer_claim(2);
    REQUIRE(f.pool.running.size() == 1);
    // The database is unreachable for most of a lease: renewals fail.
    f.clock.now += 29500;
    f.relay->on_result(f.pool.take("wire:e0"), success());
    f.relay->flush();
    // e1 would start with half a second of lease left: it is not run but released, uncharged.
    CHECK(f.pool.running.empty());
    CHECK(f.relay->ready() == 0);
    REQUIRE(f.store.releases.size() == 1);
    CHECK(f.store.releases[0].ids == std::vector<std::string>{"e1"});
    f.store.releases[0].released({}, 1);
    CHECK(f.relay->held() == 1); // e0, whose outcome waits to be recorded
}

TEST_CASE("relay: renewal extends leases and drops the unstarted events whose lease was lost",
          "[relay]") {
    Fixture f;
    f.pool.room = 1;
    f.relay->start_claiming();
    f.store.answer_claim(3);
    f.clock.now += 20000;
    f.relay->renew_leases();
    REQUIRE(f.store.renewals.size() == 1);
    auto& ren = f.store.renewals[0];
    REQUIRE(ren.ids.size() == 3);
    f.relay->renew_leases(); // one renewal at a time
    CHECK(f.store.renewals.size() == 1);
    // Renewed: the running e0 and one queued event; the other queued one was swept elsewhere.
    std::vector<size_t> renewed;
    std::string lost_id;
    for (size_t i = 0; i < ren.ids.size(); ++i) {
        if (ren.ids[i] == "e0" || ren.ids[i] == "e1") {
            renewed.push_back(i);
        } else {
            lost_id = ren.ids[i];
        }
    }
    CHECK(lost_id == "e2");
    ren.renewed({}, renewed);
    CHECK(metric(f.telemetry, "outbox_leases_lost_total") == 1);
    CHECK(f.relay->held() == 2);
    // e1's lease now runs from the renewal: it starts although the claim was 20 s ago.
    f.clock.now += 15000;
    f.relay->on_result(f.pool.take("wire:e0"), success());
    f.relay->flush();
    REQUIRE(f.pool.running.size() == 1);
    CHECK(f.pool.running[0].second == "wire:e1");
}

TEST_CASE("relay: an event too large for the channel goes straight to the DLQ", "[relay]") {
    Fixture f;
    f.relay->start_claiming();
    ClaimedEvent big;
    big.id = "big";
    big.event_type = "t";
    big.wire.assign(kMaxFrameBody + 1, 'x');
    std::vector<ClaimedEvent> events;
    events.push_back(std::move(big));
    f.store.claims[0].done({}, ClaimBatch{std::move(events), 0});
    CHECK(f.pool.running.empty());
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].kinds == std::vector<OutcomeKind>{OutcomeKind::dead_letter});
    CHECK(f.store.records[0].errors[0].find("too large") != std::string::npos);
}

TEST_CASE("relay: a full claim claims again, tokens are unique per claim", "[relay]") {
    Fixture f;
    f.pool.room = 100;
    f.relay->start_claiming();
    f.store.answer_claim(10);
    REQUIRE(f.store.claims.size() == 1);
    CHECK(f.store.claims[0].token == 78);
    f.store.answer_claim(3, 10); // not full: nothing more is due
    CHECK(f.store.claims.empty());
    // A claim that failed without an answer leaves the relay ready to claim at the next wake.
    f.relay->wake();
    REQUIRE(f.store.claims.size() == 1);
    f.store.claims[0].done(StoreStatus::connection_lost(), {});
    f.store.claims.clear();
    f.relay->wake();
    CHECK(f.store.claims.size() == 1);
}

TEST_CASE("relay: a short claim that parked candidates claims again", "[relay]") {
    // Ordering per key: candidates that wait behind an earlier event of their key are parked by
    // the claim and take places in its batch; a short claim is then no sign that nothing is due.
    Fixture f;
    f.pool.room = 100;
    f.relay->start_claiming();
    f.store.answer_claim(10);
    REQUIRE(f.store.claims.size() == 1);
    f.store.answer_claim(2, 10, 0, 5, /*parked=*/7);
    REQUIRE(f.store.claims.size() == 1); // claims again at once
    f.store.answer_claim(0, 0, 0, 5, /*parked=*/0);
    CHECK(f.store.claims.empty()); // nothing parked, nothing taken: nothing more is due
}

TEST_CASE("relay: outcomes linger for a batch's worth while more are coming", "[relay]") {
    Fixture f;
    f.options.batch_size = 4;
    f.options.outcome_linger_ms = 5;
    f.make();
    f.relay->start_claiming();
    f.store.answer_claim(3); // not full: no claim follows
    REQUIRE(f.store.claims.empty());
    f.relay->on_result(f.pool.take("wire:e0"), success());
    f.relay->flush();
    // e1 and e2 still run: e0 waits for them, and the host is asked to flush in 5 ms.
    CHECK(f.store.records.empty());
    CHECK(f.host.lingers == std::vector<uint64_t>{5});
    f.clock.now += 2;
    f.relay->on_result(f.pool.take("wire:e1"), success());
    f.relay->flush();
    CHECK(f.store.records.empty());
    // The linger runs out: what has gathered goes.
    f.clock.now += 3;
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e0", "e1"});
    f.store.answer_record();
    // A batch's worth goes at once, without waiting for the linger.
    f.relay->wake();
    f.store.answer_claim(3, 10);
    for (const char* w : {"wire:e2", "wire:e10", "wire:e11", "wire:e12"}) {
        f.relay->on_result(f.pool.take(w), success());
    }
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids.size() == 4);
    f.store.answer_record();
    // When nothing more is coming (nothing running, nothing waiting): at once.
    f.relay->wake();
    f.store.answer_claim(2, 20);
    f.relay->on_result(f.pool.take("wire:e20"), success());
    f.relay->flush();
    CHECK(f.store.records.empty()); // e21 still runs
    f.relay->on_result(f.pool.take("wire:e21"), failure(Outcome::retry, "x"));
    f.relay->flush();
    REQUIRE(f.store.records.size() == 1);
    CHECK(f.store.records[0].ids == std::vector<std::string>{"e20", "e21"});
    f.store.answer_record();
    // Draining never lingers.
    f.relay->wake();
    f.store.answer_claim(2, 30);
    f.relay->on_result(f.pool.take("wire:e30"), success());
    f.relay->begin_drain();
    f.relay->flush();
    CHECK(f.store.records.size() == 1);
}
