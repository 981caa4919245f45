#include "supervisor/janitor.h"

#include "supervisor/queries.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>

namespace outbox {

namespace {

constexpr uint64_t kCountsIntervalMs = 5000;
constexpr uint64_t kStatusIntervalMs = 2000;
constexpr uint64_t kRetentionIntervalMs = 10 * 60 * 1000;
// The first retention sweep runs shortly after serving begins rather than a full interval later:
// a service restarted more often than every interval (deploys, crash loops) would otherwise never
// sweep, and operators and tests can see it work without waiting ten minutes.
constexpr uint64_t kRetentionFirstDelayMs = 5000;
constexpr int kRetentionBatch = 1000;
constexpr int kSweepBatch = 500;

long to_long(std::string_view text) {
    long v = 0;
    std::from_chars(text.data(), text.data() + text.size(), v);
    return v;
}

int64_t wall_clock_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

double to_double(std::string_view text) {
    double v = 0;
    std::from_chars(text.data(), text.data() + text.size(), v);
    return v;
}

} // namespace

Janitor::Janitor(uv_loop_t* loop, const Config& config, DbConnection& db, Telemetry& telemetry,
                 SystemdNotifier& notifier, const std::optional<std::string>& like_patterns,
                 Hooks hooks)
    : loop_(loop), config_(config), db_(db), telemetry_(telemetry), notifier_(notifier),
      like_patterns_(like_patterns), hooks_(std::move(hooks)),
      sweep_timer_(loop, [this] { sweep_expired_leases(); }),
      counts_timer_(loop, [this] { refresh_counts(); }),
      retention_timer_(loop, [this] { run_retention(); }),
      metrics_log_timer_(loop, [this] { log_metrics_line(); }),
      status_timer_(loop, [this] { update_status(); }),
      history_timer_(loop, [this] { telemetry_.sample_history(uv_now(loop_), wall_clock_ms()); }) {}

void Janitor::start() {
    if (config_.metrics_log_interval_ms > 0) {
        auto every = static_cast<uint64_t>(config_.metrics_log_interval_ms);
        metrics_log_timer_.start(every, every);
    }
    status_timer_.start(kStatusIntervalMs, kStatusIntervalMs);
    telemetry_.sample_history(uv_now(loop_), wall_clock_ms());
    history_timer_.start(Telemetry::kHistoryIntervalMs, Telemetry::kHistoryIntervalMs);
}

void Janitor::start_serving() {
    serving_ = true;
    uint64_t sweep_every = static_cast<uint64_t>(std::clamp(config_.lease_ms / 2, 500L, 15000L));
    sweep_timer_.start(sweep_every, sweep_every);
    counts_timer_.start(kCountsIntervalMs, kCountsIntervalMs);
    if (config_.retention_hours > 0) {
        retention_timer_.start(kRetentionFirstDelayMs, kRetentionIntervalMs);
    }
    refresh_counts();
}

void Janitor::stop_for_drain() {
    sweep_timer_.stop();
    retention_timer_.stop();
}

void Janitor::close() {
    closed_ = true;
    for (Timer* t : {&sweep_timer_, &counts_timer_, &retention_timer_, &metrics_log_timer_,
                     &status_timer_, &history_timer_}) {
        t->close();
    }
}

void Janitor::sweep_expired_leases() {
    if (!serving_ || closed_ || hooks_.draining() || !db_.connected()) {
        return;
    }
    db_.query(sql::kSweepExpiredLeases,
              {std::to_string(config_.lease_ms), std::to_string(kSweepBatch)},
              [this](QueryResult&& r) {
                  if (!r.ok()) {
                      if (!r.lost) {
                          spdlog::error("sweeping expired leases failed: {}", r.error());
                      }
                      return;
                  }
                  long returned = to_long(r.result.view(0, 0));
                  long dead = to_long(r.result.view(0, 1));
                  if (returned + dead > 0) {
                      spdlog::warn("lease sweep: {} events whose lease expired returned to due, "
                                   "{} moved to the dead-letter queue",
                                   returned, dead);
                      telemetry_.leases_expired_swept(returned, dead);
                      if (!closed_) {
                          hooks_.on_swept();
                      }
                  }
              });
}

void Janitor::refresh_counts(std::function<void()> then) {
    if (!serving_ || closed_ || !db_.connected()) {
        return;
    }
    db_.query(sql::kStatusCounts, {like_patterns_, std::to_string(config_.lease_ms)},
              [this, then = std::move(then)](QueryResult&& r) {
                  if (!r.ok()) {
                      if (!r.lost) {
                          spdlog::error("reading status counts failed: {}", r.error());
                      }
                      return;
                  }
                  DatabaseCounts c;
                  c.valid = true;
                  c.read_at_ms = uv_now(loop_);
                  c.pending = to_long(r.result.view(0, 0));
                  c.processing = to_long(r.result.view(0, 1));
                  c.completed = to_long(r.result.view(0, 2));
                  c.failed = to_long(r.result.view(0, 3));
                  c.dlq = to_long(r.result.view(0, 4));
                  c.oldest_due_age_s = to_double(r.result.view(0, 5));
                  c.unsubscribed_json = r.result.value(0, 6);
                  c.blocked_keys = to_long(r.result.view(0, 7));
                  c.blocked_over_lease = to_long(r.result.view(0, 8));
                  c.blocked_over_lease_names = r.result.value(0, 9);
                  warn_blocked_keys(c);
                  if (c.unsubscribed_json != "{}" &&
                      c.unsubscribed_json != telemetry_.counts().unsubscribed_json) {
                      spdlog::warn(
                          "pending events of types no subscriber here handles (left for other "
                          "deployments): {}",
                          c.unsubscribed_json);
                  }
                  telemetry_.set_counts(c);
                  read_console_figures(c);
                  if (then && !closed_) {
                      then();
                  }
              });
}

void Janitor::read_console_figures(const DatabaseCounts& counts) {
    if (closed_ || !db_.connected()) {
        return;
    }
    db_.query(sql::kConsoleLeasesAndPaused, {}, [this](QueryResult&& r) {
        if (!r.ok()) {
            if (!r.lost) {
                spdlog::error("reading the console's leases and paused types failed: {}",
                              r.error());
            }
            return;
        }
        telemetry_.set_console_reads(r.result.value(0, 0), r.result.value(0, 1));
    });
    uint64_t now = uv_now(loop_);
    if (dlq_groups_in_flight_ ||
        (counts.dlq == dlq_groups_count_ && now - dlq_groups_read_ms_ < kDlqGroupsMaxAgeMs)) {
        return;
    }
    dlq_groups_in_flight_ = true;
    db_.query(sql::kConsoleDlqGroups, {}, [this, count = counts.dlq, now](QueryResult&& r) {
        dlq_groups_in_flight_ = false;
        if (!r.ok()) {
            if (!r.lost) {
                spdlog::error("reading the dead-letter groups failed: {}", r.error());
            }
            return;
        }
        dlq_groups_count_ = count;
        dlq_groups_read_ms_ = now;
        telemetry_.set_dlq_groups(r.result.value(0, 0));
    });
}

void Janitor::warn_blocked_keys(const DatabaseCounts& c) {
    // SPEC 2a: a key blocked for longer than a lease is worth an operator's look (its head keeps
    // failing, or sits in the DLQ under the block policy). Once when the set of the longest-
    // blocked keys changes, and again every minute while any stays blocked, not every pass.
    if (c.blocked_over_lease == 0) {
        blocked_warned_names_.clear();
        return;
    }
    uint64_t now = uv_now(loop_);
    if (c.blocked_over_lease_names == blocked_warned_names_ &&
        now - blocked_warned_at_ms_ < kBlockedWarningEveryMs) {
        return;
    }
    blocked_warned_names_ = c.blocked_over_lease_names;
    blocked_warned_at_ms_ = now;
    spdlog::warn("{} ordering key(s) blocked for longer than a lease ({} ms), their later events "
                 "waiting: {}{}; see `outbox-worker ordering blocked`",
                 c.blocked_over_lease, config_.lease_ms, c.blocked_over_lease_names,
                 c.blocked_over_lease > 5 ? ", ..." : "");
}

void Janitor::run_retention() {
    if (!serving_ || closed_ || hooks_.draining() || !db_.connected()) {
        return;
    }
    db_.query(sql::kRetentionBatch,
              {std::to_string(config_.retention_hours), std::to_string(kRetentionBatch)},
              [this](QueryResult&& r) {
                  if (!r.ok()) {
                      if (!r.lost) {
                          spdlog::error("retention sweep failed: {}", r.error());
                      }
                      return;
                  }
                  long deleted = to_long(PQcmdTuples(r.result.get()));
                  if (deleted > 0) {
                      telemetry_.retention_deleted(deleted);
                      spdlog::info("retention: deleted {} completed events older than {} h",
                                   deleted, config_.retention_hours);
                  }
                  if (deleted >= kRetentionBatch) {
                      run_retention(); // more to do: the next small batch
                  }
              });
}

void Janitor::log_metrics_line() {
    if (serving_ && db_.connected()) {
        // Fresh counts for the line, not the cached ones of up to five seconds ago.
        refresh_counts([this] { write_metrics_line(); });
        return;
    }
    write_metrics_line();
}

void Janitor::write_metrics_line() {
    const DatabaseCounts& c = telemetry_.counts();
    if (!c.valid) {
        spdlog::info("metrics: database counts not available yet (database {})",
                     telemetry_.database_up() ? "up" : "down");
        return;
    }
    spdlog::info("metrics: total={} pending={} processing={} completed={} failed={} dlq={}",
                 c.pending + c.processing + c.completed + c.failed, c.pending, c.processing,
                 c.completed, c.failed, c.dlq);
}

void Janitor::update_status() {
    uint64_t now = uv_now(loop_);
    uint64_t done = telemetry_.completed_total();
    double rate = 0;
    if (last_status_ms_ != 0 && now > last_status_ms_) {
        rate = static_cast<double>(done - completed_at_last_status_) * 1000.0 /
               static_cast<double>(now - last_status_ms_);
    }
    last_status_ms_ = now;
    completed_at_last_status_ = done;
    char line[200];
    std::snprintf(line, sizeof line, "%s%.0f ev/s, %zu in flight, %ld in DLQ%s",
                  hooks_.draining() ? "draining: " : "", rate, hooks_.in_flight(),
                  telemetry_.counts().dlq,
                  telemetry_.database_up() ? "" : ", database unreachable");
    notifier_.status(line);
}

} // namespace outbox
