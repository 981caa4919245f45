// The handler process: the child side of one channel (docs/protocol.md).
//
// The forking code (supervisor/worker_pool.cpp) prepares the process before calling
// run_worker_process: it closes every descriptor but the channel and stdio, sets the parent-death
// signal, resets signal handlers and applies resource limits. Nothing of that is done here, so that
// this loop stays testable in a plain forked child. The forking code should also flush stdio before
// fork(): this process flushes stdio when it exits, which would write the parent's buffered output
// twice.
#pragma once

#include "common/protocol.h"
#include "worker/subscriber.h"
#include <outbox/outbox.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace outbox {

struct WorkerProcessOptions {
    std::string process_name; // prefixes this process's log lines, e.g. "handler[3]"
};

// Runs the handler process on `channel_fd` (its end of the socketpair) and never returns. It
// ignores SIGPIPE, sends HELLO, then handles frames in the order they arrive and answers every
// EVENT with a RESULT, strictly in EVENT order, so a QUIT takes effect after every EVENT sent
// before it has been answered. The supervisor relies on that order to know which event was
// running when the process died (docs/protocol.md, "Crash attribution").
//
// Subscribers without `broker` run inline, one event at a time, and only for the oldest
// unanswered event: a process without broker subscribers reads an EVENT, runs it to its end and
// answers it before it reads the next one. A broker subscriber publishes through its Sink
// (worker/sink.h), created on its first event: the process starts the publication, goes on
// reading EVENT frames and starting theirs, and answers each event once its subscribers are done
// (docs/protocol.md, "Many publications in flight"). Connection changes of the sinks are reported
// with STATUS frames.
//
// Exits with kWorkerExitOk on QUIT (once every event is answered; the sinks are closed first),
// on end of file, and when a write finds the supervisor gone (EPIPE, ECONNRESET); with
// kWorkerExitProtocolError on a malformed or unexpected frame and on an I/O error of the channel.
// The process ends with _exit(), after flushing stdio and the log, so that nothing inherited from
// the supervisor (atexit handlers, static destructors) runs here.
[[noreturn]] void run_worker_process(int channel_fd, const std::vector<Subscriber>& subscribers,
                                     const WorkerProcessOptions& options);

// Names of subscribers, looked up by string_view.
using SubscriberNames = std::set<std::string, std::less<>>;

// The names in an EVENT's subscribersDone (EventDelivery::subscribers_done_json), which the
// supervisor fills from PostgreSQL's to_json(text[]): a JSON array of strings. nullopt when the
// text is anything else; the caller then treats the event as reached by no subscriber yet, since
// running a subscriber again is allowed (at least once) and skipping one wrongly is not.
[[nodiscard]] std::optional<SubscriberNames> parse_subscribers_done(std::string_view json);

// What dispatch_event did with one event.
struct DispatchResult {
    Result result; // the event's outcome
    // Each subscriber that ran in this attempt, in order, with its outcome: what RESULT carries.
    std::vector<SubscriberOutcome> ran;
    size_t skipped = 0; // matching subscribers not run because they had succeeded before
};

// Runs every subscriber whose patterns match event.event_type and whose name is not in `done`, in
// order, each through its `handler` (a broker subscriber's publishes and waits), stopping at the
// first failure, whose error becomes "subscriber <name>: <error>". A name is compared as RESULT
// carries it (bounded_error with kMaxSubscriberNameBytes), since that is what the supervisor
// recorded. A std::exception is a retryable failure with what(), any other exception a retryable
// "unknown exception". When every matching subscriber is in `done`, the event succeeds with nothing
// run. No matching subscriber is a retryable failure: the supervisor claimed the event for a
// handler set this process no longer has (a handlers reload raced with the claim), and another
// process will.
[[nodiscard]] DispatchResult dispatch_event(const std::vector<Subscriber>& subscribers,
                                            const Event& event, const SubscriberNames& done = {});

} // namespace outbox
