// The supervisor process: the loop, the signals and the lifecycle. It wires the rooms together:
// the relay (supervisor/relay.h: claims, dispatch, outcomes, leases), its PostgreSQL store
// (supervisor/relay_store.h), the handler-process pool (supervisor/worker_pool.h), the janitor
// (supervisor/janitor.h: sweep, counts, retention, log line, STATUS=), the subscriptions
// (supervisor/subscriptions.h), the HTTP endpoint (supervisor/endpoints.h) and the operator's
// console on it (supervisor/console.h).
//
// The lifecycle is one explicit state (ServiceState): starting -> serving -> draining ->
// finishing. Starting connects, checks the schema and forks the handler processes; serving
// claims; draining (SIGTERM or SIGINT) stops claiming, releases what has not started, lets
// running events finish up to OUTBOX_SHUTDOWN_TIMEOUT_MS and records their outcomes; finishing
// closes every handle, after which the loop ends. A handle still open then is a leak, and the
// process exits non-zero.

#include "supervisor/service.h"

#include "common/check.h"
#include "common/migrations.h"
#include "common/pg.h"
#include "supervisor/console.h"
#include "supervisor/db_connection.h"
#include "supervisor/endpoints.h"
#include "supervisor/http_server.h"
#include "supervisor/janitor.h"
#include "supervisor/queries.h"
#include "supervisor/relay.h"
#include "supervisor/relay_store.h"
#include "supervisor/sd_notify.h"
#include "supervisor/subscriptions.h"
#include "supervisor/telemetry.h"
#include "supervisor/uv_handle.h"
#include "supervisor/worker_pool.h"

#include <spdlog/spdlog.h>
#include <uv.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <optional>
#include <random>

namespace outbox {

namespace {

// Events sent to one handler process ahead of the one it is running: enough to hide the
// round trip of a result, few enough that a slow event delays little behind it.
constexpr int kPipelineDepth = 4;
// The same for a process with a broker subscriber, which keeps publications in flight while it
// waits for the broker's acknowledgements: enough to cover that round trip at full speed
// (docs/protocol.md, "Many publications in flight").
constexpr int kBrokerPipelineDepth = 128;
// How long outcomes may wait for a batch's worth to gather (RelayOptions::outcome_linger_ms). At
// full speed a batch of 100 gathers in about 4 ms; at low rates nothing is in flight behind an
// outcome and it is recorded at once.
constexpr long kOutcomeLingerMs = 5;
// After the drain deadline: a last chance for outcomes and releases to reach the database.
constexpr uint64_t kFinalFlushGraceMs = 5000;

// Claim tokens: a random 61-bit starting point per process, then a counter. Two claims never
// share a token, so an outcome is fenced to exactly the claim it belongs to.
uint64_t random_first_token() {
    std::random_device rd;
    uint64_t t = (static_cast<uint64_t>(rd()) << 30 ^ static_cast<uint64_t>(rd())) &
                 ((uint64_t{1} << 61) - 1);
    return t + 1;
}

// The pool as the relay sees it. The pool itself exists only once the schema is checked;
// until then nothing can be dispatched.
class PoolPort final : public RelayPool {
  public:
    void attach(WorkerPool* pool) { pool_ = pool; }
    bool dispatch(uint64_t seq, std::string_view wire, long timeout_ms) override {
        return pool_ != nullptr && pool_->dispatch(seq, wire, timeout_ms);
    }
    size_t in_flight() const override { return pool_ != nullptr ? pool_->in_flight() : 0; }
    // One write per handler process for everything one pump dispatches to it.
    void begin_dispatch() override {
        if (pool_ != nullptr && depth_++ == 0) {
            batch_.emplace(*pool_);
        }
    }
    void end_dispatch() override {
        if (pool_ != nullptr && --depth_ == 0) {
            batch_.reset();
        }
    }

  private:
    WorkerPool* pool_ = nullptr;
    int depth_ = 0;
    std::optional<WorkerPool::WriteBatch> batch_;
};

class Service final : public RelayClock, public RelayHost {
  public:
    Service(const Config& config, std::vector<Subscriber> code_subscribers)
        : config_(config), subscriptions_(config_, std::move(code_subscribers)) {}

    int run();

  private:
    // RelayClock and RelayHost.
    uint64_t now_ms() const override { return uv_now(&loop_); }
    int64_t wall_ms() const override {
        return std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
            .count();
    }
    void wake_at(uint64_t at_ms) override {
        uint64_t now = now_ms();
        wake_timer_.start(at_ms > now ? at_ms - now : 0);
    }
    void flush_after(uint64_t delay_ms) override { flush_retry_timer_.start(delay_ms); }
    void linger(uint64_t delay_ms) override { linger_timer_.start(delay_ms); }
    void progress() override { check_drain_progress(); }

