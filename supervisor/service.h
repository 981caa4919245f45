// `outbox-worker run`: the supervisor process. It owns the libuv loop, every database connection,
// the leases, the handler-process pool, the HTTP endpoint and the signals (SPEC section 6).
#pragma once

#include "common/config.h"
#include "worker/subscriber.h"

#include <vector>

namespace outbox {

// Runs the service until SIGTERM/SIGINT and returns the process exit code. `code_subscribers` are
// the handlers registered through outbox::Worker::subscribe(); the handlers file named by
// config.handlers_path (if any) is loaded here, after them, and again on SIGHUP.
// Logging must already be set up.
int run_service(const Config& config, std::vector<Subscriber> code_subscribers);

} // namespace outbox
