// The janitor: the supervisor's periodic housekeeping, apart from delivery (PgBouncer's janitor.c
// is the model). It sweeps expired leases back to due, reads the row counts that health, metrics
// and the console show (and, for the console's overview, the instances holding leases, the paused
// types and the dead-letter groups), samples the console's charts, deletes old completed rows
// (retention), writes the metrics log line and systemd's STATUS= line. Its statements can be slow
// on a big table (a retention catch-up runs batch after batch), so they run on a connection of
// their own and never hold up the relay.
//
// Everything runs on the supervisor's loop. Nothing here is needed for correctness of delivery
// except the lease sweep, which any instance may run: it is what makes an event whose instance
// died due again.
#pragma once

#include "common/config.h"
#include "supervisor/db_connection.h"
#include "supervisor/sd_notify.h"
#include "supervisor/telemetry.h"
#include "supervisor/uv_handle.h"

#include <functional>
#include <optional>
#include <string>

namespace outbox {

class Janitor {
  public:
    struct Hooks {
        std::function<size_t()> in_flight; // events running in handler processes
        std::function<bool()> draining;
        std::function<void()> on_swept; // events became due again: claim
    };

    // `db`, `telemetry`, `notifier` and `like_patterns` must outlive the janitor.
    Janitor(uv_loop_t* loop, const Config& config, DbConnection& db, Telemetry& telemetry,
            SystemdNotifier& notifier, const std::optional<std::string>& like_patterns,
            Hooks hooks);

    // Timers that need no database: STATUS= and the metrics log line.
    void start();
    // The schema is known to be right: sweeping, counting and retention may begin.
    void start_serving();
    // Draining: no more sweeps or retention (counts and the status line go on).
    void stop_for_drain();
    // Closes every timer. Queries in flight complete into a closed janitor harmlessly: they are
    // on a connection that is being closed too.
    void close();

    // Reads the counts now (after a reconnect, a reload, a metrics-log tick).
    void refresh_counts(std::function<void()> then = nullptr);
    void update_status();

  private:
    void sweep_expired_leases();
    void run_retention();
    void log_metrics_line();
    void write_metrics_line();
    void warn_blocked_keys(const DatabaseCounts& counts);
    void read_console_figures(const DatabaseCounts& counts);

    uv_loop_t* loop_;
    const Config& config_;
    DbConnection& db_;
    Telemetry& telemetry_;
    SystemdNotifier& notifier_;
    const std::optional<std::string>& like_patterns_;
    Hooks hooks_;
    bool serving_ = false;
    bool closed_ = false;

    Timer sweep_timer_, counts_timer_, retention_timer_, metrics_log_timer_, status_timer_;
    Timer history_timer_; // closes an interval of the console's charts (Telemetry::history)
    // The dead-letter groups read the whole queue: again only when its size changed, or after
    // kDlqGroupsMaxAgeMs.
    static constexpr uint64_t kDlqGroupsMaxAgeMs = 60000;
    long dlq_groups_count_ = -1;
    uint64_t dlq_groups_read_ms_ = 0;
    bool dlq_groups_in_flight_ = false;
    static constexpr uint64_t kBlockedWarningEveryMs = 60000;
    std::string blocked_warned_names_; // the long-blocked keys last warned about
    uint64_t blocked_warned_at_ms_ = 0;
    uint64_t completed_at_last_status_ = 0;
    uint64_t last_status_ms_ = 0;
};

} // namespace outbox
