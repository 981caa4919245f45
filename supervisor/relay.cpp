#include "supervisor/relay.h"

#include "common/check.h"
#include "common/json.h"
#include "supervisor/telemetry.h"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace outbox {

Relay::Relay(RelayOptions options, RelayStore& store, RelayPool& pool, RelayClock& clock,
             RelayHost& host, Telemetry& telemetry)
    : options_(std::move(options)), store_(store), pool_(pool), clock_(clock), host_(host),
      telemetry_(telemetry), backoff_(options_.backoff),
      next_token_(static_cast<int64_t>(options_.first_token)) {}

long Relay::timeout_for(const std::string& event_type) const {
    return timeout_for_ ? timeout_for_(event_type) : 30000;
}

void Relay::start_claiming() {
    claiming_allowed_ = true;
    wake();
}

void Relay::wake() {
    more_due_ = true;
    maybe_claim();
}

// ---- claiming -------------------------------------------------------------------------------

void Relay::maybe_claim() {
    if (!claiming_allowed_ || draining_ || claim_in_flight_ || !more_due_ || !store_.can_claim()) {
        return;
    }
    // Read ahead: claim a whole batch whenever at most one batch is left waiting for a handler
    // process. Whole batches keep the statements per event low (a claim of 100 costs little more
    // than a claim of 20), and the batch still waiting covers the claim's round trip at full
    // speed. One instance holds at most two batches beyond what its processes run, so it never
    // hoards a backlog that other instances could be working on.
    long holding = static_cast<long>(ready_.size());
    if (holding > options_.batch_size) {
        return;
    }
    // Outcomes not yet recorded count against claiming too: when the record statements fall
    // behind (a slow or overloaded database), claiming more would only grow what this instance
    // holds in memory and under lease.
    long unrecorded =
        static_cast<long>(held_.size()) - holding - static_cast<long>(pool_.in_flight());
    if (unrecorded >= static_cast<long>(options_.max_outcomes_per_statement)) {
        return;
    }
    int requested = options_.batch_size;
    int64_t token = next_token_++;
    claim_in_flight_ = true;
    more_due_ = false;
    uint64_t sent_at = clock_.now_ms();
    store_.claim(requested, token,
                 [this, requested, token, sent_at](StoreStatus status, ClaimBatch batch) {
                     on_claimed(std::move(status), std::move(batch), requested, token, sent_at);
                 });
}

void Relay::on_claimed(StoreStatus status, ClaimBatch batch, int requested, int64_t token,
                       uint64_t sent_at) {
    claim_in_flight_ = false;
    if (!status.ok) {
        if (!status.lost) {
            spdlog::error("claiming events failed: {}", status.error);
        }
        // A claim whose outcome is unknown (connection lost) may have claimed rows: they are
        // swept when their lease expires, charged as one attempt (SPEC 2, at least once).
        more_due_ = true;
        host_.progress();
        return;
    }
    size_t rows = batch.events.size();
    for (auto& e : batch.events) {
        uint64_t seq = next_seq_++;
        Held h;
        h.timeout_ms = timeout_for(e.event_type);
        h.event = std::move(e);
        h.token = token;
        // The lease was granted by the database after the claim was sent: measured from the
        // send, the deadline errs on the safe side.
        h.lease_deadline_ms = sent_at + static_cast<uint64_t>(options_.lease_ms);
        held_.emplace(seq, std::move(h));
        ready_.push_back(seq);
    }
    if (rows > 0) {
        spdlog::debug("claimed {} events", rows);
    }
    if (rows >= static_cast<size_t>(requested) || batch.passed_over > 0) {
        // A full batch: there is probably more. Candidates passed over (parked behind the
        // earlier event of their key) took places in the batch that due events may be behind.
        more_due_ = true;
    }
    if (draining_) {
        // Claimed while the stop signal arrived: give them straight back.
        std::vector<uint64_t> back(ready_.begin(), ready_.end());
        ready_.clear();
        release(std::move(back));
        host_.progress();
        return;
    }
    pump();
}

