#include "supervisor/worker_pool.h"

#include "common/check.h"
#include "common/fd.h"
#include "common/log.h"
#include "supervisor/metrics.h"
#include "worker/worker_process.h"

#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>

namespace outbox {

namespace {

constexpr long kRespawnBrakeInitialMs = 100;
constexpr long kRespawnBrakeMaxMs = 30000;
constexpr int kChildChannelFd = 3;
constexpr uint64_t kChannelCloseGraceMs = 1000;
constexpr size_t kReadBufferSize = 64 * 1024;

std::string describe_status(pid_t pid, int status) {
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char* abbrev = sigabbrev_np(sig);
        std::string s =
            "handler process " + std::to_string(pid) + " killed by signal " + std::to_string(sig);
        if (abbrev != nullptr) {
            s += std::string(" (SIG") + abbrev + ")";
        }
        if (WCOREDUMP(status)) {
            s += ", core dumped";
        }
        return s;
    }
    return "handler process " + std::to_string(pid) + " exited with code " +
           std::to_string(WEXITSTATUS(status));
}

} // namespace

const char* to_string(RestartReason reason) {
    switch (reason) {
    case RestartReason::crashed:
        return "crashed";
    case RestartReason::timed_out:
        return "timed_out";
    case RestartReason::recycled:
        return "recycled";
    case RestartReason::reloaded:
        return "reloaded";
    case RestartReason::protocol_error:
        return "protocol_error";
    case RestartReason::stopped:
        return "stopped";
    }
    return "crashed";
}

struct WorkerPool::Slot {
    int index = 0;
    pid_t pid = -1;
    std::shared_ptr<const HandlerSet> handlers; // the subscribers this process was forked with
    SlotState state = SlotState::starting;
    bool retired = false;
    Pipe channel; // closed at end of file or when the process is reaped
    Timer timer;  // the running event's timeout, or the grace after the channel closed
    FrameDecoder decoder;
    struct InFlight {
        uint64_t seq;
        long timeout_ms;
    };
    std::deque<InFlight> pipeline;
    std::string held; // frames gathered by a WriteBatch, not yet written
    long events_done = 0;
    bool killed = false;
    bool stopped_by_supervisor = false; // killed while draining: its events are not charged
    bool channel_closed = false;        // EOF seen; waiting for the exit status
    RestartReason kill_reason = RestartReason::crashed;
    std::string kill_error;
    uint64_t kill_seq = 0; // the event running when the supervisor killed the process (0: none)
    // Its sinks that said they are connected (STATUS), counted in outbox_sink_connected.
    std::set<std::string, std::less<>> connected_sinks;
};

WorkerPool::WorkerPool(uv_loop_t* loop, PoolOptions options,
                       std::shared_ptr<const std::vector<Subscriber>> subscribers,
                       Callbacks callbacks, SinkMetrics* sink_metrics)
    : loop_(loop), options_(options), sink_metrics_(sink_metrics),
      callbacks_(std::move(callbacks)) {
    handlers_ = make_handler_set(std::move(subscribers));
    consecutive_crashes_.assign(static_cast<size_t>(options_.workers), 0);
    restarts_.assign(static_cast<size_t>(options_.workers), 0);
    respawn_timers_.resize(static_cast<size_t>(options_.workers));
}

std::shared_ptr<const WorkerPool::HandlerSet>
WorkerPool::make_handler_set(std::shared_ptr<const std::vector<Subscriber>> subscribers) const {
    auto set = std::make_shared<HandlerSet>();
    for (const Subscriber& subscriber : *subscribers) {
        if (!subscriber.broker) {
            continue;
        }
        const std::string name = bounded_error(subscriber.name, kMaxSubscriberNameBytes);
        set->sink_kinds.emplace(name, subscriber.broker->kind);
        if (sink_metrics_ != nullptr) {
            sink_metrics_->declare(name, subscriber.broker->kind);
        }
    }
    set->pipeline_depth =
        set->sink_kinds.empty() ? options_.pipeline_depth : options_.broker_pipeline_depth;
    set->subscribers = std::move(subscribers);
    return set;
}

WorkerPool::~WorkerPool() = default;

