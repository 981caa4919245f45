// The handler-process pool: an explicit table of slots (as nginx's ngx_processes), each a forked
// process with its own channel (a SOCK_STREAM socketpair speaking common/protocol.h).
//
// Events are pipelined: a slot may hold up to `pipeline_depth` events at once, or
// `broker_pipeline_depth` when its subscribers include a broker one (a process then keeps many
// publications in flight, docs/protocol.md). The process answers them strictly in order and runs
// handler code (everything but a publication) only for the oldest unanswered event. When a process
// dies or overruns its timeout, exactly that event is charged (on_failed); the ones queued behind
// it are handed back without an attempt (on_returned), although some of their publications may
// have reached the broker already (a duplicate the broker's dedup id lets consumers drop).
//
// The timeout watchdog follows the oldest unanswered event: it is armed with that event's limit
// (plus the kill grace) when the event becomes the oldest, on its predecessor's RESULT or on
// dispatch to an idle process. Events queued behind it are not timed: however deep the pipeline,
// each event gets its whole limit once it is the oldest, and a publication that started earlier is
// bounded by its sink's own timeout (below the handler timeout).
//
// Broker sinks: the per-subscriber outcomes of every RESULT count as published or failed for the
// broker subscribers among them, and STATUS frames say which sinks of each process are connected;
// both feed SinkMetrics. A process that ends stops counting as connected.
//
// Everything runs on the supervisor's loop. The pool reaps its children on SIGCHLD (waitpid(-1),
// so as PID 1 in a container it also reaps orphans that were re-parented to it). Its libuv handles
// (each slot's channel and timer, the respawn timers, SIGCHLD) are the wrappers of uv_handle.h.
#pragma once

