#include "worker/sink.h"

#include <utility>

namespace outbox {

Result publish_and_wait(Sink& sink, const BrokerMessage& message) {
    std::optional<Result> outcome;
    sink.publish(message, [&outcome](Result result) { outcome = std::move(result); });
    // Every sink bounds a publication by its own timeout (SinkOptions::timeout_ms), so this ends.
    while (!outcome) {
        sink.poll(100);
    }
    return std::move(*outcome);
}

} // namespace outbox
