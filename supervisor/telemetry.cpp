#include "supervisor/telemetry.h"

#include "common/json.h"

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
}

void Telemetry::event_dead_lettered(const std::string& type) {
    dead_lettered_->with({type}).inc();
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
    counts_ = counts;
}

} // namespace outbox
