// The `exec` handler kind (SPEC 4): runs a command (an argv array, no shell) for each event, with
// the event JSON on its stdin.
//
// It runs in a handler process, which is single-threaded and may block; the call returns only
// once the command has ended and been reaped, so no zombie and no member of its process group
// outlives a call. Exit 0 is success, exit 65 (EX_DATAERR) a permanent failure, anything else a
// retryable one whose error carries the tail of the command's stderr.
//
// The child's stdout goes to the handler process's stderr, so whatever the command prints ends up
// in the service's log. Its environment is the handler process's environment, plus the
// configured `env` entries, plus OUTBOX_EVENT_ID, OUTBOX_EVENT_TYPE and OUTBOX_ATTEMPT (which win
// over both), plus TRACEPARENT and TRACESTATE when the event's metadata carries a W3C trace context
// (SPEC 4; the handler process's own TRACEPARENT and TRACESTATE are never passed on). The command
// runs in its own process group and is killed (SIGKILL) if the handler process dies; when it exits
// or times out, whatever is left of its process group is killed too, so a background process it
// started cannot linger between events.
#pragma once

#include <outbox/outbox.h>

#include <signal.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox {

// What the handlers file says about one exec subscriber, already validated.
struct ExecHandlerOptions {
    std::vector<std::string> command;                     // argv; command[0] is not empty
    std::vector<std::pair<std::string, std::string>> env; // added to the environment, in order
    long timeout_ms = 30000;                              // the whole run, stdin included
};

// How much of the command's stderr becomes the error text.
constexpr std::size_t kExecStderrTailBytes = 2048;

// The exit code by which a command declares a permanent failure (sysexits.h EX_DATAERR).
constexpr int kExecPermanentExitCode = 65;

// Runs the command once for `event`. Never throws for anything the command does; the result
// says what happened. Does not touch SIGCHLD handling: it reaps only its own child, by pid.
[[nodiscard]] Result run_exec_handler(const ExecHandlerOptions& options, const Event& event);

// A Handler that calls run_exec_handler with a copy of `options`.
Handler make_exec_handler(ExecHandlerOptions options);

// Turns bytes that came from outside (the tail of a command's stderr, the start of an HTTP
// response body) into the text of an error: a UTF-8 sequence cut at the front is dropped and
// surrounding whitespace is trimmed. Invalid UTF-8 and NUL bytes are left as they are: every
// handler's error is made safe to store exactly once, by encode_result (common/protocol.h), on its
// way to the supervisor. The http handler shares it.
std::string error_text_from_output(std::string_view bytes);

// Blocks SIGPIPE in the calling thread for its lifetime and, on destruction, discards a SIGPIPE
// raised meanwhile, so that writing to a pipe or socket whose reader went away yields EPIPE instead
// of killing the handler process, whatever the process's SIGPIPE disposition is. The http handler
// shares it (libcurl with CURLOPT_NOSIGNAL leaves SIGPIPE to the caller).
class ScopedSigpipeBlock {
  public:
    ScopedSigpipeBlock();
    ~ScopedSigpipeBlock();
    ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
    ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

  private:
    sigset_t previous_mask_;
    bool was_pending_ = false;
};

} // namespace outbox
