// The supervisor: claims due events with leases, feeds them to the handler-process pool, records
// outcomes in batches, renews and sweeps leases, serves health and metrics, and drains on SIGTERM.
//
// Flow of one event:
//   claim (claim connection) -> ready_ queue -> pool.dispatch -> handler process -> RESULT
//   -> pending_results_ -> one batched statement (result connection) -> forgotten.
// Every event this instance holds has an entry in deliveries_ from its claim until its outcome is
// recorded (or its lease is known to be lost); that map is what lease renewal renews and what a
// clean stop releases, so nothing this instance claimed is left PROCESSING by a clean stop.

#include "supervisor/service.h"

#include "common/backoff.h"
#include "common/check.h"
#include "common/glob.h"
#include "common/migrations.h"
#include "common/pg.h"
#include "common/protocol.h"
#include "supervisor/claimed_event.h"
#include "supervisor/db_connection.h"
#include "supervisor/http_server.h"
#include "supervisor/queries.h"
#include "supervisor/sd_notify.h"
#include "supervisor/telemetry.h"
#include "supervisor/worker_pool.h"
#include "worker/handlers_file.h"

#include <spdlog/spdlog.h>
#include <uv.h>

#include <chrono>
#include <csignal>
#include <deque>
#include <random>
#include <unordered_map>
#include <unordered_set>

namespace outbox {

namespace {

// Outcome kinds of kRecordResults.
constexpr int kKindSuccess = 0;
constexpr int kKindRetry = 1;
constexpr int kKindDeadLetter = 2;

// Events sent to one handler process ahead of the one it is running: enough to hide the
// round trip of a result, few enough that a slow event delays little behind it.
constexpr int kPipelineDepth = 4;
constexpr size_t kMaxResultsPerStatement = 1000;
constexpr long kStatsIntervalMs = 5000;
constexpr long kRetentionIntervalMs = 10 * 60 * 1000;
// The first retention sweep runs shortly after the schema check rather than a full interval
// later: a service restarted more often than every interval (deploys, crash loops) would otherwise
// never sweep, and operators and tests can see it work without waiting ten minutes.
constexpr long kRetentionFirstDelayMs = 5000;
constexpr int kRetentionBatch = 1000;
constexpr int kSweepBatch = 500;
// An unstarted event whose lease is this close to running out is not started: by the time it
// ran, another instance could have swept and re-claimed it.
constexpr long kLeaseSafetyMs = 1000;
constexpr long kFinalFlushGraceMs = 5000;
constexpr long kRetryWakeSlackMs = 20;

int64_t wall_clock_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

struct Delivery {
    std::string id;
    int64_t token = 0;
    int retry_count = 0;
    int max_retries = 5;
    std::string event_type;
    int64_t created_at_ms = 0;
    std::string wire; // the event's fields encoded for the EVENT frame (claimed_event.h)
    long timeout_ms = 0;
    uint64_t lease_deadline_ms = 0; // loop time by which the lease surely has not expired
    bool running = false;           // handed to a handler process
    bool finished = false;          // outcome known, waiting to be recorded
    bool lease_lost = false;
};

struct PendingResult {
    uint64_t seq;
    int kind;
    std::string error;
    long delay_ms;
};

class Supervisor {
  public:
    Supervisor(const Config& config, std::vector<Subscriber> code_subscribers)
        : config_(config), code_subscribers_(std::move(code_subscribers)),
          backoff_(BackoffPolicy{config.initial_delay_ms, config.max_delay_ms,
                                 config.backoff_multiplier, config.backoff_jitter}) {
        std::random_device rd;
        // Claim tokens: a random 62-bit starting point per process, then a counter. Two claims
        // never share a token, so a result is fenced to exactly the claim it belongs to.
        next_token_ = (static_cast<int64_t>(rd()) << 30 ^ static_cast<int64_t>(rd())) &
                      ((int64_t{1} << 61) - 1);
        next_token_ += 1;
    }

    int run();

  private:
    // Setup and teardown.
    bool load_subscribers(std::string& error);
    void start_handles();
    void on_claim_connected();
    void check_schema();
    void on_schema_version(int version);
    void maybe_report_ready();
    void on_signal(int signum);
    void begin_drain();
    void check_drain_progress();
    void on_drain_deadline();
    void finish();
    void reload();

    // Claiming and dispatch.
    void wake();
    void maybe_claim();
    void on_claimed(QueryResult&& r, int requested, int64_t token, uint64_t sent_at);
    void pump();
    long timeout_for(const std::string& event_type);

    // Outcomes.
    void on_result(uint64_t seq, ResultMsg&& result);
    void on_failed(uint64_t seq, const std::string& error, bool permanent, long retry_after_ms);
    void on_returned(std::vector<uint64_t> seqs);
    void flush_results();
    void on_results_recorded(QueryResult&& r, std::vector<PendingResult> batch);
    void forget(uint64_t seq);
    void schedule_wake_at(uint64_t loop_ms);

    // Leases and housekeeping.
    void renew_leases();
    void sweep_expired_leases();
    void release(std::vector<uint64_t> seqs);
    void refresh_counts();
    void run_retention();
    void log_metrics_line();
    void write_metrics_line();
    void refresh_counts_then(std::function<void()> then);
    void update_status();

    // HTTP.
    HttpResponse health() const;
    HttpResponse readiness() const;
    HttpResponse enhanced_metrics() const;

    Config config_;
    std::vector<Subscriber> code_subscribers_;
    std::shared_ptr<const std::vector<Subscriber>> subscribers_;
    std::optional<std::string> like_patterns_; // NULL when some subscriber takes every type
    std::unordered_map<std::string, long> timeout_cache_;
    Backoff backoff_;

