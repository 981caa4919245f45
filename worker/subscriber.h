// A subscriber as the handler process runs it: patterns, a handler and its time limit. Code
// subscriptions (outbox::Subscription) and handlers-file entries both become Subscribers.
#pragma once

#include "common/glob.h"
#include <outbox/outbox.h>

#include <string>
#include <vector>

namespace outbox {

struct Subscriber {
    std::string name;                  // "code#0", "handlers.json#2 (exec)", ...
    std::vector<std::string> patterns; // event-type globs
    long timeout_ms = 0;               // resolved: never 0 once built
    Handler handler;

    bool matches(std::string_view event_type) const { return any_glob_match(patterns, event_type); }
};

} // namespace outbox