void WorkerPool::start() {
    sigchld_ = Signal(loop_, SIGCHLD, [this](int) { on_sigchld(); });
    for (int i = 0; i < options_.workers; ++i) {
        spawn(i);
    }
}

std::vector<WorkerSlotView> WorkerPool::describe() const {
    std::vector<WorkerSlotView> out;
    auto view = [&](const Slot& slot) {
        WorkerSlotView v;
        v.slot = slot.index;
        v.pid = static_cast<int>(slot.pid);
        switch (slot.state) {
        case SlotState::starting:
            v.state = "starting";
            break;
        case SlotState::ready:
            v.state = slot.pipeline.empty() ? "idle" : "busy";
            break;
        case SlotState::quitting:
        case SlotState::dead:
            v.state = "stopping";
            break;
        }
        for (const auto& f : slot.pipeline) {
            v.seqs.push_back(f.seq);
        }
        v.restarts = restarts_[static_cast<size_t>(slot.index)];
        out.push_back(std::move(v));
    };
    for (const auto& [index, slot] : slots_) {
        if (slot) {
            view(*slot);
        }
    }
    for (const auto& slot : retired_) {
        view(*slot);
    }
    return out;
}

void WorkerPool::spawn(int index) {
    if (draining_ || closing_) {
        return;
    }
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        spdlog::error("cannot create a channel for handler process {}: {}", index,
                      std::strerror(errno));
        respawn_later(index, kRespawnBrakeMaxMs);
        return;
    }
    // Ours until the child has its copy (child_end) and libuv has the other (supervisor_end).
    UniqueFd supervisor_end(fds[0]);
    UniqueFd child_end(fds[1]);
    pid_t parent = getpid();
    // Block every signal across fork(): a signal arriving in the child before its handlers are
    // reset would run libuv's handler there, which writes to the supervisor's signal pipe (and,
    // once that descriptor number is reused, into whatever the handler opened).
    sigset_t all_signals, previous_mask;
    sigfillset(&all_signals);
    sigprocmask(SIG_SETMASK, &all_signals, &previous_mask);
    // Handler processes are forked without exec: they inherit the registered handlers (code
    // subscribers are closures in this address space). The supervisor is single-threaded, so the
    // child's copy of every lock is consistent.
    // _Fork (glibc 2.34) rather than fork: no pthread_atfork handlers run. libuv's child handler
    // would re-create its signal-lock pipe in the child, and the child of the child would then
    // close that pipe's descriptor numbers, whatever they had become by then.
    pid_t pid = _Fork();
    if (pid != 0) {
        sigprocmask(SIG_SETMASK, &previous_mask, nullptr);
    }
    if (pid < 0) {
        spdlog::error("cannot fork handler process {}: {}", index, std::strerror(errno));
        respawn_later(index, kRespawnBrakeMaxMs);
        return;
    }
    if (pid == 0) {
        // In the child. Die with the supervisor, even if it is SIGKILLed and cannot say goodbye;
        // checking the parent afterwards closes the race with a supervisor that died before prctl.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(kWorkerExitOk);
        }
        // Signal dispositions and the mask come from the supervisor's loop (libuv's handlers).
        // Stop signals sent to the whole process group (Ctrl-C in a terminal, `timeout`, a
        // process manager that kills the group) must not cut running events short: the
        // supervisor decides when handler processes stop (QUIT, then SIGKILL after the shutdown
        // timeout), and they die with it through PR_SET_PDEATHSIG.
        struct sigaction default_action {};
        default_action.sa_handler = SIG_DFL;
        for (int sig = 1; sig < NSIG; ++sig) {
            sigaction(sig, &default_action, nullptr);
        }
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        // Keep only stdio and the channel (SPEC 6): no database socket, no listening socket.
        if (dup2(child_end.get(), kChildChannelFd) < 0) {
            _exit(kWorkerExitSetupError);
        }
        ::close_range(kChildChannelFd + 1, ~0U, 0);
        // Handlers must not talk to systemd in the supervisor's name, and exec commands must not
        // inherit the database password: the handler side never touches the database.
        unsetenv("DATABASE_URL");
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        if (options_.memory_limit_mb > 0) {
            rlimit lim{};
            lim.rlim_cur = lim.rlim_max =
                static_cast<rlim_t>(options_.memory_limit_mb) * 1024 * 1024;
            if (setrlimit(RLIMIT_AS, &lim) != 0) {
                _exit(kWorkerExitSetupError);
            }
        }
        set_log_process_name("handler-" + std::to_string(index));
        WorkerProcessOptions opts;
        opts.process_name = "handler-" + std::to_string(index);
        run_worker_process(kChildChannelFd, *handlers_->subscribers, opts);
    }

    child_end.reset();
    auto slot = std::make_unique<Slot>();
    slot->index = index;
    slot->pid = pid;
    slot->handlers = handlers_;
    Slot* raw = slot.get();
    // libuv refuses only a descriptor it already watches or one it cannot make non-blocking;
    // neither can be true of a socket created just now.
    OUTBOX_CHECK(slot->channel.open(loop_, supervisor_end.get()) == 0);
    static_cast<void>(supervisor_end.release()); // closed with the channel from now on
    // The slot outlives both handles' callbacks: on_exit() closes them before the slot goes.
    OUTBOX_CHECK(slot->channel.read_start(kReadBufferSize, [this, raw](ssize_t n, const char* d) {
        on_channel_read(*raw, n, d);
    }) == 0);
    slot->timer = Timer(loop_, [this, raw] { on_timeout(*raw); });
    slots_[index] = std::move(slot);
    spdlog::debug("handler process {} started (slot {})", pid, index);
}