    uv_loop_t loop_{};
    std::unique_ptr<DbConnection> claim_db_;
    std::unique_ptr<DbConnection> result_db_;
    // Status counts, the lease sweep and retention: statements that scan the table and may take
    // long on a big one (a retention catch-up runs batch after batch), kept off the claim and
    // result connections so that they never hold up delivery.
    std::unique_ptr<DbConnection> house_db_;
    std::unique_ptr<WorkerPool> pool_;
    std::unique_ptr<HttpServer> http_;
    SystemdNotifier notifier_;
    Telemetry telemetry_;

    uv_signal_t sigterm_{}, sigint_{}, sighup_{};
    uv_timer_t poll_timer_{}, wake_timer_{}, renew_timer_{}, sweep_timer_{}, stats_timer_{},
        retention_timer_{}, metrics_log_timer_{}, watchdog_timer_{}, drain_timer_{},
        status_timer_{};
    uv_check_t flush_check_{};

    std::unordered_map<uint64_t, Delivery> deliveries_;
    std::deque<uint64_t> ready_;
    std::vector<PendingResult> pending_results_;
    std::vector<uint64_t> pending_releases_;
    bool results_in_flight_ = false;
    bool releases_in_flight_ = false;
    bool claim_in_flight_ = false;
    bool more_due_ = true; // the last claim was full, or a notification arrived since
    uint64_t next_seq_ = 1;
    int64_t next_token_ = 1;
    uint64_t wake_at_ms_ = 0;

