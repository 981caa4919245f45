// The relay: the at-least-once engine of the supervisor. It claims due events, hands them to the
// handler-process pool, collects their outcomes, records them in batches, renews the leases of the
// events it holds and releases the ones it will not run. This is the part that must be provably
// right, so it knows neither libpq nor libuv nor processes: it talks to the database through
// RelayStore and to the handler processes through RelayPool, reads time from RelayClock, and asks
// its owner for wake-ups through RelayHost. tests/unit/relay_test.cpp drives it with fakes of all
// four.
//
// Flow of one event:
//   claim -> ready_ -> pool.dispatch -> handler process -> outcome -> pending_ -> one batched
//   record statement -> forgotten.
// Every event this instance holds has an entry in held_ from its claim until its outcome is
// recorded, it is released, or its lease is known to be lost. That map is what lease renewal
// renews and what draining releases, so nothing this instance claimed is left PROCESSING by a
// clean stop.
//
// Single-threaded: every method runs on the supervisor's loop, and so does every callback the
// relay passes to the store. A store may complete a request synchronously or later.
#pragma once

#include "common/backoff.h"
#include "common/protocol.h"
#include "supervisor/claimed_event.h"

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace outbox {

class Telemetry;

enum class OutcomeKind : int { success = 0, retry = 1, dead_letter = 2 };

// One outcome to record, fenced by the claim's token.
struct OutcomeRow {
    const std::string* id;
    int64_t token;
    OutcomeKind kind;
    const std::string* error; // nullptr on success
    long delay_ms;
    // A failed attempt's subscribers that succeeded (a JSON array of names), to be added to the
    // event's record so that its next attempt runs only the others; nullptr: none.
    const std::string* subscribers_done_json = nullptr;
};

// A lease to renew or release.
struct LeaseRef {
    const std::string* id;
    int64_t token;
};

// What the store says about a request: done, failed with an error, or unknown because the
// connection broke before the answer arrived (`lost`).
struct StoreStatus {
    bool ok = true;
    bool lost = false;
    std::string error;

    static StoreStatus failed(std::string why) { return {false, false, std::move(why)}; }
    static StoreStatus connection_lost() {
        return {false, true, "connection to the database lost"};
    }
};

// What one claim brought: the events now held under its token, and how many candidates it looked
// at without taking them (events of a key whose earlier event is still in flight, which the claim
// parked, or whose key was busy at that instant). A claim that took fewer events than asked for
// but passed some over has not seen the end of what is due.
struct ClaimBatch {
    std::vector<ClaimedEvent> events;
    int passed_over = 0;
};

// The database, as the relay needs it. Requests on one store complete in the order they were made.
class RelayStore {
  public:
    virtual ~RelayStore() = default;

    // False while the connection that records outcomes is down.
    virtual bool can_record() const = 0;
    // False while the connection that claims is down.
    virtual bool can_claim() const = 0;

    // Claims up to `limit` due events under the lease token `token`.
    virtual void claim(int limit, int64_t token,
                       std::function<void(StoreStatus, ClaimBatch)> done) = 0;

    // Records outcomes in one statement (one transaction). Answers with the rows it did NOT apply,
    // as (index into `rows`, recorded before): `recorded before` is a retry of an outcome whose
    // first statement committed but whose answer was lost; otherwise the lease had been lost.
    virtual void
    record(const std::vector<OutcomeRow>& rows,
           std::function<void(StoreStatus, std::vector<std::pair<size_t, bool>>)> done) = 0;

    // Extends leases. Answers with the indexes of the leases that were renewed; the others were
    // lost (expired and swept).
    virtual void renew(const std::vector<LeaseRef>& leases,
                       std::function<void(StoreStatus, std::vector<size_t>)> done) = 0;

    // Gives back claimed events that never started: due again, no attempt charged.
    virtual void release(const std::vector<LeaseRef>& leases,
                         std::function<void(StoreStatus, long released)> done) = 0;
};

// The handler-process pool, as the relay needs it.
class RelayPool {
  public:
    virtual ~RelayPool() = default;
    // Sends one event to a handler process; false when no process has room.
    virtual bool dispatch(uint64_t seq, std::string_view wire, long timeout_ms) = 0;
    // Events sent to processes and not answered yet.
    virtual size_t in_flight() const = 0;
    // Dispatches between begin and end may be written to the processes together.
    virtual void begin_dispatch() {}
    virtual void end_dispatch() {}
};

class RelayClock {
  public:
    virtual ~RelayClock() = default;
    // Monotonic milliseconds (the loop's time in the service).
    virtual uint64_t now_ms() const = 0;
    // Wall-clock milliseconds since the epoch, for the end-to-end latency metric.
    virtual int64_t wall_ms() const = 0;
};

// What the relay asks of its owner.
class RelayHost {
  public:
    virtual ~RelayHost() = default;
    // Call Relay::wake() at monotonic time `at_ms` (or soon after). A later request for an
    // earlier time replaces a pending one; the relay never needs more than one.
    virtual void wake_at(uint64_t at_ms) = 0;
    // Call Relay::flush() again after `delay_ms`: a record statement failed with an error that
    // would repeat at once. Independent of wake_at.
    virtual void flush_after(uint64_t delay_ms) = 0;
    // Call Relay::flush() after `delay_ms`: outcomes are lingering for more to join them.
    // Independent of wake_at and flush_after.
    virtual void linger(uint64_t delay_ms) = 0;
    // The relay's state changed in a way draining waits for (something recorded or released).
    virtual void progress() {}
};

struct RelayOptions {
    std::string instance_id;
    int batch_size = 100;
    long lease_ms = 30000;
    BackoffPolicy backoff;
    // An unstarted event whose lease is this close to running out is not started: by the time it
    // ran, another instance could have swept and re-claimed it.
    long lease_safety_ms = 1000;
    // Most outcomes recorded by one statement; also the number of unrecorded outcomes at which
    // claiming pauses.
    size_t max_outcomes_per_statement = 1000;
    // A retry's wake-up comes this long after its nextRetryAt, so the claim finds it due.
    long retry_wake_slack_ms = 20;
    // How long to wait before retrying a record statement that failed without losing the
    // connection (such an error would repeat at once).
    long record_retry_ms = 1000;
    // Outcomes wait up to this long for a batch's worth (batch_size) to gather before they are
    // recorded, while handler processes are still running events that will add to them: every
    // statement is a commit, and fewer, larger ones cost the database less. 0: record what the
    // loop turn brought, at once. Never while draining, and never when nothing more is coming.
    long outcome_linger_ms = 0;
    uint64_t first_token = 1;
};

class Relay {
  public:
    Relay(RelayOptions options, RelayStore& store, RelayPool& pool, RelayClock& clock,
          RelayHost& host, Telemetry& telemetry);
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    // Claiming is allowed once the service is serving (schema checked, pool started).
    void start_claiming();
    // Something may be due: a notification, the poll timer, a retry's wake-up, a reload.
    void wake();
    // The end of one loop turn: record the outcomes gathered in it, send waiting releases,
    // dispatch what is ready.
    void flush();
    // The record connection is (back) up: write what waited for it.
    void on_store_connected();
    // Extends the leases of every event held (periodic).
    void renew_leases();

    // The per-event timeout (sum of the matching subscribers' limits) is looked up through this.
    void set_timeout_lookup(std::function<long(const std::string& event_type)> lookup) {
        timeout_for_ = std::move(lookup);
    }

    // From the pool.
    void on_result(uint64_t seq, const ResultMsg& result);
    // The running event's attempt failed without a result (crash, timeout, too large).
    void on_failed(uint64_t seq, const std::string& error, bool permanent = false);
    // Queued in a process but never started: back to the front of the queue, uncharged.
    void on_returned(const std::vector<uint64_t>& seqs);
    void on_started(uint64_t seq);

    // Draining: stop claiming, release every claimed event that has not started. Events running
    // in handler processes finish and are recorded as usual.
    void begin_drain();
    // Nothing left to record or release, and no statement of the relay's in flight.
    bool drained() const;

    size_t held() const { return held_.size(); }
    // The Outbox id of a held event, for the console's list of handler processes; nullptr when
    // the sequence number is not held (any more).
    const std::string* held_event_id(uint64_t seq) const {
        auto it = held_.find(seq);
        return it == held_.end() ? nullptr : &it->second.event.id;
    }
    size_t ready() const { return ready_.size(); }
    size_t unrecorded() const { return pending_.size(); }
    size_t unreleased() const { return pending_releases_.size(); }
    bool claim_in_flight() const { return claim_in_flight_; }

  private:
    struct Held {
        ClaimedEvent event;
        int64_t token = 0;
        long timeout_ms = 0;
        uint64_t lease_deadline_ms = 0; // monotonic time by which the lease surely has not expired
        bool running = false;           // handed to a handler process
        bool finished = false;          // outcome known, waiting to be recorded
        bool lease_lost = false;
    };
    struct Pending {
        uint64_t seq;
        OutcomeKind kind;
        std::string error;
        long delay_ms;
        std::string subscribers_done_json; // empty: none (see OutcomeRow)
    };

    void maybe_claim();
    bool linger();
    void on_claimed(StoreStatus status, ClaimBatch batch, int requested, int64_t token,
                    uint64_t sent_at);
    void pump();
    void record_failure(uint64_t seq, std::string error, bool permanent, long retry_after_ms);
    void on_recorded(StoreStatus status, std::vector<Pending> batch,
                     std::vector<std::pair<size_t, bool>> not_applied);
    void release(std::vector<uint64_t> seqs);
    void send_releases();
    long timeout_for(const std::string& event_type) const;

    RelayOptions options_;
    RelayStore& store_;
    RelayPool& pool_;
    RelayClock& clock_;
    RelayHost& host_;
    Telemetry& telemetry_;
    Backoff backoff_;
    std::function<long(const std::string&)> timeout_for_;

    std::unordered_map<uint64_t, Held> held_;
    std::deque<uint64_t> ready_;
    std::vector<Pending> pending_;
    std::vector<uint64_t> pending_releases_;
    bool claiming_allowed_ = false;
    bool draining_ = false;
    bool claim_in_flight_ = false;
    bool record_in_flight_ = false;
    bool release_in_flight_ = false;
    bool renew_in_flight_ = false;
    bool more_due_ = true; // the last claim was full, or something woke us since
    uint64_t next_seq_ = 1;
    int64_t next_token_ = 1;
    uint64_t wake_at_ms_ = 0;      // the earliest retry wake-up requested and not yet come
    uint64_t linger_since_ms_ = 0; // when outcomes began to linger (0: they are not)
};

} // namespace outbox