#include "common/protocol.h"
#include "supervisor/uv_handle.h"
#include "worker/subscriber.h"

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace outbox {

class SinkMetrics;

struct PoolOptions {
    int workers = 1;
    int pipeline_depth = 4;
    // For processes with a broker subscriber: enough publications in flight to cover the broker's
    // acknowledgement round trip at full speed.
    int broker_pipeline_depth = 128;
    long max_events_per_process = 0; // recycle after N events; 0: never
    long memory_limit_mb = 0;        // RLIMIT_AS of each process; 0: none
    long kill_grace_ms = 500;        // a handler is killed this long after its timeout
};

// Why a process was replaced, as the metric label outbox_worker_restarts_total{reason}; `stopped`
// is a process the supervisor killed at the drain deadline, which is never replaced.
enum class RestartReason { crashed, timed_out, recycled, reloaded, protocol_error, stopped };
const char* to_string(RestartReason reason);

// One handler process as the console's overview shows it (docs/console.md).
struct WorkerSlotView {
    int slot = 0;
    int pid = 0;
    const char* state = "starting"; // idle, busy, starting or stopping
    std::vector<uint64_t> seqs; // the events it holds (the relay's sequence numbers), oldest first
    long restarts = 0;          // processes of this slot replaced since the service started
};

class WorkerPool {
  public:
    struct Callbacks {
        std::function<void(uint64_t seq, ResultMsg&& result)> on_result;
        // The running event's attempt failed because its process died or was killed.
        std::function<void(uint64_t seq, std::string error)> on_failed;
        // Events that were queued in a process but never started, handed back uncharged.
        std::function<void(std::vector<uint64_t> seqs)> on_returned;
        // A slot gained free capacity (a result arrived, a process became ready).
        std::function<void()> on_capacity;
        std::function<void(RestartReason)> on_restart;
        // A handler started running an event (for the commit-to-start latency).
        std::function<void(uint64_t seq)> on_started;
    };

    // `sink_metrics`, when given, must outlive the pool.
    WorkerPool(uv_loop_t* loop, PoolOptions options,
               std::shared_ptr<const std::vector<Subscriber>> subscribers, Callbacks callbacks,
               SinkMetrics* sink_metrics = nullptr);
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    void start();

    int ready_processes() const;
    // Every process, active slots by index, then those retired by a reload that are finishing.
    std::vector<WorkerSlotView> describe() const;
    size_t in_flight() const;
    bool has_processes() const { return !slots_.empty(); }

    // Sends one event (its fields as encode_event_fields made them, claimed_event.h) to the
    // least-loaded ready slot; false when no slot has room.
    bool dispatch(uint64_t seq, std::string_view fields, long timeout_ms);

    // While one of these lives, frames for a process are gathered and written together when the
    // outermost one ends: one write (and one wake-up of the process) for all the events a loop
    // turn dispatches to it, instead of one per event. Nested scopes are fine.
    class WriteBatch {
      public:
        explicit WriteBatch(WorkerPool& pool) : pool_(pool) { ++pool_.hold_writes_; }
        ~WriteBatch() {
            if (--pool_.hold_writes_ == 0) {
                pool_.flush_writes();
            }
        }
        WriteBatch(const WriteBatch&) = delete;
        WriteBatch& operator=(const WriteBatch&) = delete;

      private:
        WorkerPool& pool_;
    };

    // SIGHUP: new processes with the new subscribers take over at once; the old ones finish what
    // they hold, then exit. Nothing is lost or run twice.
    void replace_subscribers(std::shared_ptr<const std::vector<Subscriber>> subscribers);

    // Draining: no respawns; every process is asked to QUIT after the events it holds.
    void quit_all();
    // Deadline passed: SIGKILL every process. Events they held come back through on_returned
    // (uncharged: the service, not the handler, cut them short).
    void kill_all();
    // Kills every process (as kill_all) and closes the pool's handles once every child is reaped:
    // the SIGCHLD handle stays open until then, which keeps the loop running. on_closed runs
    // after the last handle is closed (libuv frees them on the next turn of the loop); it may
    // destroy the pool.
    void close(std::function<void()> on_closed);

  private:
    struct Slot;
    enum class SlotState { starting, ready, quitting, dead };
    // One set of subscribers (the handlers at start, or after a reload) and what the pool reads
    // from it once: the pipeline depth of its processes, and its broker subscribers.
    struct HandlerSet {
        std::shared_ptr<const std::vector<Subscriber>> subscribers;
        int pipeline_depth = 0;
        // Broker subscribers by name as RESULT and STATUS carry it (bounded), to their kind.
        std::map<std::string, std::string, std::less<>> sink_kinds;
    };

    std::shared_ptr<const HandlerSet>
    make_handler_set(std::shared_ptr<const std::vector<Subscriber>> subscribers) const;
    void count_sink_outcomes(const Slot& slot, const ResultMsg& result);
    void on_sink_status(Slot& slot, const StatusMsg& status);

    void spawn(int index);
    void on_channel_read(Slot& slot, ssize_t nread, const char* data);
    void handle_frame(Slot& slot, Frame&& frame);
    void send(Slot& slot, std::string frame);
    void write_now(Slot& slot, std::string bytes);
    void flush_writes();
    void arm_timeout(Slot& slot);
    void on_timeout(Slot& slot);
    void kill_slot(Slot& slot, RestartReason reason, std::string why);
    void on_sigchld();
    // Reads and handles what an exited process left unread in its channel.
    void drain_channel(Slot& slot);
    void on_exit(Slot& slot, int status);
    void close_channel(Slot& slot);
    void respawn_later(int index, long delay_ms);
    // Once closing and every child is reaped: closes the pool's own handles, runs on_closed.
    void maybe_finish_close();

    uv_loop_t* loop_;
    PoolOptions options_;
    SinkMetrics* sink_metrics_;
    std::shared_ptr<const HandlerSet> handlers_; // what new processes run
    Callbacks callbacks_;

    // Active slots by index 0..workers-1, plus retired slots (replaced on SIGHUP, still finishing).
    std::map<int, std::unique_ptr<Slot>> slots_;
    std::vector<std::unique_ptr<Slot>> retired_;
    std::vector<Timer> respawn_timers_; // by slot index, opened on a slot's first delayed respawn
    std::vector<int> consecutive_crashes_;
    std::vector<long> restarts_; // by slot index, for describe()
    Signal sigchld_;
    int hold_writes_ = 0; // open WriteBatch scopes
    bool draining_ = false;
    bool closing_ = false;
    bool closed_ = false; // every child reaped and every handle closed
    std::function<void()> on_closed_;
};

} // namespace outbox
