#include "worker/log_handler.h"

#include <spdlog/spdlog.h>

namespace outbox {

namespace {

spdlog::level::level_enum to_spdlog(LogLevel level) {
    switch (level) {
    case LogLevel::debug:
        return spdlog::level::debug;
    case LogLevel::info:
        return spdlog::level::info;
    case LogLevel::warn:
        return spdlog::level::warn;
    case LogLevel::error:
        return spdlog::level::err;
    }
    return spdlog::level::info;
}

} // namespace

Handler make_log_handler(LogLevel level) {
    return [level = to_spdlog(level)](const Event& event) {
        spdlog::log(level, "event {} id={} attempt={} tenant={} payload={}", event.event_type,
                    event.id, event.attempt, event.tenant_id, event.payload_json);
        return Result::ok();
    };
}

} // namespace outbox