void WorkerPool::on_channel_read(Slot& slot, ssize_t nread, const char* data) {
    if (nread < 0) {
        // EOF: the process closed its end, which only happens when it exits (or a handler closed
        // descriptor 3 behind our back). Either way it can no longer report results: make sure it
        // is gone, and let the exit path attribute the running event.
        close_channel(slot);
        if (slot.state != SlotState::dead && !slot.killed) {
            // Usually the process is exiting and SIGCHLD, with its real exit status, follows
            // within milliseconds. If it is still alive after a grace period, it closed the
            // channel but kept running (a handler closed descriptor 3): then it is killed.
            slot.channel_closed = true;
            slot.timer.start(kChannelCloseGraceMs); // replaces the event's timeout
        }
        return;
    }
    slot.decoder.feed(data, static_cast<size_t>(nread));
    // The events dispatched in answer to these results (through on_result and on_capacity) go
    // out together once every frame of this read is handled.
    WriteBatch batch(*this);
    for (;;) {
        FrameDecoder::Next next = slot.decoder.next();
        if (next.status == FrameDecoder::Status::need_more) {
            return;
        }
        if (next.status == FrameDecoder::Status::error) {
            spdlog::error("handler process {} sent a bad frame: {}", slot.pid, next.error);
            kill_slot(slot, RestartReason::protocol_error,
                      "handler process " + std::to_string(slot.pid) +
                          " broke the channel protocol: " + next.error);
            return;
        }
        handle_frame(slot, std::move(next.frame));
        if (slot.killed || !slot.channel.is_open()) {
            return;
        }
    }
}

