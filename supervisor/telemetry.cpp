#include "supervisor/telemetry.h"

#include "common/json.h"

#include <utility>

namespace outbox {

Telemetry::Telemetry() {
    completed_ = &registry_.counter("outbox_events_completed_total",
                                    "Events delivered successfully.", {"event_type"});
    retried_ =
        &registry_.counter("outbox_events_retried_total",
                           "Failed attempts that were scheduled for another try.", {"event_type"});
    dead_lettered_ = &registry_.counter("outbox_events_dead_lettered_total",
                                        "Events moved to the dead-letter queue.", {"event_type"});
    latency_ = &registry_.histogram(
        "outbox_event_latency_seconds",
        "From the event's commit (createdAt) to its completion being recorded.");
    start_latency_ =
        &registry_.histogram("outbox_event_start_latency_seconds",
                             "From the event's commit (createdAt) to a handler starting it.");
    duration_ = &registry_.histogram("outbox_handler_duration_seconds",
                                     "Time handlers spent on one attempt.", {"event_type"});
    in_flight_ = &registry_.gauge("outbox_events_in_flight",
                                  "Events sent to handler processes and not yet answered.");
    rows_ = &registry_.gauge("outbox_rows", "Outbox rows by status (read every few seconds).",
                             {"status"});
    dlq_rows_ = &registry_.gauge("outbox_dlq_rows", "Rows in the dead-letter queue (DlqEventLog).");
    blocked_keys_ = &registry_.gauge(
        "outbox_blocked_keys",
        "Ordering keys whose head event has failed and is not delivered yet (retrying, or "
        "dead-lettered under OUTBOX_ORDERING_ON_DEAD_LETTER=block).");
    oldest_due_ =
        &registry_.gauge("outbox_backlog_age_seconds", "Age of the oldest due PENDING event.");
    restarts_ = &registry_.counter("outbox_worker_restarts_total",
                                   "Handler processes replaced, by reason.", {"reason"});
    db_up_ =
        &registry_.gauge("outbox_database_up", "1 when the claim connection to PostgreSQL is up.");
    leases_lost_ =
        &registry_.counter("outbox_leases_lost_total",
                           "Events whose lease this instance lost before recording their outcome.");
    leases_expired_ = &registry_.counter(
        "outbox_leases_expired_total",
        "Expired leases (of any instance) swept by this instance, by outcome.", {"outcome"});
    retention_ = &registry_.counter("outbox_retention_deleted_total",
                                    "COMPLETED rows deleted by the retention sweep.");
    unsubscribed_ = &registry_.gauge(
        "outbox_unsubscribed_events",
        "PENDING events of types no subscriber of this instance handles.", {"event_type"});
    db_up_->set(0);
    in_flight_->with({}).set(0);
}

void Telemetry::event_completed(const std::string& type, double latency_s) {
    completed_->with({type}).inc();
    latency_->observe(latency_s < 0 ? 0 : latency_s);
    ++completed_total_;
}

void Telemetry::event_retried(const std::string& type) {
    retried_->with({type}).inc();
    ++retried_total_;
}

void Telemetry::event_dead_lettered(const std::string& type) {
    dead_lettered_->with({type}).inc();
    ++dead_lettered_total_;
}

void Telemetry::handler_duration(const std::string& type, double seconds) {
    duration_->with({type}).observe(seconds);
}

void Telemetry::handler_start_latency(double seconds) {
    start_latency_->observe(seconds < 0 ? 0 : seconds);
}

void Telemetry::handler_restart(const char* reason) {
    restarts_->with({reason}).inc();
}

void Telemetry::lease_lost(long n) {
    leases_lost_->inc(static_cast<double>(n));
}

void Telemetry::leases_expired_swept(long returned, long dead_lettered) {
    leases_expired_->with({"returned"}).inc(static_cast<double>(returned));
    leases_expired_->with({"dead_lettered"}).inc(static_cast<double>(dead_lettered));
}

void Telemetry::retention_deleted(long n) {
    retention_->inc(static_cast<double>(n));
}

void Telemetry::set_database_up(bool up) {
    database_up_ = up;
    db_up_->set(up ? 1 : 0);
}

void Telemetry::set_counts(const DatabaseCounts& counts) {
    rows_->with({"PENDING"}).set(static_cast<double>(counts.pending));
    rows_->with({"PROCESSING"}).set(static_cast<double>(counts.processing));
    rows_->with({"COMPLETED"}).set(static_cast<double>(counts.completed));
    rows_->with({"FAILED"}).set(static_cast<double>(counts.failed));
    dlq_rows_->set(static_cast<double>(counts.dlq));
    blocked_keys_->set(static_cast<double>(counts.blocked_keys));
    oldest_due_->set(counts.oldest_due_age_s);
    // Types that disappeared from the backlog drop to 0 rather than vanish, so alerts see the end.
    if (Json parsed = json_parse(counts.unsubscribed_json)) {
        const cJSON* item = nullptr;
        cJSON_ArrayForEach(item, parsed.get()) {
            unsubscribed_->with({item->string}).set(item->valuedouble);
        }
    }
    if (Json previous = json_parse(counts_.unsubscribed_json)) {
        Json current = json_parse(counts.unsubscribed_json);
        const cJSON* item = nullptr;
        cJSON_ArrayForEach(item, previous.get()) {
            if (!current || !cJSON_HasObjectItem(current.get(), item->string)) {
                unsubscribed_->with({item->string}).set(0);
            }
        }
    }
    // The console's reads arrive by their own setters and outlive a counts update.
    std::string instances = std::move(counts_.instances_json);
    std::string paused = std::move(counts_.paused_json);
    std::string groups = std::move(counts_.dlq_groups_json);
    counts_ = counts;
    counts_.instances_json = std::move(instances);
    counts_.paused_json = std::move(paused);
    counts_.dlq_groups_json = std::move(groups);
}

void Telemetry::set_console_reads(std::string instances_json, std::string paused_json) {
    counts_.instances_json = std::move(instances_json);
    counts_.paused_json = std::move(paused_json);
}

void Telemetry::set_dlq_groups(std::string dlq_groups_json) {
    counts_.dlq_groups_json = std::move(dlq_groups_json);
}

double histogram_quantile(double q, const std::vector<double>& upper_bounds,
                          const std::vector<uint64_t>& cumulative) {
    if (cumulative.empty() || cumulative.back() == 0 || upper_bounds.empty()) {
        return 0;
    }
    double rank = q * static_cast<double>(cumulative.back());
    for (size_t i = 0; i < cumulative.size(); ++i) {
        if (static_cast<double>(cumulative[i]) < rank || cumulative[i] == 0) {
            continue;
        }
        if (i >= upper_bounds.size()) {
            return upper_bounds.back(); // in +Inf: the largest finite bound is all we know
        }
        double lower = i == 0 ? 0 : upper_bounds[i - 1];
        double below = i == 0 ? 0 : static_cast<double>(cumulative[i - 1]);
        double in_bucket = static_cast<double>(cumulative[i]) - below;
        if (in_bucket <= 0) {
            return upper_bounds[i];
        }
        return lower + (upper_bounds[i] - lower) * (rank - below) / in_bucket;
    }
    return upper_bounds.back();
}

void Telemetry::sample_history(uint64_t now_ms, int64_t wall_ms) {
    HistoryMark mark{now_ms, completed_total_, retried_total_, dead_lettered_total_,
                     latency_->with({}).cumulative_counts()};
    if (history_mark_ && now_ms > history_mark_->at_ms) {
        const HistoryMark& from = *history_mark_;
        double seconds = static_cast<double>(now_ms - from.at_ms) / 1000.0;
        HistoryPoint p;
        p.at_ms = wall_ms;
        p.completed_per_s = static_cast<double>(mark.completed - from.completed) / seconds;
        p.retried_per_s = static_cast<double>(mark.retried - from.retried) / seconds;
        p.dead_lettered_per_s =
            static_cast<double>(mark.dead_lettered - from.dead_lettered) / seconds;
        std::vector<uint64_t> delta(mark.latency.size());
        for (size_t i = 0; i < delta.size() && i < from.latency.size(); ++i) {
            delta[i] = mark.latency[i] - from.latency[i];
        }
        const std::vector<double>& bounds = latency_->upper_bounds();
        p.latency_p50_s = histogram_quantile(0.5, bounds, delta);
        p.latency_p95_s = histogram_quantile(0.95, bounds, delta);
        p.pending = counts_.pending;
        p.dlq = counts_.dlq;
        history_.push_back(p);
        while (history_.size() > kHistoryPoints) {
            history_.pop_front();
        }
    }
    history_mark_ = std::move(mark);
}

} // namespace outbox