    void start();
    void open_connections();
    void on_claim_connected();
    void check_schema();
    void on_schema_version(int version);
    void start_serving();
    void maybe_report_ready();
    void on_signal(int signum);
    void reload();
    void begin_drain();
    void on_drain_deadline();
    void check_drain_progress();
    void fail(std::string why);
    void finish();
    EndpointView endpoint_view() const;
    ConsoleHost console_host();

    Config config_;
    Subscriptions subscriptions_;
    uv_loop_t loop_{};
    Telemetry telemetry_;
    SystemdNotifier notifier_;
    std::unique_ptr<DbConnection> claim_db_;
    std::unique_ptr<DbConnection> result_db_;
    // Counts, the lease sweep and retention: statements that scan the table and may take long on
    // a big one, kept off the claim and result connections so that they never hold up delivery.
    std::unique_ptr<DbConnection> house_db_;
    // The console's reads and actions (only with the HTTP endpoint): a page or a script searching
    // a big table must not hold up delivery or housekeeping.
    std::unique_ptr<DbConnection> console_db_;
    std::unique_ptr<Console> console_;
    std::unique_ptr<PgRelayStore> store_;
    PoolPort pool_port_;
    std::unique_ptr<Relay> relay_;
    std::unique_ptr<WorkerPool> pool_;
    std::unique_ptr<Janitor> janitor_;
    std::unique_ptr<HttpServer> http_;

    Signal sigterm_, sigint_, sighup_;
    Timer poll_timer_;        // the fallback poll (OUTBOX_POLL_INTERVAL_MS)
    Timer wake_timer_;        // the earliest retry this instance scheduled comes due
    Timer flush_retry_timer_; // a record statement failed: try again a little later
    Timer linger_timer_;      // outcomes gathering for a larger statement: record them now
    Timer renew_timer_, watchdog_timer_;
    Timer drain_timer_; // OUTBOX_SHUTDOWN_TIMEOUT_MS after the stop signal
    Timer final_timer_; // kFinalFlushGraceMs after that deadline: stop regardless
    Check turn_check_;  // the end of each loop turn: record its outcomes in one statement

    ServiceState state_ = ServiceState::starting;
    bool ready_reported_ = false;
    bool drain_deadline_passed_ = false;
    int signals_seen_ = 0;
    int exit_code_ = kExitOk;
    std::string fatal_error_;
};

int Service::run() {
    // A write to a channel whose handler process just died, or to an HTTP client that went away,
    // must be an EPIPE error to handle, not a signal that kills the supervisor.
    signal(SIGPIPE, SIG_IGN);
    if (auto error = subscriptions_.load()) {
        spdlog::error("{}", *error);
        return kExitConfig;
    }
    OUTBOX_CHECK(uv_loop_init(&loop_) == 0);
    start();
    uv_run(&loop_, UV_RUN_DEFAULT);
    std::string leaked = close_loop(&loop_);
    if (!leaked.empty()) {
        // Every handle is closed by finish(); one still open is a bug of ours.
        spdlog::error("event loop closed with handles still open: {}", leaked);
        if (exit_code_ == kExitOk) {
            exit_code_ = kExitFailure;
        }
    }
    if (!fatal_error_.empty()) {
        spdlog::error("{}", fatal_error_);
    }
    spdlog::info("stopped (exit code {})", exit_code_);
    return exit_code_;
}

void Service::start() {
    spdlog::info(
        "starting: instance {}, {} handler processes, batch {}, lease {} ms, "
        "on complete: {}, synchronous commit: {}, ordering on dead letter: {}, database {}",
        config_.instance_id, config_.workers, config_.batch_size, config_.lease_ms,
        to_string(config_.on_complete), config_.synchronous_commit ? "on" : "off",
        to_string(config_.ordering_on_dead_letter), mask_conninfo(config_.database_url));

    sigterm_ = Signal(&loop_, SIGTERM, [this](int s) { on_signal(s); });
    sigint_ = Signal(&loop_, SIGINT, [this](int s) { on_signal(s); });
    sighup_ = Signal(&loop_, SIGHUP, [this](int s) { on_signal(s); });
    // Worker::run() blocked these until now: one that arrived meanwhile is delivered here, to the
    // handlers just installed.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
        sigaddset(&stop_signals, sig);
    }
    pthread_sigmask(SIG_UNBLOCK, &stop_signals, nullptr);
    poll_timer_ = Timer(&loop_, [this] { relay_->wake(); });
    wake_timer_ = Timer(&loop_, [this] { relay_->wake(); });
    flush_retry_timer_ = Timer(&loop_, [this] { relay_->flush(); });
    linger_timer_ = Timer(&loop_, [this] { relay_->flush(); });
    renew_timer_ = Timer(&loop_, [this] { relay_->renew_leases(); });
    drain_timer_ = Timer(&loop_, [this] { on_drain_deadline(); });
    final_timer_ = Timer(&loop_, [this] {
        spdlog::error("could not record {} outcomes and {} releases before stopping: their "
                      "leases will expire and the events will be delivered again",
                      relay_->unrecorded(), relay_->unreleased());
        finish();
    });
    // Outcomes are recorded once per loop iteration, after the I/O of that iteration: all that
    // arrived together go out in one statement.
    turn_check_ = Check(&loop_, [this] { relay_->flush(); });