void WorkerPool::handle_frame(Slot& slot, Frame&& frame) {
    switch (frame.type) {
    case MessageType::hello: {
        auto hello = decode_hello(frame);
        if (!hello.ok() || hello.value().protocol != kProtocolVersion) {
            kill_slot(slot, RestartReason::protocol_error,
                      "handler process " + std::to_string(slot.pid) + " sent a bad HELLO: " +
                          (hello.ok() ? "protocol version mismatch" : hello.error()));
            return;
        }
        if (slot.state == SlotState::starting) {
            slot.state = SlotState::ready;
            if (callbacks_.on_capacity) {
                callbacks_.on_capacity();
            }
        }
        return;
    }
    case MessageType::result: {
        auto decoded = decode_result(frame);
        if (!decoded.ok()) {
            kill_slot(slot, RestartReason::protocol_error,
                      "handler process " + std::to_string(slot.pid) +
                          " sent a bad RESULT: " + decoded.error());
            return;
        }
        ResultMsg& result = decoded.value();
        if (slot.pipeline.empty() || slot.pipeline.front().seq != result.seq) {
            kill_slot(slot, RestartReason::protocol_error,
                      "handler process " + std::to_string(slot.pid) + " answered event #" +
                          std::to_string(result.seq) + " out of order");
            return;
        }
        slot.pipeline.pop_front();
        ++slot.events_done;
        consecutive_crashes_[static_cast<size_t>(slot.index)] = 0;
        arm_timeout(slot);
        count_sink_outcomes(slot, result);
        uint64_t seq = result.seq;
        callbacks_.on_result(seq, std::move(result));
        if (slot.killed) {
            return;
        }
        if (options_.max_events_per_process > 0 &&
            slot.events_done >= options_.max_events_per_process && slot.state == SlotState::ready) {
            // Recycling: the process finishes what it holds (nothing more is sent to a quitting
            // slot), then exits cleanly, and on_exit starts its replacement.
            slot.state = SlotState::quitting;
            send(slot, encode_quit());
            if (callbacks_.on_restart) {
                callbacks_.on_restart(RestartReason::recycled);
            }
        }
        if (callbacks_.on_capacity) {
            callbacks_.on_capacity();
        }
        return;
    }
    case MessageType::status: {
        auto decoded = decode_status(frame);
        if (!decoded.ok()) {
            kill_slot(slot, RestartReason::protocol_error,
                      "handler process " + std::to_string(slot.pid) +
                          " sent a bad STATUS: " + decoded.error());
            return;
        }
        on_sink_status(slot, decoded.value());
        return;
    }
    default:
        kill_slot(slot, RestartReason::protocol_error,
                  "handler process " + std::to_string(slot.pid) + " sent an unexpected " +
                      message_type_name(frame.type) + " message");
        return;
    }
}

void WorkerPool::count_sink_outcomes(const Slot& slot, const ResultMsg& result) {
    if (sink_metrics_ == nullptr || slot.handlers->sink_kinds.empty()) {
        return;
    }
    for (const SubscriberOutcome& subscriber : result.subscribers) {
        auto kind = slot.handlers->sink_kinds.find(subscriber.name);
        if (kind == slot.handlers->sink_kinds.end()) {
            continue; // not a broker subscriber
        }
        if (subscriber.outcome == Outcome::success) {
            sink_metrics_->published(kind->first, kind->second);
        } else {
            sink_metrics_->failed(kind->first, kind->second);
        }
    }
}

void WorkerPool::on_sink_status(Slot& slot, const StatusMsg& status) {
    auto kind = slot.handlers->sink_kinds.find(status.sink);
    if (kind == slot.handlers->sink_kinds.end()) {
        // Not a protocol error: the names are the process's business, and nothing depends on
        // this report but a metric.
        spdlog::debug("handler process {} reported the connection of sink \"{}\", which is no "
                      "broker subscriber of its handlers; ignored",
                      slot.pid, status.sink);
        return;
    }
    auto known = slot.connected_sinks.find(status.sink);
    const bool was_connected = known != slot.connected_sinks.end();
    if (status.connected == was_connected) {
        return;
    }
    if (status.connected) {
        slot.connected_sinks.emplace(status.sink);
    } else {
        slot.connected_sinks.erase(known);
    }
    if (sink_metrics_ != nullptr) {
        sink_metrics_->connected(kind->first, kind->second, status.connected ? 1 : -1);
    }
    // The handler process logs the change itself, with its reason; this is the supervisor's view.
    spdlog::debug("handler process {}: sink {} ({}) {}: {}", slot.pid, kind->first, kind->second,
                  status.connected ? "connected" : "not connected", status.reason);
}

void WorkerPool::send(Slot& slot, std::string frame) {
    if (!slot.channel.is_open()) {
        return;
    }
    if (hold_writes_ > 0) {
        slot.held += frame;
        return;
    }
    write_now(slot, std::move(frame));
}

void WorkerPool::flush_writes() {
    auto flush = [this](Slot& slot) {
        if (slot.held.empty()) {
            return;
        }
        std::string bytes;
        bytes.swap(slot.held);
        if (slot.channel.is_open()) {
            write_now(slot, std::move(bytes));
        }
    };
    for (auto& [index, slot] : slots_) {
        flush(*slot);
    }
    for (auto& slot : retired_) {
        flush(*slot);
    }
}