void Relay::pump() {
    uint64_t now = clock_.now_ms();
    pool_.begin_dispatch();
    while (!ready_.empty() && !draining_) {
        uint64_t seq = ready_.front();
        auto it = held_.find(seq);
        if (it == held_.end()) {
            ready_.pop_front();
            continue;
        }
        Held& h = it->second;
        if (h.lease_deadline_ms < now + static_cast<uint64_t>(options_.lease_safety_ms)) {
            // The lease could not be renewed (database unreachable) and is about to run out:
            // starting the event now risks running it beside the instance that sweeps it.
            // It is given back instead (uncharged, fenced by the claim's token): once the
            // database answers again, the release reaches it before the lease expires, or finds
            // the event swept and changes nothing.
            spdlog::warn("event {} not started: its lease could not be renewed in time; releasing "
                         "it",
                         h.event.id);
            ready_.pop_front();
            release({seq});
            continue;
        }
        if (!event_fits_in_frame(h.event.wire.size())) {
            ready_.pop_front();
            h.running = true;
            record_failure(seq,
                           "event is too large for the handler channel: " +
                               std::to_string(h.event.wire.size()) + " bytes, the limit is " +
                               std::to_string(kMaxFrameBody) + " bytes",
                           true, 0);
            continue;
        }
        if (!pool_.dispatch(seq, h.event.wire, h.timeout_ms)) {
            break;
        }
        h.running = true;
        ready_.pop_front();
    }
    pool_.end_dispatch();
    telemetry_.set_in_flight(static_cast<long>(pool_.in_flight()));
    maybe_claim();
}

// ---- outcomes -------------------------------------------------------------------------------

void Relay::on_started(uint64_t seq) {
    auto it = held_.find(seq);
    if (it != held_.end()) {
        telemetry_.handler_start_latency(
            static_cast<double>(clock_.wall_ms() - it->second.event.created_at_ms) / 1000.0);
    }
}

void Relay::on_result(uint64_t seq, const ResultMsg& result) {
    auto it = held_.find(seq);
    OUTBOX_CHECK(it != held_.end());
    Held& h = it->second;
    telemetry_.handler_duration(h.event.event_type, static_cast<double>(result.duration_us) / 1e6);
    if (result.outcome == Outcome::success) {
        h.finished = true;
        pending_.push_back({seq, OutcomeKind::success, {}, 0, {}});
        return;
    }
    record_failure(seq, result.error, result.outcome == Outcome::permanent, result.retry_after_ms);
    // The subscribers that succeeded in this failed attempt are recorded with its outcome, so
    // that the retry runs only the others (SPEC 2). Names were made safe by the handler process
    // (encode_result) and checked by the decoder.
    std::string done;
    for (const SubscriberOutcome& s : result.subscribers) {
        if (s.outcome == Outcome::success) {
            done += done.empty() ? "[" : ",";
            json_quote_to(done, s.name);
        }
    }
    if (!done.empty()) {
        pending_.back().subscribers_done_json = done + "]";
    }
}

void Relay::on_failed(uint64_t seq, const std::string& error, bool permanent) {
    // The pool's own messages (a signal, an exit code, a timeout): short ASCII, nothing to make
    // safe. A handler's error was made safe once, in the handler process (encode_result).
    record_failure(seq, error, permanent, 0);
}

void Relay::record_failure(uint64_t seq, std::string error, bool permanent, long retry_after_ms) {
    auto it = held_.find(seq);
    OUTBOX_CHECK(it != held_.end());
    Held& h = it->second;
    h.finished = true;
    int attempt = h.event.retry_count + 1;
    if (error.empty()) {
        error = "handler failed without a message";
    }
    if (permanent || attempt >= h.event.max_retries) {
        spdlog::warn("event {} ({}) failed attempt {}/{}{}: {}; moving it to the dead-letter queue",
                     h.event.id, h.event.event_type, attempt, h.event.max_retries,
                     permanent ? " permanently" : "", error);
        pending_.push_back({seq, OutcomeKind::dead_letter, std::move(error), 0, {}});
        return;
    }
    long delay = std::max(backoff_.delay_ms(attempt), retry_after_ms);
    spdlog::info("event {} ({}) failed attempt {}/{}: {}; retrying in {} ms", h.event.id,
                 h.event.event_type, attempt, h.event.max_retries, error, delay);
    pending_.push_back({seq, OutcomeKind::retry, std::move(error), delay, {}});
}

void Relay::on_returned(const std::vector<uint64_t>& seqs) {
    // Never started: back to the front of the queue, in their order, still under our lease.
    for (auto it = seqs.rbegin(); it != seqs.rend(); ++it) {
        auto h = held_.find(*it);
        if (h == held_.end()) {
            continue;
        }
        h->second.running = false;
        ready_.push_front(*it);
    }
    if (draining_) {
        std::vector<uint64_t> back(ready_.begin(), ready_.end());
        ready_.clear();
        release(std::move(back));
        return;
    }
    pump();
}

