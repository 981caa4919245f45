// What the supervisor knows about itself, for /metrics, /api/metrics/enhanced, /health, the
// periodic metrics log line and systemd's STATUS=. The relay reports events here; the HTTP layer
// and the log line read it. Single-threaded, on the supervisor's loop.
#pragma once

#include "supervisor/metrics.h"

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

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
    // For the console's overview (docs/console.md), JSON arrays as the janitor read them:
    // [{"instance", "leases", "latestLeaseExpiresAt"}], [{"eventType", "pausedAt", "pausedBy"}]
    // and the dead-letter groups [{"eventType", "reason", "count", "newest"}] (largest 100).
    std::string instances_json = "[]";
    std::string paused_json = "[]";
    std::string dlq_groups_json = "[]";
};

// One point of the console's charts: what happened in the interval that ended at `at_ms`.
struct HistoryPoint {
    int64_t at_ms = 0; // wall clock, epoch milliseconds
    double completed_per_s = 0, retried_per_s = 0, dead_lettered_per_s = 0;
    // End-to-end latency of the events completed in the interval (0 when none completed),
    // estimated from the latency histogram's buckets as Prometheus' histogram_quantile does.
    double latency_p50_s = 0, latency_p95_s = 0;
    long pending = 0, dlq = 0; // the latest counts read
};

// The q-quantile (0..1) of the observations counted in `cumulative` (per upper bound, then +Inf
// last, as HistogramSeries::cumulative_counts), interpolated linearly inside the bucket it falls
// in; the largest finite bound when it falls in +Inf; 0 without observations.
double histogram_quantile(double q, const std::vector<double>& upper_bounds,
                          const std::vector<uint64_t>& cumulative);

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
    // The janitor's console reads, which arrive apart from the counts.
    void set_console_reads(std::string instances_json, std::string paused_json);
    void set_dlq_groups(std::string dlq_groups_json);

    // The console's charts: every kHistoryIntervalMs the janitor closes an interval; the last
    // kHistoryPoints are kept (15 minutes). `now_ms` is monotonic (for the rates), `wall_ms` the
    // time the point shows. The first call only starts the first interval.
    static constexpr uint64_t kHistoryIntervalMs = 5000;
    static constexpr size_t kHistoryPoints = 180;
    void sample_history(uint64_t now_ms, int64_t wall_ms);
    const std::deque<HistoryPoint>& history() const { return history_; }
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
    uint64_t retried_total_ = 0;
    uint64_t dead_lettered_total_ = 0;

    // Where the current history interval began.
    struct HistoryMark {
        uint64_t at_ms = 0;
        uint64_t completed = 0, retried = 0, dead_lettered = 0;
        std::vector<uint64_t> latency; // the latency histogram's cumulative counts
    };
    std::optional<HistoryMark> history_mark_;
    std::deque<HistoryPoint> history_;
};

} // namespace outbox