void WorkerPool::write_now(Slot& slot, std::string bytes) {
    // A failed write means the process is gone; EOF or SIGCHLD reports that.
    static_cast<void>(slot.channel.write(std::move(bytes)));
}

int WorkerPool::ready_processes() const {
    int n = 0;
    for (const auto& [index, slot] : slots_) {
        if (slot->state == SlotState::ready && !slot->killed) {
            ++n;
        }
    }
    return n;
}

size_t WorkerPool::in_flight() const {
    size_t n = 0;
    for (const auto& [index, slot] : slots_) {
        n += slot->pipeline.size();
    }
    for (const auto& slot : retired_) {
        n += slot->pipeline.size();
    }
    return n;
}

bool WorkerPool::dispatch(uint64_t seq, std::string_view fields, long timeout_ms) {
    Slot* best = nullptr;
    for (auto& [index, slot] : slots_) {
        if (slot->state != SlotState::ready || slot->killed ||
            static_cast<int>(slot->pipeline.size()) >= slot->handlers->pipeline_depth) {
            continue;
        }
        // A process due for recycling takes no more than its quota.
        if (options_.max_events_per_process > 0 &&
            slot->events_done + static_cast<long>(slot->pipeline.size()) >=
                options_.max_events_per_process) {
            continue;
        }
        if (best == nullptr || slot->pipeline.size() < best->pipeline.size()) {
            best = slot.get();
        }
    }
    if (best == nullptr) {
        return false;
    }
    best->pipeline.push_back({seq, timeout_ms});
    send(*best, encode_event_frame(seq, timeout_ms, fields));
    if (best->pipeline.size() == 1) {
        arm_timeout(*best);
    }
    return true;
}

void WorkerPool::arm_timeout(Slot& slot) {
    if (!slot.timer.is_open() || slot.channel_closed || slot.state == SlotState::dead) {
        return;
    }
    slot.timer.stop();
    if (slot.pipeline.empty()) {
        return;
    }
    // The head of the pipeline is running from now on: its predecessor just finished (or it was
    // sent to an idle process).
    if (callbacks_.on_started) {
        callbacks_.on_started(slot.pipeline.front().seq);
    }
    uint64_t limit =
        static_cast<uint64_t>(slot.pipeline.front().timeout_ms + options_.kill_grace_ms);
    slot.timer.start(limit);
}

void WorkerPool::on_timeout(Slot& slot) {
    if (slot.killed) {
        return;
    }
    if (slot.channel_closed) {
        kill_slot(slot, RestartReason::crashed,
                  "handler process " + std::to_string(slot.pid) + " closed its channel");
        return;
    }
    if (slot.pipeline.empty()) {
        return;
    }
    long timeout = slot.pipeline.front().timeout_ms;
    spdlog::warn("handler process {} ran event #{} past its timeout of {} ms: killing it", slot.pid,
                 slot.pipeline.front().seq, timeout);
    kill_slot(slot, RestartReason::timed_out, "timed out after " + std::to_string(timeout) + " ms");
}

void WorkerPool::kill_slot(Slot& slot, RestartReason reason, std::string why) {
    if (slot.killed || slot.state == SlotState::dead) {
        return;
    }
    slot.killed = true;
    slot.kill_reason = reason;
    slot.kill_error = std::move(why);
    slot.kill_seq = slot.pipeline.empty() ? 0 : slot.pipeline.front().seq;
    slot.timer.stop();
    ::kill(slot.pid, SIGKILL);
}

void WorkerPool::close_channel(Slot& slot) {
    // Writes still queued are cancelled: the process is gone, or going.
    slot.channel.close();
}