bool Relay::linger() {
    size_t target =
        std::min(static_cast<size_t>(options_.batch_size), options_.max_outcomes_per_statement);
    if (options_.outcome_linger_ms <= 0 || draining_ || pending_.size() >= target ||
        (pool_.in_flight() == 0 && ready_.empty())) {
        return false;
    }
    uint64_t now = clock_.now_ms();
    if (linger_since_ms_ == 0) {
        linger_since_ms_ = now;
        host_.linger(static_cast<uint64_t>(options_.outcome_linger_ms));
        return true;
    }
    return now < linger_since_ms_ + static_cast<uint64_t>(options_.outcome_linger_ms);
}

void Relay::flush() {
    if (!record_in_flight_ && !pending_.empty() && store_.can_record() && !linger()) {
        linger_since_ms_ = 0;
        std::vector<Pending> batch;
        if (pending_.size() <= options_.max_outcomes_per_statement) {
            batch.swap(pending_);
        } else {
            auto cut =
                pending_.begin() + static_cast<std::ptrdiff_t>(options_.max_outcomes_per_statement);
            batch.assign(std::make_move_iterator(pending_.begin()), std::make_move_iterator(cut));
            pending_.erase(pending_.begin(), cut);
        }
        std::vector<OutcomeRow> rows;
        rows.reserve(batch.size());
        for (const auto& p : batch) {
            auto it = held_.find(p.seq);
            OUTBOX_CHECK(it != held_.end()); // held until its outcome is recorded
            const Held& h = it->second;
            rows.push_back({&h.event.id, h.token, p.kind,
                            p.kind == OutcomeKind::success ? nullptr : &p.error, p.delay_ms,
                            p.subscribers_done_json.empty() ? nullptr : &p.subscribers_done_json});
        }
        record_in_flight_ = true;
        store_.record(rows, [this, batch = std::move(batch)](
                                StoreStatus status,
                                std::vector<std::pair<size_t, bool>> not_applied) mutable {
            on_recorded(std::move(status), std::move(batch), std::move(not_applied));
        });
    }
    send_releases();
    pump();
}

void Relay::on_recorded(StoreStatus status, std::vector<Pending> batch,
                        std::vector<std::pair<size_t, bool>> not_applied) {
    record_in_flight_ = false;
    if (!status.ok) {
        if (!status.lost) {
            spdlog::error("recording {} outcomes failed: {}", batch.size(), status.error);
        }
        // Keep them, oldest first, for the next try: after the reconnect, or a little later.
        pending_.insert(pending_.begin(), std::make_move_iterator(batch.begin()),
                        std::make_move_iterator(batch.end()));
        if (!status.lost) {
            // A statement error that is not a lost connection would repeat at once.
            host_.flush_after(static_cast<uint64_t>(options_.record_retry_ms));
        }
        host_.progress();
        return;
    }
    // Per row: applied (the usual case), applied before (a retry after a connection broke
    // mid-commit: nothing to count again), or not applied because the lease was lost.
    enum class Fate : char { applied, already, lost };
    std::vector<Fate> fate(batch.size(), Fate::applied);
    for (auto [index, already] : not_applied) {
        if (index < fate.size()) {
            fate[index] = already ? Fate::already : Fate::lost;
        }
    }
    int64_t now_ms = clock_.wall_ms();
    for (size_t i = 0; i < batch.size(); ++i) {
        const Pending& p = batch[i];
        auto it = held_.find(p.seq);
        if (it == held_.end()) {
            continue;
        }
        const Held& h = it->second;
        if (fate[i] == Fate::lost) {
            spdlog::warn("event {}: lease lost before its outcome was recorded (another instance "
                         "took it over); the outcome of this attempt is discarded",
                         h.event.id);
            if (!h.lease_lost) { // renew_leases() counted it already otherwise
                telemetry_.lease_lost();
            }
        } else if (fate[i] == Fate::applied) {
            switch (p.kind) {
            case OutcomeKind::success:
                telemetry_.event_completed(h.event.event_type,
                                           static_cast<double>(now_ms - h.event.created_at_ms) /
                                               1000.0);
                break;
            case OutcomeKind::retry: {
                telemetry_.event_retried(h.event.event_type);
                // nextRetryAt was computed from the database's clock as the statement ran; wake
                // a little after it so that the claim finds the event due.
                uint64_t at = clock_.now_ms() + static_cast<uint64_t>(p.delay_ms) +
                              static_cast<uint64_t>(options_.retry_wake_slack_ms);
                uint64_t now = clock_.now_ms();
                if (wake_at_ms_ <= now || at < wake_at_ms_) {
                    wake_at_ms_ = at;
                    host_.wake_at(at);
                }
                break;
            }
            case OutcomeKind::dead_letter:
                telemetry_.event_dead_lettered(h.event.event_type);
                break;
            }
        }
        held_.erase(it);
    }
    if (!pending_.empty()) {
        flush();
    }
    maybe_claim(); // claiming may have waited for these outcomes to be recorded
    host_.progress();
}

