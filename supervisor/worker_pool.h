// The handler-process pool: an explicit table of slots (as nginx's ngx_processes), each a forked
// process with its own channel (a SOCK_STREAM socketpair speaking common/protocol.h).
//
// Events are pipelined: a slot may hold up to `pipeline_depth` events at once. The process runs
// them strictly in order, so the oldest unanswered event is the one running. When a process dies
// or overruns its timeout, exactly that event is charged (on_failed); the ones queued behind it
// never started and are handed back without an attempt (on_returned).
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
#include <string>
#include <vector>

namespace outbox {

struct PoolOptions {
    int workers = 1;
    int pipeline_depth = 4;
    long max_events_per_process = 0; // recycle after N events; 0: never
    long memory_limit_mb = 0;        // RLIMIT_AS of each process; 0: none
    long kill_grace_ms = 500;        // a handler is killed this long after its timeout
};

// Why a process was replaced, as the metric label outbox_worker_restarts_total{reason}; `stopped`
// is a process the supervisor killed at the drain deadline, which is never replaced.
enum class RestartReason { crashed, timed_out, recycled, reloaded, protocol_error, stopped };
const char* to_string(RestartReason reason);

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

    WorkerPool(uv_loop_t* loop, PoolOptions options,
               std::shared_ptr<const std::vector<Subscriber>> subscribers, Callbacks callbacks);
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    void start();

    int ready_processes() const;
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
    std::shared_ptr<const std::vector<Subscriber>> subscribers_;
    Callbacks callbacks_;

    // Active slots by index 0..workers-1, plus retired slots (replaced on SIGHUP, still finishing).
    std::map<int, std::unique_ptr<Slot>> slots_;
    std::vector<std::unique_ptr<Slot>> retired_;
    std::vector<Timer> respawn_timers_; // by slot index, opened on a slot's first delayed respawn
    std::vector<int> consecutive_crashes_;
    Signal sigchld_;
    int hold_writes_ = 0; // open WriteBatch scopes
    bool draining_ = false;
    bool closing_ = false;
    bool closed_ = false; // every child reaped and every handle closed
    std::function<void()> on_closed_;
};

} // namespace outbox