void WorkerPool::on_sigchld() {
    for (;;) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            break;
        }
        Slot* found = nullptr;
        for (auto& [index, slot] : slots_) {
            if (slot->pid == pid) {
                found = slot.get();
            }
        }
        for (auto& slot : retired_) {
            if (slot->pid == pid) {
                found = slot.get();
            }
        }
        if (found != nullptr) {
            on_exit(*found, status);
        } else {
            // Not ours: as PID 1 of a container we inherit orphans and must reap them.
            spdlog::debug("reaped process {} ({})", pid, describe_status(pid, status));
        }
    }
    maybe_finish_close();
}

void WorkerPool::drain_channel(Slot& slot) {
    int fd = slot.channel.fd(); // -1 once the channel is closed
    std::unique_ptr<char[]> buffer;
    WriteBatch batch(*this);
    for (;;) {
        // Frames already in the decoder first: once the slot is killed, a read callback stops
        // after the first frame it handles and leaves the rest there.
        for (;;) {
            FrameDecoder::Next next = slot.decoder.next();
            if (next.status != FrameDecoder::Status::frame) {
                break;
            }
            handle_frame(slot, std::move(next.frame));
        }
        if (fd < 0) {
            return; // end of file was seen already: the decoder held all that was left
        }
        // The channel is non-blocking (libuv made it so): this ends at end of file, or at
        // EAGAIN when something else still holds the process's end.
        if (buffer == nullptr) {
            buffer = std::make_unique_for_overwrite<char[]>(kReadBufferSize);
        }
        ssize_t n = ::read(fd, buffer.get(), kReadBufferSize);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        slot.decoder.feed(buffer.get(), static_cast<size_t>(n));
    }
}

void WorkerPool::on_exit(Slot& slot, int status) {
    // Dead before anything else: kill_slot() must not signal a pid that waitpid() has released.
    slot.state = SlotState::dead;
    // on_sigchld() reaps every child that has exited, not only the one whose SIGCHLD woke it, and
    // libuv runs signal callbacks after the other I/O of the same loop turn: a process can be
    // reaped here while RESULTs it wrote just before it died are still unread in its channel.
    // They are read first, so that the head of the pipeline is the event that was really running.
    drain_channel(slot);
    close_channel(slot);
    slot.timer.close();
    // Its sinks' connections ended with it.
    if (sink_metrics_ != nullptr) {
        for (const std::string& sink : slot.connected_sinks) {
            sink_metrics_->connected(sink, slot.handlers->sink_kinds.find(sink)->second, -1);
        }
    }
    slot.connected_sinks.clear();
    std::string how = describe_status(slot.pid, status);
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == kWorkerExitOk && !slot.killed;

    // Attribution: the head of the pipeline was running; the rest never started.
    std::vector<uint64_t> returned;
    if (!slot.pipeline.empty()) {
        uint64_t head = slot.pipeline.front().seq;
        slot.pipeline.pop_front();
        for (const auto& f : slot.pipeline) {
            returned.push_back(f.seq);
        }
        slot.pipeline.clear();
        if (slot.stopped_by_supervisor) {
            returned.insert(returned.begin(), head);
        } else if (slot.killed && slot.kill_seq != head) {
            // The event the supervisor killed the process for (its timeout) answered after all,
            // between the kill and the exit: the one behind it is not to blame.
            spdlog::warn("{}; event #{} it was killed for had answered meanwhile: no event is "
                         "charged",
                         how, slot.kill_seq);
            returned.insert(returned.begin(), head);
        } else {
            std::string error = slot.killed ? slot.kill_error : how;
            spdlog::error("{}; event #{} fails: {}", how, head, error);
            callbacks_.on_failed(head, error);
        }
    }
    if (!returned.empty()) {
        callbacks_.on_returned(std::move(returned));
    }

    RestartReason reason = slot.killed ? slot.kill_reason : RestartReason::crashed;
    if (clean) {
        spdlog::debug("{} (clean exit)", how);
    } else if (!slot.killed) {
        spdlog::error("{}", how);
    } else {
        spdlog::warn("{} ({})", how, to_string(reason));
    }

    int index = slot.index;
    bool retired = slot.retired;
    std::unique_ptr<Slot> owned;
    if (retired) {
        auto it = std::find_if(retired_.begin(), retired_.end(),
                               [&](const auto& p) { return p.get() == &slot; });
        owned = std::move(*it);
        retired_.erase(it);
    } else {
        owned = std::move(slots_[index]);
        slots_.erase(index);
    }

    if (retired || draining_ || closing_) {
        if (callbacks_.on_capacity) {
            callbacks_.on_capacity();
        }
        return;
    }
    ++restarts_[static_cast<size_t>(index)];
    if (clean) {
        // Recycled after OUTBOX_WORKER_MAX_EVENTS: replace at once.
        spawn(index);
    } else {
        if (callbacks_.on_restart) {
            callbacks_.on_restart(reason);
        }
        // A brake on crash loops: each consecutive crash of this slot doubles the delay before
        // the next start, up to 30 s. A successful event resets it.
        int& crashes = consecutive_crashes_[static_cast<size_t>(index)];
        ++crashes;
        long delay = crashes <= 1 ? 0
                                  : std::min(kRespawnBrakeMaxMs,
                                             kRespawnBrakeInitialMs << std::min(crashes - 2, 20));
        if (delay == 0) {
            spawn(index);
        } else {
            spdlog::warn("handler slot {} crashed {} times in a row: restarting in {} ms", index,
                         crashes, delay);
            respawn_later(index, delay);
        }
    }
    if (callbacks_.on_capacity) {
        callbacks_.on_capacity();
    }
}