void Relay::on_store_connected() {
    flush();
}

// ---- leases ---------------------------------------------------------------------------------

void Relay::renew_leases() {
    if (held_.empty() || renew_in_flight_ || !store_.can_record()) {
        return;
    }
    std::vector<LeaseRef> leases;
    std::vector<uint64_t> seqs;
    leases.reserve(held_.size());
    seqs.reserve(held_.size());
    for (const auto& [seq, h] : held_) {
        if (h.lease_lost) {
            continue;
        }
        leases.push_back({&h.event.id, h.token});
        seqs.push_back(seq);
    }
    if (leases.empty()) {
        return;
    }
    uint64_t sent_at = clock_.now_ms();
    renew_in_flight_ = true;
    store_.renew(leases, [this, seqs = std::move(seqs), sent_at](StoreStatus status,
                                                                 std::vector<size_t> renewed) {
        renew_in_flight_ = false;
        if (!status.ok) {
            if (!status.lost) {
                spdlog::error("renewing leases failed: {}", status.error);
            }
            return;
        }
        std::vector<bool> kept(seqs.size(), false);
        for (size_t i : renewed) {
            if (i < kept.size()) {
                kept[i] = true;
            }
        }
        for (size_t i = 0; i < seqs.size(); ++i) {
            auto it = held_.find(seqs[i]);
            if (it == held_.end()) {
                continue; // recorded meanwhile
            }
            Held& h = it->second;
            if (kept[i]) {
                h.lease_deadline_ms = sent_at + static_cast<uint64_t>(options_.lease_ms);
            } else if (!h.finished && !h.lease_lost) {
                // Swept by someone: if it has not started, do not start it.
                spdlog::warn("event {}: lease lost (expired and swept)", h.event.id);
                h.lease_lost = true;
                telemetry_.lease_lost();
                if (!h.running) {
                    std::erase(ready_, seqs[i]);
                    held_.erase(it);
                }
            }
        }
        host_.progress();
    });
}

void Relay::begin_drain() {
    draining_ = true;
    // Claimed but not started: back to due at once, uncharged, for other instances.
    std::vector<uint64_t> back(ready_.begin(), ready_.end());
    ready_.clear();
    release(std::move(back));
}

void Relay::release(std::vector<uint64_t> seqs) {
    pending_releases_.insert(pending_releases_.end(), seqs.begin(), seqs.end());
    send_releases();
}

void Relay::send_releases() {
    if (release_in_flight_ || pending_releases_.empty() || !store_.can_record()) {
        return;
    }
    std::vector<uint64_t> batch;
    batch.swap(pending_releases_);
    std::vector<LeaseRef> leases;
    leases.reserve(batch.size());
    for (uint64_t s : batch) {
        auto it = held_.find(s);
        if (it != held_.end()) {
            leases.push_back({&it->second.event.id, it->second.token});
        }
    }
    release_in_flight_ = true;
    store_.release(leases, [this, batch = std::move(batch)](StoreStatus status, long released) {
        release_in_flight_ = false;
        if (!status.ok) {
            if (!status.lost) {
                spdlog::error("releasing {} events failed: {}", batch.size(), status.error);
            }
            pending_releases_.insert(pending_releases_.end(), batch.begin(), batch.end());
        } else {
            spdlog::info("released {} claimed events that had not started", released);
            for (uint64_t s : batch) {
                held_.erase(s);
            }
            send_releases();
        }
        host_.progress();
    });
}

bool Relay::drained() const {
    return pending_.empty() && !record_in_flight_ && pending_releases_.empty() &&
           !release_in_flight_ && !claim_in_flight_;
}

} // namespace outbox
