#include "worker/subscriber.h"

namespace outbox {

std::optional<SubscriberOverlap> find_unnamed_overlap(const std::vector<Subscriber>& subscribers) {
    for (size_t second = 1; second < subscribers.size(); ++second) {
        for (size_t first = 0; first < second; ++first) {
            if (subscribers[first].name_given && subscribers[second].name_given) {
                continue;
            }
            for (const std::string& a : subscribers[first].patterns) {
                for (const std::string& b : subscribers[second].patterns) {
                    if (!globs_overlap(a, b)) {
                        continue;
                    }
                    // globs_overlap decides cheaply; the example is computed once, for the error.
                    std::optional<std::string> example = glob_common_match(a, b);
                    return SubscriberOverlap{first, second, a, b, example.value_or(std::string())};
                }
            }
        }
    }
    return std::nullopt;
}

} // namespace outbox
