// The handler process: the child side of one channel (docs/protocol.md).
//
// The forking code (supervisor/pool.cpp) prepares the process before calling run_worker_process:
// it closes every descriptor but the channel and stdio, sets the parent-death signal, resets
// signal handlers and applies resource limits. Nothing of that is done here, so that this loop
// stays testable in a plain forked child.
#pragma once

#include "worker/subscriber.h"
#include <outbox/outbox.h>

#include <string>
#include <vector>

namespace outbox {

struct WorkerProcessOptions {
    std::string process_name; // prefixes this process's log lines, e.g. "handler[3]"
};

// Runs the handler process on `channel_fd` (its end of the socketpair, blocking mode) and never
// returns. It ignores SIGPIPE, sends HELLO, then handles EVENT frames strictly in order, answering
// each with a RESULT. Before starting an event it looks at what else has arrived: a QUIT (or the
// supervisor closing the channel) queued behind it means the event is not started and the process
// exits, so that a draining supervisor can return unstarted events uncharged.
//
// Exits with kWorkerExitOk on QUIT, on end of file, and when a write finds the supervisor gone
// (EPIPE, ECONNRESET); with kWorkerExitProtocolError on a malformed or unexpected frame and on an
// I/O error of the channel. The process ends with _exit(), after flushing stdio and the log, so
// that nothing inherited from the supervisor (atexit handlers, static destructors) runs here.
[[noreturn]] void run_worker_process(int channel_fd, const std::vector<Subscriber>& subscribers,
                                     const WorkerProcessOptions& options);

// Runs every subscriber whose patterns match event.event_type, in order, stopping at the first
// failure, whose error becomes "subscriber <name>: <error>". A std::exception is a retryable
// failure with what(), any other exception a retryable "unknown exception". No matching
// subscriber is a retryable failure too: the supervisor claimed the event for a handler set this
// process no longer has (a handlers reload raced with the claim), and another process will.
[[nodiscard]] Result dispatch_event(const std::vector<Subscriber>& subscribers, const Event& event);

} // namespace outbox
