#include "worker/log_handler.h"

#include "common/log.h"

#include <spdlog/spdlog.h>

namespace outbox {

Handler make_log_handler(LogLevel level) {
    return [level = to_spdlog_level(level)](const Event& event) {
        spdlog::log(level, "event {} id={} attempt={} tenant={} payload={}", event.event_type,
                    event.id, event.attempt, event.tenant_id, event.payload_json);
        return Result::ok();
    };
}

} // namespace outbox