    open_connections();

    janitor_ = std::make_unique<Janitor>(
        &loop_, config_, *house_db_, telemetry_, notifier_, subscriptions_.like_patterns(),
        Janitor::Hooks{
            [this] { return pool_ ? pool_->in_flight() : size_t{0}; },
            [this] { return state_ != ServiceState::starting && state_ != ServiceState::serving; },
            [this] {
                relay_->wake();
            }});
    janitor_->start();

    if (config_.http_port != 0) {
        HttpRouter router = endpoint_router([this] { return endpoint_view(); });
        console_ =
            std::make_unique<Console>(&loop_, config_, telemetry_, *console_db_, console_host());
        console_->add_routes(router);
        http_ = std::make_unique<HttpServer>(
            &loop_, HttpServerLimits{},
            [router = std::move(router)](const HttpRequest& req, HttpReply reply) {
                router.dispatch(req, std::move(reply));
            });
        int rc = http_->listen(config_.http_host, config_.http_port);
        if (rc != 0) {
            fail("cannot listen on " + config_.http_host + ":" + std::to_string(config_.http_port) +
                 ": " + uv_strerror(rc) + " (set OUTBOX_HTTP_PORT, or 0 to disable the endpoint)");
            return;
        }
        spdlog::info("health, metrics and the console on http://{}:{}/ (console {})",
                     config_.http_host, http_->bound_port(),
                     config_.admin_token.empty() ? "read-only: OUTBOX_ADMIN_TOKEN is not set"
                                                 : "actions enabled with OUTBOX_ADMIN_TOKEN");
        if (!config_.admin_token.empty() && config_.admin_token.size() < 16) {
            spdlog::warn("OUTBOX_ADMIN_TOKEN is shorter than 16 characters: anyone who can reach "
                         "the console may guess it");
        }
    }