void WorkerPool::respawn_later(int index, long delay_ms) {
    Timer& timer = respawn_timers_[static_cast<size_t>(index)];
    if (!timer.is_open()) {
        timer = Timer(loop_, [this, index] { spawn(index); });
    }
    timer.start(static_cast<uint64_t>(delay_ms));
}

void WorkerPool::replace_subscribers(std::shared_ptr<const std::vector<Subscriber>> subscribers) {
    handlers_ = make_handler_set(std::move(subscribers));
    std::vector<int> indexes;
    for (auto& [index, slot] : slots_) {
        indexes.push_back(index);
    }
    for (int index : indexes) {
        std::unique_ptr<Slot> old = std::move(slots_[index]);
        slots_.erase(index);
        old->retired = true;
        if (old->state == SlotState::starting || old->state == SlotState::ready) {
            old->state = SlotState::quitting;
            send(*old, encode_quit());
        }
        if (callbacks_.on_restart) {
            callbacks_.on_restart(RestartReason::reloaded);
        }
        retired_.push_back(std::move(old));
        ++restarts_[static_cast<size_t>(index)];
        spawn(index);
    }
}

void WorkerPool::quit_all() {
    draining_ = true;
    auto quit = [&](Slot& slot) {
        if (slot.state == SlotState::starting || slot.state == SlotState::ready) {
            slot.state = SlotState::quitting;
            send(slot, encode_quit());
        }
    };
    for (auto& [index, slot] : slots_) {
        quit(*slot);
    }
    for (auto& slot : retired_) {
        quit(*slot);
    }
    for (Timer& timer : respawn_timers_) {
        timer.stop();
    }
}

void WorkerPool::kill_all() {
    draining_ = true;
    auto stop = [&](Slot& slot) {
        if (!slot.killed && slot.state != SlotState::dead) {
            slot.stopped_by_supervisor = true;
            kill_slot(slot, RestartReason::stopped, "stopped by the supervisor");
        }
    };
    for (auto& [index, slot] : slots_) {
        stop(*slot);
    }
    for (auto& slot : retired_) {
        stop(*slot);
    }
}

void WorkerPool::close(std::function<void()> on_closed) {
    on_closed_ = std::move(on_closed);
    closing_ = true;
    draining_ = true;
    kill_all();
    maybe_finish_close();
}

void WorkerPool::maybe_finish_close() {
    if (!closing_ || closed_ || !slots_.empty() || !retired_.empty()) {
        return;
    }
    // Every child is reaped (and each slot's handles closed with it): now the pool's own handles
    // can go. SIGCHLD stayed open until here so that the loop kept running to reap them.
    closed_ = true;
    for (Timer& timer : respawn_timers_) {
        timer.close();
    }
    sigchld_.close();
    if (on_closed_) {
        auto on_closed = std::move(on_closed_);
        on_closed(); // last: it may destroy the pool
    }
}

} // namespace outbox
