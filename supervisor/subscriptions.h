// The subscriptions of one supervisor: the handlers registered in code plus those of the handlers
// file (OUTBOX_HANDLERS), what the claim needs to know of them (the LIKE patterns of the subscribed
// event types) and the per-event time limit. SIGHUP reloads the file; a file that no longer loads
// leaves everything as it was.
#pragma once

#include "common/config.h"
#include "worker/subscriber.h"

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace outbox {

class Subscriptions {
  public:
    Subscriptions(const Config& config, std::vector<Subscriber> code_subscribers);

    // Loads (or reloads) the handlers file. On failure returns the reason and changes nothing.
    [[nodiscard]] std::optional<std::string> load();

    // The current subscribers, shared with the handler-process pool (which forks with them).
    const std::shared_ptr<const std::vector<Subscriber>>& subscribers() const {
        return subscribers_;
    }
    // LIKE patterns of every subscribed type as a PostgreSQL array literal, or nullopt when some
    // subscriber takes every type. The reference stays valid; its value changes on reload.
    const std::optional<std::string>& like_patterns() const { return like_patterns_; }

    // The time limit of one event of this type: matching subscribers run one after another in the
    // same process, so the event may take the sum of their limits.
    long timeout_for(const std::string& event_type);

  private:
    const Config& config_;
    std::vector<Subscriber> code_subscribers_;
    std::shared_ptr<const std::vector<Subscriber>> subscribers_;
    std::optional<std::string> like_patterns_;
    std::unordered_map<std::string, long> timeout_cache_;
};

} // namespace outbox