    auto poll_every = static_cast<uint64_t>(config_.poll_interval_ms);
    poll_timer_.start(poll_every, poll_every);
    auto renew_every = static_cast<uint64_t>(std::max(250L, config_.lease_ms / 3));
    renew_timer_.start(renew_every, renew_every);
    if (auto usec = notifier_.watchdog_usec()) {
        // Pinged from the loop itself: if the loop stalls, the pings stop and systemd restarts us.
        uint64_t every = std::max<uint64_t>(1, *usec / 2000);
        watchdog_timer_ = Timer(&loop_, [this] { notifier_.watchdog(); });
        watchdog_timer_.start(every, every);
    }
    claim_db_->start();
    result_db_->start();
    house_db_->start();
    if (console_db_) {
        console_db_->start();
    }
}

void Service::open_connections() {
    claim_db_ = std::make_unique<DbConnection>(
        &loop_, config_.database_url, "claim", sql::kNotifyChannel,
        DbConnection::Callbacks{[this] { on_claim_connected(); },
                                [this](const std::string&) { telemetry_.set_database_up(false); },
                                [this](const std::string&) {
                                    relay_->wake();
                                }});
    result_db_ = std::make_unique<DbConnection>(
        &loop_, config_.database_url, "results", "",
        DbConnection::Callbacks{[this] { relay_->on_store_connected(); }, nullptr, nullptr});
    house_db_ = std::make_unique<DbConnection>(
        &loop_, config_.database_url, "housekeeping", "",
        DbConnection::Callbacks{[this] { janitor_->refresh_counts(); }, nullptr, nullptr});

    // Every session of the service says which dead-letter policy its statements follow (SPEC 2a):
    // migration 004's trigger reads it when an outcome or the lease sweep dead-letters an ordered
    // event. synchronous_commit = off is for the service's own bookkeeping only: what the
    // application writes keeps the server's setting (README, "Durability and duplicates").
    std::string settings = std::string("SET outbox_worker.on_dead_letter = '") +
                           to_string(config_.ordering_on_dead_letter) + "'";
    if (!config_.synchronous_commit) {
        settings += "; SET synchronous_commit = off";
    }
    for (DbConnection* db : {claim_db_.get(), result_db_.get(), house_db_.get()}) {
        db->set_session_settings(settings);
    }
    if (config_.http_port != 0) {
        console_db_ = std::make_unique<DbConnection>(&loop_, config_.database_url, "console", "",
                                                     DbConnection::Callbacks{});
        // A search that would read for long is cut off rather than left to queue every other
        // request of the console behind it (the console answers 503).
        console_db_->set_session_settings(settings + "; SET statement_timeout = '30s'");
    }
    store_ = std::make_unique<PgRelayStore>(
        PgRelayStore::Options{config_.instance_id, config_.lease_ms, config_.on_complete},
        *claim_db_, *result_db_, subscriptions_.like_patterns());
    RelayOptions options;
    options.instance_id = config_.instance_id;
    options.batch_size = config_.batch_size;
    options.lease_ms = config_.lease_ms;
    options.backoff = BackoffPolicy{config_.initial_delay_ms, config_.max_delay_ms,
                                    config_.backoff_multiplier, config_.backoff_jitter};
    options.first_token = random_first_token();
    options.outcome_linger_ms = kOutcomeLingerMs;
    relay_ = std::make_unique<Relay>(options, *store_, pool_port_, *this, *this, telemetry_);
    relay_->set_timeout_lookup(
        [this](const std::string& type) { return subscriptions_.timeout_for(type); });
}

void Service::on_claim_connected() {
    telemetry_.set_database_up(true);
    if (state_ == ServiceState::starting && pool_ == nullptr) {
        check_schema();
        return;
    }
    janitor_->refresh_counts();
    relay_->wake();
}

void Service::check_schema() {
    claim_db_->query(sql::kSchemaTableExists, {}, [this](QueryResult&& exists) {
        if (!exists.ok()) {
            if (!exists.lost) {
                spdlog::error("cannot read the schema version: {}", exists.error());
            }
            return; // checked again on the next connect
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
            int version = -1;
            std::string_view text = r.result.view(0, 0);
            std::from_chars(text.data(), text.data() + text.size(), version);
            on_schema_version(version);
        });
    });
}

void Service::on_schema_version(int version) {
    if (state_ != ServiceState::starting || pool_ != nullptr) {
        return; // a drain began meanwhile, or a reconnect raced with the first check
    }
    int needed = latest_migration_version();
    if (version < needed) {
        fail(version < 0
                 ? "the database has no outbox-worker schema: run `outbox-worker migrate` first"
                 : "the database schema is at version " + std::to_string(version) +
                       ", this outbox-worker needs " + std::to_string(needed) +
                       ": run `outbox-worker migrate` first");
        return;
    }
    start_serving();
}

void Service::start_serving() {
    PoolOptions opts;
    opts.workers = config_.workers;
    opts.pipeline_depth = kPipelineDepth;
    opts.broker_pipeline_depth = kBrokerPipelineDepth;
    opts.max_events_per_process = config_.worker_max_events;
    opts.memory_limit_mb = config_.worker_memory_mb;
    pool_ = std::make_unique<WorkerPool>(
        &loop_, opts, subscriptions_.subscribers(),
        WorkerPool::Callbacks{
            [this](uint64_t seq, ResultMsg&& res) { relay_->on_result(seq, res); },
            [this](uint64_t seq, std::string error) { relay_->on_failed(seq, error); },
            [this](std::vector<uint64_t> seqs) { relay_->on_returned(seqs); },
            [this] {
                maybe_report_ready();
                relay_->flush();
                check_drain_progress();
            },
            [this](RestartReason reason) { telemetry_.handler_restart(to_string(reason)); },
            [this](uint64_t seq) {
                relay_->on_started(seq);
            }},
        &telemetry_.sinks());
    pool_port_.attach(pool_.get());
    pool_->start();
    state_ = ServiceState::serving;
    janitor_->start_serving();
    relay_->start_claiming();
}

