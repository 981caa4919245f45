// A subscriber as the handler process runs it: patterns, a handler and its time limit. Code
// subscriptions (outbox::Subscription) and handlers-file entries both become Subscribers.
#pragma once

#include "common/glob.h"
#include "worker/sink.h"
#include <outbox/outbox.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace outbox {

struct Subscriber {
    // "code#0", "handlers.json#2 (exec)", "billing", ... The name is the subscriber's identity:
    // an event records the names of the subscribers that succeeded for it, and a later attempt
    // (a retry, or a retry from the DLQ) skips those (SPEC 2, "Several subscribers, one event").
    std::string name;
    // Whether the name was given (the handlers file's "name", Subscription::name) rather than
    // made up from the subscriber's position, which changes when subscribers are added or moved.
    bool name_given = false;
    std::vector<std::string> patterns; // event-type globs
    long timeout_ms = 0;               // resolved: never 0 once built
    // For exec, http, log and code subscribers, what runs the event. For a broker subscriber it
    // publishes and waits (publish_and_wait on a sink of its own); the handler process uses
    // `broker` instead, to keep many publications in flight.
    Handler handler;
    // Set for the broker kinds (worker/sink.h); shared by the copies that fork() hands over.
    std::shared_ptr<const BrokerSpec> broker;

    bool matches(std::string_view event_type) const { return any_glob_match(patterns, event_type); }
};

// Two subscribers that can both match one event type.
struct SubscriberOverlap {
    size_t first = 0;  // index of the earlier one
    size_t second = 0; // index of the later one
    std::string first_pattern;
    std::string second_pattern;
    std::string example; // an event type both patterns match (globs_overlap, glob_common_match)
};

// The rule that keeps subscriber names meaningful as identities: two subscribers that can match
// one event type must both have a given name, because an event of that type records which of them
// succeeded, and a made-up name would point at another subscriber once the list is reordered.
// (Given names must also be unique; that is checked where they are read.) Returns the pair that
// breaks the rule whose later subscriber comes first in the list, or nullopt. Pairs in which both
// names are given are not examined, so a list whose names are all given costs nothing; otherwise
// every pattern of one is compared with every pattern of the other, in time linear in their
// lengths (globs_overlap), and only the pair returned gets its example (glob_common_match).
[[nodiscard]] std::optional<SubscriberOverlap>
find_unnamed_overlap(const std::vector<Subscriber>& subscribers);

} // namespace outbox