    bool schema_ok_ = false;
    bool ready_reported_ = false;
    bool draining_ = false;
    bool drain_deadline_passed_ = false;
    bool finishing_ = false;
    int signals_seen_ = 0;
    int exit_code_ = kExitOk;
    std::string fatal_error_;
    uint64_t completed_at_last_status_ = 0;
    uint64_t last_status_ms_ = 0;
};

bool Supervisor::load_subscribers(std::string& error) {
    auto all = std::make_shared<std::vector<Subscriber>>(code_subscribers_);
    if (!config_.handlers_path.empty()) {
        HandlersFileResult loaded =
            load_handlers_file(config_.handlers_path, config_.handler_timeout_ms);
        if (!loaded.subscribers) {
            error = loaded.error;
            return false;
        }
        for (auto& s : *loaded.subscribers) {
            all->push_back(std::move(s));
        }
    }
    if (all->empty()) {
        error = "no handlers: set OUTBOX_HANDLERS to a handlers file (see examples/handlers.json) "
                "or register subscribers in code with outbox::Worker::subscribe()";
        return false;
    }
    std::vector<std::string> likes;
    bool everything = false;
    for (const auto& s : *all) {
        for (const auto& p : s.patterns) {
            if (p == "*") {
                everything = true;
            }
            likes.push_back(glob_to_like(p));
        }
    }
    like_patterns_ = everything ? std::nullopt : std::optional<std::string>(pg_text_array(likes));
    subscribers_ = std::move(all);
    timeout_cache_.clear();
    return true;
}

long Supervisor::timeout_for(const std::string& event_type) {
    auto it = timeout_cache_.find(event_type);
    if (it != timeout_cache_.end()) {
        return it->second;
    }
    // Matching subscribers run one after another in the same process, so the event may take the
    // sum of their limits. The cache is bounded by the number of distinct types seen.
    long total = 0;
    for (const auto& s : *subscribers_) {
        if (s.matches(event_type)) {
            total += s.timeout_ms;
        }
    }
    if (total == 0) {
        total = config_.handler_timeout_ms;
    }
    if (timeout_cache_.size() < 10000) {
        timeout_cache_.emplace(event_type, total);
    }
    return total;
}

int Supervisor::run() {
    // A write to a channel whose handler process just died, or to an HTTP client that went away,
    // must be an EPIPE error to handle, not a signal that kills the supervisor.
    signal(SIGPIPE, SIG_IGN);
    std::string error;
    if (!load_subscribers(error)) {
        spdlog::error("{}", error);
        return kExitConfig;
    }
    OUTBOX_CHECK(uv_loop_init(&loop_) == 0);
    start_handles();
    if (exit_code_ == kExitOk) {
        uv_run(&loop_, UV_RUN_DEFAULT);
    }
    // Every handle is closed by now (finish()); a non-zero here would be a leak of ours.
    int rc = uv_loop_close(&loop_);
    if (rc != 0) {
        spdlog::error("event loop closed with handles still open ({})", uv_strerror(rc));
    }
    if (!fatal_error_.empty()) {
        spdlog::error("{}", fatal_error_);
    }
    spdlog::info("stopped (exit code {})", exit_code_);
    return exit_code_;
}

void Supervisor::start_handles() {
    spdlog::info("starting: instance {}, {} handler processes, batch {}, lease {} ms, database {}",
                 config_.instance_id, config_.workers, config_.batch_size, config_.lease_ms,
                 mask_conninfo(config_.database_url));

    auto init_timer = [&](uv_timer_t& t) {
        uv_timer_init(&loop_, &t);
        t.data = this;
    };
    for (uv_timer_t* t : {&poll_timer_, &wake_timer_, &renew_timer_, &sweep_timer_, &stats_timer_,
                          &retention_timer_, &metrics_log_timer_, &watchdog_timer_, &drain_timer_,
                          &status_timer_}) {
        init_timer(*t);
    }
    for (auto [sig, handle] : {std::pair{SIGTERM, &sigterm_}, std::pair{SIGINT, &sigint_},
                               std::pair{SIGHUP, &sighup_}}) {
        uv_signal_init(&loop_, handle);
        handle->data = this;
        uv_signal_start(
            handle, [](uv_signal_t* h, int s) { static_cast<Supervisor*>(h->data)->on_signal(s); },
            sig);
    }
    // Results are flushed once per loop iteration, after the I/O of that iteration: all results
    // that arrived together go out in one statement.
    uv_check_init(&loop_, &flush_check_);
    flush_check_.data = this;
    uv_check_start(&flush_check_, [](uv_check_t* h) {
        auto* self = static_cast<Supervisor*>(h->data);
        self->flush_results();
        self->pump();
    });

    claim_db_ = std::make_unique<DbConnection>(
        &loop_, config_.database_url, "claim", sql::kNotifyChannel,
        DbConnection::Callbacks{[this] { on_claim_connected(); },
                                [this](const std::string&) {
                                    telemetry_.set_database_up(false);
                                    claim_in_flight_ = false;
                                },
                                [this](const std::string&) {
                                    wake();
                                }});
    result_db_ =
        std::make_unique<DbConnection>(&loop_, config_.database_url, "results", "",
                                       DbConnection::Callbacks{[this] {
                                                                   flush_results();
                                                                   if (!pending_releases_.empty()) {
                                                                       release({});
                                                                   }
                                                               },
                                                               nullptr, nullptr});
    house_db_ = std::make_unique<DbConnection>(
        &loop_, config_.database_url, "housekeeping", "",
        DbConnection::Callbacks{[this] { refresh_counts(); }, nullptr, nullptr});
    claim_db_->start();
    result_db_->start();
    house_db_->start();

    if (config_.http_port != 0) {
        HttpRouter router;
        router.get("/health", [this](const HttpRequest&) { return health(); });
        router.get("/ready", [this](const HttpRequest&) { return readiness(); });
        router.get("/metrics", [this](const HttpRequest&) {
            HttpResponse r;
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r.body = telemetry_.render_prometheus();
            return r;
        });
        router.get("/api/metrics/enhanced",
                   [this](const HttpRequest&) { return enhanced_metrics(); });
        http_ = std::make_unique<HttpServer>(
            &loop_, HttpServerLimits{},
            [router = std::move(router)](const HttpRequest& req) { return router.dispatch(req); });
        int rc = http_->listen(config_.http_host, config_.http_port);
        if (rc != 0) {
            fatal_error_ = "cannot listen on " + config_.http_host + ":" +
                           std::to_string(config_.http_port) + ": " + uv_strerror(rc) +
                           " (set OUTBOX_HTTP_PORT, or 0 to disable the endpoint)";
            exit_code_ = kExitFailure;
            finish();
            return;
        }
        spdlog::info("health and metrics on http://{}:{}/", config_.http_host, http_->bound_port());
    }

    uv_timer_start(
        &poll_timer_, [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->wake(); },
        static_cast<uint64_t>(config_.poll_interval_ms),
        static_cast<uint64_t>(config_.poll_interval_ms));
    uint64_t renew_every = static_cast<uint64_t>(std::max(250L, config_.lease_ms / 3));
    uv_timer_start(
        &renew_timer_, [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->renew_leases(); },
        renew_every, renew_every);
    uint64_t sweep_every = static_cast<uint64_t>(std::clamp(config_.lease_ms / 2, 500L, 15000L));
    uv_timer_start(
        &sweep_timer_,
        [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->sweep_expired_leases(); },
        sweep_every, sweep_every);
    uv_timer_start(
        &stats_timer_, [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->refresh_counts(); },
        kStatsIntervalMs, kStatsIntervalMs);
    if (config_.metrics_log_interval_ms > 0) {
        auto every = static_cast<uint64_t>(config_.metrics_log_interval_ms);
        uv_timer_start(
            &metrics_log_timer_,
            [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->log_metrics_line(); }, every,
            every);
    }
    uv_timer_start(
        &status_timer_, [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->update_status(); },
        2000, 2000);
    if (auto usec = notifier_.watchdog_usec()) {
        // Pinged from the loop itself: if the loop stalls, the pings stop and systemd restarts us.
        uint64_t every = std::max<uint64_t>(1, *usec / 2000);
        uv_timer_start(
            &watchdog_timer_,
            [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->notifier_.watchdog(); }, every,
            every);
    }
}

void Supervisor::on_claim_connected() {
    telemetry_.set_database_up(true);
    if (!schema_ok_) {
        check_schema();
        return;
    }
    refresh_counts();
    wake();
}

void Supervisor::check_schema() {
    claim_db_->query(sql::kSchemaTableExists, {}, [this](QueryResult&& exists) {
        if (!exists.ok()) {
            if (!exists.lost) {
                spdlog::error("cannot read the schema version: {}", exists.error());
            }
            return; // retried on the next connect
        }
        if (exists.result.view(0, 0) != "t") {
            on_schema_version(-1);
            return;
        }
        claim_db_->query(sql::kSchemaVersion, {}, [this](QueryResult&& r) {
            if (!r.ok()) {
                if (!r.lost) {
                    spdlog::error("cannot read the schema version: {}", r.error());
                }
                return;
            }
            on_schema_version(std::stoi(r.result.value(0, 0)));
        });
    });
}

void Supervisor::on_schema_version(int version) {
    int needed = latest_migration_version();
    if (version < needed) {
        fatal_error_ =
            version < 0
                ? "the database has no outbox-worker schema: run `outbox-worker migrate` first"
                : "the database schema is at version " + std::to_string(version) +
                      ", this outbox-worker needs " + std::to_string(needed) +
                      ": run `outbox-worker migrate` first";
        exit_code_ = kExitFailure;
        finish();
        return;
    }
    {
        schema_ok_ = true;
        PoolOptions opts;
        opts.workers = config_.workers;
        opts.pipeline_depth = kPipelineDepth;
        opts.max_events_per_process = config_.worker_max_events;
        opts.memory_limit_mb = config_.worker_memory_mb;
        pool_ = std::make_unique<WorkerPool>(
            &loop_, opts, subscribers_,
            WorkerPool::Callbacks{
                [this](uint64_t seq, ResultMsg&& res) { on_result(seq, std::move(res)); },
                [this](uint64_t seq, std::string error) { on_failed(seq, error, false, 0); },
                [this](std::vector<uint64_t> seqs) { on_returned(std::move(seqs)); },
                [this] {
                    maybe_report_ready();
                    pump();
                    if (draining_) {
                        check_drain_progress();
                    }
                },
                [this](RestartReason reason) { telemetry_.handler_restart(to_string(reason)); },
                [this](uint64_t seq) {
                    auto it = deliveries_.find(seq);
                    if (it != deliveries_.end()) {
                        telemetry_.handler_start_latency(
                            static_cast<double>(wall_clock_us() / 1000 - it->second.created_at_ms) /
                            1000.0);
                    }
                }});
        pool_->start();
        if (config_.retention_hours > 0) {
            uv_timer_start(
                &retention_timer_,
                [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->run_retention(); },
                kRetentionFirstDelayMs, kRetentionIntervalMs);
        }
        refresh_counts();
        wake();
    }
}

void Supervisor::maybe_report_ready() {
    if (ready_reported_ || draining_ || !schema_ok_ || pool_ == nullptr ||
        !claim_db_->connected()) {
        return;
    }
    if (pool_->ready_processes() < config_.workers) {
        return;
    }
    ready_reported_ = true;
    notifier_.ready();
    spdlog::info("ready: {} handler processes, {} subscribers", config_.workers,
                 subscribers_->size());
    update_status();
}

void Supervisor::on_signal(int signum) {
    if (signum == SIGHUP) {
        reload();
        return;
    }
    ++signals_seen_;
    if (signals_seen_ == 1) {
        spdlog::info("received {}: draining (up to {} ms)",
                     signum == SIGTERM ? "SIGTERM" : "SIGINT", config_.shutdown_timeout_ms);
        begin_drain();
    } else {
        spdlog::warn("received a second stop signal: stopping now");
        on_drain_deadline();
    }
}

void Supervisor::reload() {
    if (draining_) {
        return;
    }
    if (config_.handlers_path.empty()) {
        spdlog::info("SIGHUP: no handlers file to reload (OUTBOX_HANDLERS is not set)");
        return;
    }
    auto old = subscribers_;
    auto old_like = like_patterns_;
    std::string error;
    if (!load_subscribers(error)) {
        subscribers_ = old;
        like_patterns_ = old_like;
        timeout_cache_.clear();
        spdlog::error("SIGHUP: keeping the current handlers, the new file is invalid: {}", error);
        return;
    }
    spdlog::info("SIGHUP: handlers file reloaded ({} subscribers); replacing handler processes",
                 subscribers_->size());
    if (pool_) {
        pool_->replace_subscribers(subscribers_);
    }
    more_due_ = true;
    maybe_claim();
}

// ---- claiming -------------------------------------------------------------------------------

void Supervisor::wake() {
    more_due_ = true;
    maybe_claim();
}

void Supervisor::maybe_claim() {
    if (draining_ || !schema_ok_ || pool_ == nullptr || claim_in_flight_ || !more_due_ ||
        !claim_db_->connected()) {
        return;
    }
    // Read ahead: claim a whole batch whenever at most one batch is left waiting for a handler
    // process. Whole batches keep the statements per event low (a claim of 100 costs little more
    // than a claim of 20), and the batch still waiting covers the claim's round trip at full
    // speed. One instance holds at most two batches beyond what its processes run, so it never
    // hoards a backlog that other instances could be working on.
    long holding = static_cast<long>(ready_.size());
    if (holding > config_.batch_size) {
        return;
    }
    // Outcomes not yet recorded count against claiming too: when the result statements fall
    // behind (a slow or overloaded database), claiming more would only grow what this instance
    // holds in memory and under lease.
    long unrecorded =
        static_cast<long>(deliveries_.size()) - holding - static_cast<long>(pool_->in_flight());
    if (unrecorded >= static_cast<long>(kMaxResultsPerStatement)) {
        return;
    }
    int requested = config_.batch_size;
    int64_t token = next_token_++;
    claim_in_flight_ = true;
    more_due_ = false;
    uint64_t sent_at = uv_now(&loop_);
    claim_db_->query_prepared("outbox_claim", sql::kClaim,
                              {config_.instance_id, std::to_string(requested), like_patterns_,
                               std::to_string(token), std::to_string(config_.lease_ms)},
                              [this, requested, sent_at, token](QueryResult&& r) {
                                  on_claimed(std::move(r), requested, token, sent_at);
                              });
}

void Supervisor::on_claimed(QueryResult&& r, int requested, int64_t token, uint64_t sent_at) {
    claim_in_flight_ = false;
    if (!r.ok()) {
        if (!r.lost) {
            spdlog::error("claiming events failed: {}", r.error());
        }
        // A claim whose outcome is unknown (connection lost) may have claimed rows: they are
        // swept when their lease expires, charged as one attempt (SPEC 2, at least once).
        more_due_ = true;
        return;
    }
    int rows = r.result.rows();
    for (int i = 0; i < rows; ++i) {
        Decoded<ClaimedEvent> claimed = claimed_event_from_row(r.result, i);
        if (!claimed) {
            // Cannot happen with the claim as written; the row stays claimed until its lease
            // expires, and the sweep charges it as an attempt.
            spdlog::error("claimed an event that cannot be read: {}", claimed.error());
            continue;
        }
        uint64_t seq = next_seq_++;
        Delivery d;
        d.id = std::move(claimed.value().id);
        d.token = token;
        d.retry_count = claimed.value().retry_count;
        d.max_retries = claimed.value().max_retries;
        d.event_type = std::move(claimed.value().event_type);
        d.created_at_ms = claimed.value().created_at_ms;
        d.wire = std::move(claimed.value().wire);
        d.timeout_ms = timeout_for(d.event_type);
        d.lease_deadline_ms = sent_at + static_cast<uint64_t>(config_.lease_ms);
        deliveries_.emplace(seq, std::move(d));
        ready_.push_back(seq);
    }
    if (rows > 0) {
        spdlog::debug("claimed {} events", rows);
    }
    if (rows >= requested) {
        more_due_ = true; // a full batch: there is probably more
    }
    if (draining_) {
        // Claimed while the stop signal arrived: give them straight back.
        std::vector<uint64_t> back(ready_.begin(), ready_.end());
        ready_.clear();
        release(std::move(back));
        return;
    }
    pump();
    maybe_claim();
}

void Supervisor::pump() {
    if (pool_ == nullptr) {
        return;
    }
    uint64_t now = uv_now(&loop_);
    WorkerPool::WriteBatch batch(*pool_); // one write per handler process for this whole pump
    while (!ready_.empty() && !draining_) {
        uint64_t seq = ready_.front();
        auto it = deliveries_.find(seq);
        if (it == deliveries_.end()) {
            ready_.pop_front();
            continue;
        }
        Delivery& d = it->second;
        if (d.lease_deadline_ms < now + kLeaseSafetyMs) {
            // The lease could not be renewed (database unreachable) and is about to run out:
            // starting the event now risks running it beside the instance that sweeps it.
            spdlog::warn("event {} not started: its lease could not be renewed in time", d.id);
            ready_.pop_front();
            telemetry_.lease_lost();
            deliveries_.erase(it);
            continue;
        }
        if (!event_fits_in_frame(d.wire.size())) {
            ready_.pop_front();
            d.running = true;
            on_failed(
                seq,
                "event is too large for the handler channel: " + std::to_string(d.wire.size()) +
                    " bytes, the limit is " + std::to_string(kMaxFrameBody) + " bytes",
                true, 0);
            continue;
        }
        if (!pool_->dispatch(seq, d.wire, d.timeout_ms)) {
            break;
        }
        d.running = true;
        ready_.pop_front();
    }
    telemetry_.set_in_flight(static_cast<long>(pool_->in_flight()));
    maybe_claim();
}

// ---- outcomes -------------------------------------------------------------------------------

void Supervisor::on_result(uint64_t seq, ResultMsg&& result) {
    auto it = deliveries_.find(seq);
    OUTBOX_CHECK(it != deliveries_.end());
    Delivery& d = it->second;
    telemetry_.handler_duration(d.event_type, static_cast<double>(result.duration_us) / 1e6);
    if (result.outcome == Outcome::success) {
        d.finished = true;
        pending_results_.push_back({seq, kKindSuccess, {}, 0});
        return;
    }
    on_failed(seq, result.error, result.outcome == Outcome::permanent, result.retry_after_ms);
}

void Supervisor::on_failed(uint64_t seq, const std::string& error, bool permanent,
                           long retry_after_ms) {
    auto it = deliveries_.find(seq);
    OUTBOX_CHECK(it != deliveries_.end());
    Delivery& d = it->second;
    d.finished = true;
    int attempt = d.retry_count + 1;
    // PostgreSQL rejects NUL bytes and invalid UTF-8, and one bad string would fail a whole batch
    // of outcomes: errors are made safe (and bounded) exactly as the channel protocol does.
    std::string why = bounded_error(error.empty() ? "handler failed without a message" : error);
    if (permanent || attempt >= d.max_retries) {
        spdlog::warn("event {} ({}) failed attempt {}/{}{}: {}; moving it to the dead-letter queue",
                     d.id, d.event_type, attempt, d.max_retries, permanent ? " permanently" : "",
                     why);
        pending_results_.push_back({seq, kKindDeadLetter, std::move(why), 0});
        return;
    }
    long delay = std::max(backoff_.delay_ms(attempt), retry_after_ms);
    spdlog::info("event {} ({}) failed attempt {}/{}: {}; retrying in {} ms", d.id, d.event_type,
                 attempt, d.max_retries, why, delay);
    pending_results_.push_back({seq, kKindRetry, std::move(why), delay});
}

void Supervisor::on_returned(std::vector<uint64_t> seqs) {
    // Never started: back to the front of the queue, in their order, still under our lease.
    for (auto it = seqs.rbegin(); it != seqs.rend(); ++it) {
        auto d = deliveries_.find(*it);
        if (d == deliveries_.end()) {
            continue;
        }
        d->second.running = false;
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

void Supervisor::schedule_wake_at(uint64_t loop_ms) {
    // One timer serves every retry this instance scheduled: it is armed for the earliest.
    uint64_t now = uv_now(&loop_);
    if (wake_at_ms_ > now && wake_at_ms_ <= loop_ms) {
        return;
    }
    wake_at_ms_ = loop_ms;
    uv_timer_start(
        &wake_timer_,
        [](uv_timer_t* t) {
            auto* self = static_cast<Supervisor*>(t->data);
            self->wake_at_ms_ = 0;
            self->wake();
        },
        loop_ms > now ? loop_ms - now : 0, 0);
}

void Supervisor::flush_results() {
    if (results_in_flight_ || pending_results_.empty() || !result_db_ || !result_db_->connected()) {
        return;
    }
    std::vector<PendingResult> batch;
    if (pending_results_.size() <= kMaxResultsPerStatement) {
        batch.swap(pending_results_);
    } else {
        batch.assign(std::make_move_iterator(pending_results_.begin()),
                     std::make_move_iterator(pending_results_.begin() + kMaxResultsPerStatement));
        pending_results_.erase(pending_results_.begin(),
                               pending_results_.begin() + kMaxResultsPerStatement);
    }
    std::vector<std::string> ids, tokens, kinds, delays;
    std::vector<std::optional<std::string>> errors;
    for (const auto& p : batch) {
        const Delivery& d = deliveries_.at(p.seq);
        ids.push_back(d.id);
        tokens.push_back(std::to_string(d.token));
        kinds.push_back(std::to_string(p.kind));
        errors.push_back(p.kind == kKindSuccess ? std::nullopt
                                                : std::optional<std::string>(p.error));
        delays.push_back(std::to_string(p.delay_ms));
    }
    results_in_flight_ = true;
    result_db_->query_prepared("outbox_record_results", sql::kRecordResults,
                               {pg_text_array(ids), pg_text_array(tokens), pg_text_array(kinds),
                                pg_text_array(errors), pg_text_array(delays)},
                               [this, batch = std::move(batch)](QueryResult&& r) mutable {
                                   on_results_recorded(std::move(r), std::move(batch));
                               });
}

void Supervisor::on_results_recorded(QueryResult&& r, std::vector<PendingResult> batch) {
    results_in_flight_ = false;
    if (!r.ok()) {
        if (!r.lost) {
            spdlog::error("recording {} results failed: {}", batch.size(), r.error());
        }
        // Keep them, oldest first, for the next try: after the reconnect, or the next loop turn.
        pending_results_.insert(pending_results_.begin(), std::make_move_iterator(batch.begin()),
                                std::make_move_iterator(batch.end()));
        if (!r.lost) {
            // A statement error that is not a lost connection would repeat at once: wait a little.
            uv_timer_start(
                &wake_timer_,
                [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->flush_results(); }, 1000, 0);
        }
        return;
    }
    // Only the outcomes that were not applied come back, with whether they had been recorded
    // before (a retry after a connection broke mid-commit); every other one was applied.
    std::unordered_map<std::string, bool> not_applied; // "id token" -> recorded before
    for (int i = 0; i < r.result.rows(); ++i) {
        not_applied[std::string(r.result.view(i, 0)) + ' ' + std::string(r.result.view(i, 1))] =
            r.result.view(i, 2) == "t";
    }
    int64_t now_ms = wall_clock_us() / 1000;
    for (const auto& p : batch) {
        auto it = deliveries_.find(p.seq);
        if (it == deliveries_.end()) {
            continue;
        }
        const Delivery& d = it->second;
        bool applied = true;
        bool already = false;
        if (!not_applied.empty()) {
            auto n = not_applied.find(d.id + ' ' + std::to_string(d.token));
            if (n != not_applied.end()) {
                applied = false;
                already = n->second;
            }
        }
        if (!applied && !already) {
            spdlog::warn("event {}: lease lost before its outcome was recorded (another instance "
                         "took it over); "
                         "the outcome of this attempt is discarded",
                         d.id);
            if (!d.lease_lost) { // renew_leases() counted it already otherwise
                telemetry_.lease_lost();
            }
        } else if (applied) {
            switch (p.kind) {
            case kKindSuccess:
                telemetry_.event_completed(d.event_type,
                                           static_cast<double>(now_ms - d.created_at_ms) / 1000.0);
                break;
            case kKindRetry:
                telemetry_.event_retried(d.event_type);
                // nextRetryAt was computed from the database's clock as this statement ran; wake
                // a little after it so the claim finds the event due.
                schedule_wake_at(uv_now(&loop_) + static_cast<uint64_t>(p.delay_ms) +
                                 kRetryWakeSlackMs);
                break;
            default:
                telemetry_.event_dead_lettered(d.event_type);
                break;
            }
        }
        forget(p.seq);
    }
    if (!pending_results_.empty()) {
        flush_results();
    }
    maybe_claim(); // claiming may have waited for these outcomes to be recorded
    if (draining_) {
        check_drain_progress();
    }
}

void Supervisor::forget(uint64_t seq) {
    deliveries_.erase(seq);
}

// ---- leases and housekeeping ----------------------------------------------------------------

void Supervisor::renew_leases() {
    if (deliveries_.empty() || !result_db_->connected()) {
        return;
    }
    std::vector<std::string> ids, tokens;
    std::vector<uint64_t> seqs;
    for (const auto& [seq, d] : deliveries_) {
        if (d.lease_lost) {
            continue;
        }
        ids.push_back(d.id);
        tokens.push_back(std::to_string(d.token));
        seqs.push_back(seq);
    }
    uint64_t sent_at = uv_now(&loop_);
    result_db_->query(sql::kRenewLeases,
                      {pg_text_array(ids), pg_text_array(tokens), std::to_string(config_.lease_ms)},
                      [this, seqs = std::move(seqs), sent_at](QueryResult&& r) {
                          if (!r.ok()) {
                              if (!r.lost) {
                                  spdlog::error("renewing leases failed: {}", r.error());
                              }
                              return;
                          }
                          std::unordered_set<std::string> renewed;
                          for (int i = 0; i < r.result.rows(); ++i) {
                              renewed.insert(r.result.value(i, 0));
                          }
                          for (uint64_t seq : seqs) {
                              auto it = deliveries_.find(seq);
                              if (it == deliveries_.end()) {
                                  continue; // recorded meanwhile
                              }
                              Delivery& d = it->second;
                              if (renewed.count(d.id)) {
                                  d.lease_deadline_ms =
                                      sent_at + static_cast<uint64_t>(config_.lease_ms);
                              } else if (!d.finished) {
                                  // Swept by someone: if it has not started, do not start it.
                                  spdlog::warn("event {}: lease lost (expired and swept)", d.id);
                                  d.lease_lost = true;
                                  telemetry_.lease_lost();
                                  if (!d.running) {
                                      std::erase(ready_, seq);
                                      deliveries_.erase(it);
                                  }
                              }
                          }
                      });
}

void Supervisor::sweep_expired_leases() {
    if (draining_ || !schema_ok_ || !house_db_->connected()) {
        return;
    }
    house_db_->query(
        sql::kSweepExpiredLeases, {std::to_string(config_.lease_ms), std::to_string(kSweepBatch)},
        [this](QueryResult&& r) {
            if (!r.ok()) {
                if (!r.lost) {
                    spdlog::error("sweeping expired leases failed: {}", r.error());
                }
                return;
            }
            long returned = std::stol(r.result.value(0, 0));
            long dead = std::stol(r.result.value(0, 1));
            if (returned + dead > 0) {
                spdlog::warn("lease sweep: {} events whose lease expired returned to due, {} moved "
                             "to the dead-letter queue",
                             returned, dead);
                telemetry_.leases_expired_swept(returned, dead);
                wake();
            }
        });
}

void Supervisor::release(std::vector<uint64_t> seqs) {
    for (uint64_t s : seqs) {
        pending_releases_.push_back(s);
    }
    if (releases_in_flight_ || pending_releases_.empty() || !result_db_->connected()) {
        if (draining_) {
            check_drain_progress();
        }
        return;
    }
    std::vector<uint64_t> batch;
    batch.swap(pending_releases_);
    std::vector<std::string> ids, tokens;
    for (uint64_t s : batch) {
        auto it = deliveries_.find(s);
        if (it == deliveries_.end()) {
            continue;
        }
        ids.push_back(it->second.id);
        tokens.push_back(std::to_string(it->second.token));
    }
    releases_in_flight_ = true;
    result_db_->query(
        sql::kRelease, {pg_text_array(ids), pg_text_array(tokens)},
        [this, batch = std::move(batch)](QueryResult&& r) mutable {
            releases_in_flight_ = false;
            if (!r.ok()) {
                if (!r.lost) {
                    spdlog::error("releasing {} events failed: {}", batch.size(), r.error());
                }
                pending_releases_.insert(pending_releases_.end(), batch.begin(), batch.end());
            } else {
                spdlog::info("released {} claimed events that had not started",
                             r.result.value(0, 0));
                for (uint64_t s : batch) {
                    forget(s);
                }
            }
            if (!pending_releases_.empty() && result_db_->connected() && r.ok()) {
                release({});
            }
            if (draining_) {
                check_drain_progress();
            }
        });
}

void Supervisor::refresh_counts() {
    refresh_counts_then(nullptr);
}

void Supervisor::refresh_counts_then(std::function<void()> then) {
    if (!schema_ok_ || !house_db_->connected() || finishing_) {
        return;
    }
    house_db_->query(sql::kStatusCounts, {like_patterns_},
                     [this, then = std::move(then)](QueryResult&& r) {
                         if (!r.ok()) {
                             if (!r.lost) {
                                 spdlog::error("reading status counts failed: {}", r.error());
                             }
                             return;
                         }
                         DatabaseCounts c;
                         c.valid = true;
                         c.read_at_ms = uv_now(&loop_);
                         c.pending = std::stol(r.result.value(0, 0));
                         c.processing = std::stol(r.result.value(0, 1));
                         c.completed = std::stol(r.result.value(0, 2));
                         c.failed = std::stol(r.result.value(0, 3));
                         c.dlq = std::stol(r.result.value(0, 4));
                         c.oldest_due_age_s = std::stod(r.result.value(0, 5));
                         c.unsubscribed_json = r.result.value(0, 6);
                         if (c.unsubscribed_json != "{}" &&
                             c.unsubscribed_json != telemetry_.counts().unsubscribed_json) {
                             spdlog::warn("pending events of types no subscriber here handles "
                                          "(left for other deployments): {}",
                                          c.unsubscribed_json);
                         }
                         telemetry_.set_counts(c);
                         if (then) {
                             then();
                         }
                     });
}

void Supervisor::run_retention() {
    if (draining_ || !schema_ok_ || !house_db_->connected()) {
        return;
    }
    house_db_->query(sql::kRetentionBatch,
                     {std::to_string(config_.retention_hours), std::to_string(kRetentionBatch)},
                     [this](QueryResult&& r) {
                         if (!r.ok()) {
                             if (!r.lost) {
                                 spdlog::error("retention sweep failed: {}", r.error());
                             }
                             return;
                         }
                         long deleted = std::atol(PQcmdTuples(r.result.get()));
                         if (deleted > 0) {
                             telemetry_.retention_deleted(deleted);
                             spdlog::info("retention: deleted {} completed events older than {} h",
                                          deleted, config_.retention_hours);
                         }
                         if (deleted >= kRetentionBatch) {
                             run_retention(); // more to do: next small batch
                         }
                     });
}

void Supervisor::log_metrics_line() {
    if (schema_ok_ && house_db_->connected()) {
        // Fresh counts for the line, not the cached ones of up to five seconds ago.
        refresh_counts_then([this] { write_metrics_line(); });
        return;
    }
    write_metrics_line();
}

void Supervisor::write_metrics_line() {
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

void Supervisor::update_status() {
    uint64_t now = uv_now(&loop_);
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
                  draining_ ? "draining: " : "", rate, pool_ ? pool_->in_flight() : 0,
                  telemetry_.counts().dlq,
                  telemetry_.database_up() ? "" : ", database unreachable");
    notifier_.status(line);
}

// ---- draining -------------------------------------------------------------------------------

void Supervisor::begin_drain() {
    draining_ = true;
    notifier_.stopping();
    uv_timer_stop(&poll_timer_);
    uv_timer_stop(&wake_timer_);
    uv_timer_stop(&sweep_timer_);
    uv_timer_stop(&retention_timer_);
    uv_timer_start(
        &drain_timer_,
        [](uv_timer_t* t) { static_cast<Supervisor*>(t->data)->on_drain_deadline(); },
        static_cast<uint64_t>(config_.shutdown_timeout_ms), 0);
    // Claimed but not started: back to due at once, uncharged, for other instances.
    std::vector<uint64_t> back(ready_.begin(), ready_.end());
    ready_.clear();
    release(std::move(back));
    if (pool_) {
        // Each process finishes what it holds, then exits on QUIT.
        pool_->quit_all();
    }
    check_drain_progress();
}

void Supervisor::on_drain_deadline() {
    if (!draining_) {
        begin_drain();
    }
    if (drain_deadline_passed_) {
        return;
    }
    drain_deadline_passed_ = true;
    if (pool_ && pool_->in_flight() > 0) {
        spdlog::warn(
            "shutdown timeout: stopping {} events still running; they are released uncharged",
            pool_->in_flight());
    }
    if (pool_) {
        pool_->kill_all();
    }
    // A last chance for outcomes and releases to reach the database, then stop regardless: what
    // is left is swept when its lease expires (at least once).
    uv_timer_start(
        &drain_timer_,
        [](uv_timer_t* t) {
            auto* self = static_cast<Supervisor*>(t->data);
            spdlog::error("could not record {} outcomes and {} releases before stopping: their "
                          "leases will expire and "
                          "the events will be delivered again",
                          self->pending_results_.size(), self->pending_releases_.size());
            self->finish();
        },
        kFinalFlushGraceMs, 0);
    check_drain_progress();
}

void Supervisor::check_drain_progress() {
    if (!draining_ || finishing_) {
        return;
    }
    if (pool_ && pool_->has_processes()) {
        return;
    }
    if (!pending_results_.empty() || results_in_flight_) {
        flush_results();
        return;
    }
    if (!pending_releases_.empty() || releases_in_flight_) {
        if (!releases_in_flight_) {
            release({});
        }
        return;
    }
    if (claim_in_flight_) {
        return;
    }
    finish();
}

void Supervisor::finish() {
    if (finishing_) {
        return;
    }
    finishing_ = true;
    if (!deliveries_.empty() && exit_code_ == kExitOk) {
        spdlog::warn("{} events still held at exit; their leases will expire", deliveries_.size());
    }
    auto close_handle = [](auto* h) {
        if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(h))) {
            uv_close(reinterpret_cast<uv_handle_t*>(h), nullptr);
        }
    };
    for (uv_timer_t* t : {&poll_timer_, &wake_timer_, &renew_timer_, &sweep_timer_, &stats_timer_,
                          &retention_timer_, &metrics_log_timer_, &watchdog_timer_, &drain_timer_,
                          &status_timer_}) {
        close_handle(t);
    }
    close_handle(&sigterm_);
    close_handle(&sigint_);
    close_handle(&sighup_);
    close_handle(&flush_check_);
    if (pool_) {
        pool_->close([] {});
    }
    if (http_) {
        http_->close([] {});
    }
    claim_db_->close([] {});
    result_db_->close([] {});
    house_db_->close([] {});
}

// ---- HTTP -----------------------------------------------------------------------------------

HttpResponse Supervisor::health() const {
    const DatabaseCounts& c = telemetry_.counts();
    std::vector<std::string> problems;
    if (!telemetry_.database_up()) {
        problems.push_back("database unreachable");
    }
    if (c.valid && c.dlq > config_.dlq_alert_threshold) {
        problems.push_back("dead-letter queue has " + std::to_string(c.dlq) +
                           " rows, above the threshold of " +
                           std::to_string(config_.dlq_alert_threshold));
    }
    Json body(cJSON_CreateObject());
    cJSON_AddStringToObject(body.get(), "status", problems.empty() ? "healthy" : "unhealthy");
    cJSON_AddStringToObject(body.get(), "service", config_.service_name.c_str());
    cJSON_AddStringToObject(body.get(), "instance", config_.instance_id.c_str());
    cJSON_AddBoolToObject(body.get(), "database", telemetry_.database_up());
    if (c.valid) {
        cJSON_AddNumberToObject(body.get(), "dlq", static_cast<double>(c.dlq));
    }
    cJSON_AddNumberToObject(body.get(), "dlqThreshold",
                            static_cast<double>(config_.dlq_alert_threshold));
    cJSON* reasons = cJSON_AddArrayToObject(body.get(), "reasons");
    for (const auto& p : problems) {
        cJSON_AddItemToArray(reasons, cJSON_CreateString(p.c_str()));
    }
    HttpResponse r;
    r.status = problems.empty() ? 200 : 503;
    r.content_type = "application/json";
    r.body = json_print(body.get());
    return r;
}

HttpResponse Supervisor::readiness() const {
    bool serving = ready_reported_ && !draining_;
    HttpResponse r;
    r.status = serving ? 200 : 503;
    r.content_type = "application/json";
    r.body = serving     ? R"({"status":"ready"})"
             : draining_ ? R"({"status":"draining"})"
                         : R"({"status":"starting"})";
    return r;
}

HttpResponse Supervisor::enhanced_metrics() const {
    const DatabaseCounts& c = telemetry_.counts();
    const char* grade = "unhealthy";
    if (c.valid && c.failed == 0 && c.dlq < 10 && c.pending < 1000) {
        grade = "healthy";
    } else if (c.valid && c.failed < 10 && c.dlq < 100 && c.pending < 5000) {
        grade = "degraded";
    }
    Json body(cJSON_CreateObject());
    cJSON_AddStringToObject(body.get(), "health", grade);
    cJSON* outbox = cJSON_AddObjectToObject(body.get(), "outbox");
    cJSON_AddNumberToObject(outbox, "pending", static_cast<double>(c.pending));
    cJSON_AddNumberToObject(outbox, "processing", static_cast<double>(c.processing));
    cJSON_AddNumberToObject(outbox, "completed", static_cast<double>(c.completed));
    cJSON_AddNumberToObject(outbox, "failed", static_cast<double>(c.failed));
    cJSON_AddNumberToObject(outbox, "dlq", static_cast<double>(c.dlq));
    cJSON_AddNumberToObject(outbox, "backlogAgeSeconds", c.oldest_due_age_s);
    cJSON_AddBoolToObject(body.get(), "databaseUp", telemetry_.database_up());
    cJSON_AddNumberToObject(body.get(), "inFlight",
                            pool_ ? static_cast<double>(pool_->in_flight()) : 0.0);
    Json metrics = telemetry_.render_json();
    if (metrics) {
        cJSON_AddItemToObject(body.get(), "metrics", metrics.release());
    }
    HttpResponse r;
    r.content_type = "application/json";
    r.body = json_print(body.get());
    return r;
}

} // namespace

int run_service(const Config& config, std::vector<Subscriber> code_subscribers) {
    Supervisor supervisor(config, std::move(code_subscribers));
    return supervisor.run();
}

} // namespace outbox
