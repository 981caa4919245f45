// What the supervisor knows about itself, for /metrics, /api/metrics/enhanced, /health, the
// periodic metrics log line and systemd's STATUS=. The relay reports events here; the HTTP layer
// and the log line read it. Single-threaded, on the supervisor's loop.
#pragma once

#include "supervisor/metrics.h"

#include <cstdint>
#include <string>

namespace outbox {

// Row counts read from the database every few seconds (never per HTTP request).
struct DatabaseCounts {
    bool valid = false;      // at least one successful read
    uint64_t read_at_ms = 0; // loop time of that read
    long pending = 0, processing = 0, completed = 0, failed = 0, dlq = 0;
    double oldest_due_age_s = 0;
    std::string unsubscribed_json = "{}"; // {"eventType": count} of PENDING rows nobody here takes
    long blocked_keys = 0;                // ordering keys whose head is failing (SPEC 2a)
    long blocked_over_lease = 0;          // of those, blocked for longer than a lease
    std::string blocked_over_lease_names; // the longest-blocked of them, for the log
};

class Telemetry {
  public:
    Telemetry();

    void event_completed(const std::string& type, double latency_s);
    void event_retried(const std::string& type);
    void event_dead_lettered(const std::string& type);
    void handler_duration(const std::string& type, double seconds);
    void handler_start_latency(double seconds);
    void handler_restart(const char* reason);
    void lease_lost(long n = 1);
    void leases_expired_swept(long returned, long dead_lettered);
    void retention_deleted(long n);
    void set_in_flight(long n) { in_flight_->with({}).set(static_cast<double>(n)); }
    void set_database_up(bool up);
    void set_counts(const DatabaseCounts& counts);

    // The broker sinks' metrics, which the handler-process pool feeds.
    SinkMetrics& sinks() { return sinks_; }

    const DatabaseCounts& counts() const { return counts_; }
    bool database_up() const { return database_up_; }
    uint64_t completed_total() const { return completed_total_; }

    std::string render_prometheus() const { return registry_.render_prometheus(); }
    Json render_json() const { return registry_.render_json(); }

  private:
    MetricsRegistry registry_;
    SinkMetrics sinks_{registry_};
    Counter* completed_;
    Counter* retried_;
    Counter* dead_lettered_;
    Histogram* latency_;
    Histogram* start_latency_;
    Histogram* duration_;
    Gauge* in_flight_;
    Gauge* rows_;
    Gauge* dlq_rows_;
    Gauge* blocked_keys_;
    Gauge* oldest_due_;
    Counter* restarts_;
    Gauge* db_up_;
    Counter* leases_lost_;
    Counter* leases_expired_;
    Counter* retention_;
    Gauge* unsubscribed_;
    DatabaseCounts counts_;
    bool database_up_ = false;
    uint64_t completed_total_ = 0;
};

} // namespace outbox