void Service::maybe_report_ready() {
    if (ready_reported_ || state_ != ServiceState::serving || !claim_db_->connected() ||
        pool_->ready_processes() < config_.workers) {
        return;
    }
    ready_reported_ = true;
    notifier_.ready();
    spdlog::info("ready: {} handler processes, {} subscribers", config_.workers,
                 subscriptions_.subscribers()->size());
    janitor_->update_status();
}

void Service::on_signal(int signum) {
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

void Service::reload() {
    if (state_ != ServiceState::serving && state_ != ServiceState::starting) {
        return;
    }
    if (config_.handlers_path.empty()) {
        spdlog::info("SIGHUP: no handlers file to reload (OUTBOX_HANDLERS is not set)");
        return;
    }
    if (auto error = subscriptions_.load()) {
        spdlog::error("SIGHUP: keeping the current handlers, the new file is invalid: {}", *error);
        return;
    }
    spdlog::info("SIGHUP: handlers file reloaded ({} subscribers); replacing handler processes",
                 subscriptions_.subscribers()->size());
    if (pool_) {
        pool_->replace_subscribers(subscriptions_.subscribers());
    }
    relay_->wake();
}

// ---- draining -------------------------------------------------------------------------------

void Service::begin_drain() {
    if (state_ == ServiceState::draining || state_ == ServiceState::finishing) {
        return;
    }
    state_ = ServiceState::draining;
    notifier_.stopping();
    poll_timer_.stop();
    wake_timer_.stop();
    janitor_->stop_for_drain();
    drain_timer_.start(static_cast<uint64_t>(config_.shutdown_timeout_ms));
    relay_->begin_drain();
    if (pool_) {
        // Each process finishes what it holds, then exits on QUIT.
        pool_->quit_all();
    }
    check_drain_progress();
}

void Service::on_drain_deadline() {
    if (state_ == ServiceState::finishing) {
        return;
    }
    begin_drain();
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
    final_timer_.start(kFinalFlushGraceMs);
    check_drain_progress();
}

void Service::check_drain_progress() {
    if (state_ != ServiceState::draining) {
        return;
    }
    if (pool_ && pool_->has_processes()) {
        return;
    }
    if (!relay_->drained()) {
        relay_->flush();
        return;
    }
    finish();
}

void Service::fail(std::string why) {
    fatal_error_ = std::move(why);
    exit_code_ = kExitFailure;
    finish();
}

void Service::finish() {
    if (state_ == ServiceState::finishing) {
        return;
    }
    state_ = ServiceState::finishing;
    if (relay_ && relay_->held() > 0 && exit_code_ == kExitOk) {
        spdlog::warn("{} events still held at exit; their leases will expire", relay_->held());
    }
    for (Timer* t : {&poll_timer_, &wake_timer_, &flush_retry_timer_, &linger_timer_, &renew_timer_,
                     &watchdog_timer_, &drain_timer_, &final_timer_}) {
        t->close();
    }
    sigterm_.close();
    sigint_.close();
    sighup_.close();
    turn_check_.close();
    janitor_->close();
    if (pool_) {
        pool_->close([] {});
    }
    if (http_) {
        http_->close([] {});
    }
    claim_db_->close([] {});
    result_db_->close([] {});
    house_db_->close([] {});
    if (console_db_) {
        console_db_->close([] {});
    }
}

EndpointView Service::endpoint_view() const {
    return EndpointView{config_, telemetry_, state_, ready_reported_,
                        pool_ ? pool_->in_flight() : size_t{0}};
}

ConsoleHost Service::console_host() {
    ConsoleHost host;
    host.state = [this] {
        return state_;
    };
    host.workers = [this] {
        std::vector<ConsoleWorker> out;
        if (!pool_) {
            return out;
        }
        for (const WorkerSlotView& v : pool_->describe()) {
            ConsoleWorker w{v.slot, v.pid, v.state, {}, v.restarts};
            for (uint64_t seq : v.seqs) {
                if (const std::string* id = relay_->held_event_id(seq)) {
                    w.events.push_back(*id);
                }
            }
            out.push_back(std::move(w));
        }
        return out;
    };
    host.subscribers_for = [this](const std::string& type) {
        std::vector<std::string> names;
        for (const Subscriber& s : *subscriptions_.subscribers()) {
            if (s.matches(type)) {
                names.push_back(s.name);
            }
        }
        return names;
    };
    return host;
}

} // namespace

int run_service(const Config& config, std::vector<Subscriber> code_subscribers) {
    Service service(config, std::move(code_subscribers));
    return service.run();
}

} // namespace outbox
