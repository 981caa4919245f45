// The `log` handler kind (SPEC 4): writes each event to the service's log and succeeds. Meant for
// trials, demos and benchmarks, where the delivery path matters and the side effect does not.
#pragma once

#include "common/config.h"
#include <outbox/outbox.h>

namespace outbox {

// Logs type, id, attempt, tenant and payload through spdlog's default logger at `level`. The
// line is subject to the logger's own level like any other, so a `debug` subscriber is silent
// under LOG_LEVEL=info yet still completes its events.
Handler make_log_handler(LogLevel level);

} // namespace outbox
