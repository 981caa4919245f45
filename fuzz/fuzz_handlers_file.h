// Fuzz entry for the handlers file parser (worker/handlers_file.h). fuzz/fuzz_handlers_file.cpp
// hands it libFuzzer's inputs; tests/unit/fuzz_regressions_test.cpp replays saved inputs.
//
// The input is the file's text. ${NAME} references in header values resolve against a fixed fake
// environment, never the real one, so that a run does not depend on the machine and the fuzzer
// can reach both the set and the unset case.
#pragma once

#include "common/config.h"
#include "common/glob.h"
#include "common/protocol.h"
#include "fuzz/fuzz_check.h"
#include "worker/handlers_file.h"

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace outbox::fuzz {

inline constexpr long kHandlersFileDefaultTimeoutMs = 30000;
// With a directory, so that the default names' use of the basename is exercised.
inline constexpr const char* kHandlersFileOrigin = "/etc/outbox/fuzz.json";

inline const EnvLookup& handlers_file_environment() {
    // The values include the ones a header must refuse after expansion (line breaks) and an empty
    // one, which is set and therefore valid.
    static const std::map<std::string, std::string> variables = {
        {"TOKEN", "s3cret-token"},      {"HOST", "hooks.example.com"}, {"EMPTY", ""},
        {"CRLF", "a\r\nInjected: yes"}, {"LF", "line\nbreak"},         {"_UNDERSCORE_1", "x"},
    };
    static const EnvLookup lookup = [](const char* name) -> std::optional<std::string> {
        const auto it = variables.find(name);
        if (it == variables.end()) {
            return std::nullopt;
        }
        return it->second;
    };
    return lookup;
}

inline void fuzz_handlers_file(std::string_view input) {
    const std::string origin = kHandlersFileOrigin;
    const HandlersFileResult result = parse_handlers_json(
        input, origin, kHandlersFileDefaultTimeoutMs, handlers_file_environment());

    if (!result.subscribers) {
        OUTBOX_FUZZ_CHECK(result.error.starts_with(origin + ": "),
                          "a handlers file error does not start with the file's name");
        // The header's contract: one line, whatever the file holds, so that a log line or
        // `check-config` output cannot be split or forged by the file's content.
        OUTBOX_FUZZ_CHECK(result.error.find_first_of("\r\n") == std::string::npos,
                          "a handlers file error spans several lines");
        return;
    }
    OUTBOX_FUZZ_CHECK(result.error.empty(), "a handlers file succeeded with an error");
    OUTBOX_FUZZ_CHECK(!result.subscribers->empty(),
                      "a handlers file succeeded without subscribers");

    std::set<std::string> names;
    const std::vector<Subscriber>& subscribers = *result.subscribers;
    for (size_t second = 0; second < subscribers.size(); ++second) {
        for (size_t first = 0; first < second; ++first) {
            const bool both_named = subscribers[first].name_given && subscribers[second].name_given;
            for (const std::string& a : subscribers[first].patterns) {
                for (const std::string& b : subscribers[second].patterns) {
                    // The two overlap tests must agree, and their example must match both.
                    const bool overlap = globs_overlap(a, b);
                    const std::optional<std::string> example = glob_common_match(a, b);
                    OUTBOX_FUZZ_CHECK(overlap == example.has_value(),
                                      "globs_overlap and glob_common_match disagree");
                    OUTBOX_FUZZ_CHECK(!example ||
                                          (glob_match(a, *example) && glob_match(b, *example)),
                                      "glob_common_match's example does not match both");
                    // A pattern matches its own text (a star may stand for itself), so a pattern
                    // matching the other's text is an overlap: only named subscribers may have it.
                    OUTBOX_FUZZ_CHECK(both_named || !overlap, "unnamed subscribers overlap");
                    OUTBOX_FUZZ_CHECK(both_named || (!glob_match(a, b) && !glob_match(b, a)),
                                      "unnamed subscribers share an event type");
                }
            }
        }
    }
    for (const Subscriber& subscriber : *result.subscribers) {
        // An event records names as RESULT carries them; a name must survive that unchanged.
        OUTBOX_FUZZ_CHECK(!subscriber.name_given ||
                              bounded_error(subscriber.name, kMaxSubscriberNameBytes) ==
                                  subscriber.name,
                          "a given name would change on its way into an event's record");
        OUTBOX_FUZZ_CHECK(!subscriber.name.empty(), "a subscriber without a name");
        OUTBOX_FUZZ_CHECK(subscriber.handler != nullptr, "a subscriber without a handler");
        OUTBOX_FUZZ_CHECK(
            subscriber.timeout_ms == kHandlersFileDefaultTimeoutMs ||
                (subscriber.timeout_ms >= 1 && subscriber.timeout_ms <= kMaxHandlerTimeoutMs),
            "a subscriber's timeout is out of range");
        OUTBOX_FUZZ_CHECK(!subscriber.patterns.empty(), "a subscriber without event types");
        // Names key the logs and the per-subscriber metrics: two subscribers sharing one would
        // merge their numbers.
        OUTBOX_FUZZ_CHECK(names.insert(subscriber.name).second, "two subscribers share a name");
        for (const std::string& pattern : subscriber.patterns) {
            OUTBOX_FUZZ_CHECK(!pattern.empty(), "an empty event type pattern");
            // Every '*' may stand for itself, so a pattern always matches its own text; this
            // also runs the matcher on whatever patterns the fuzzer invents.
            OUTBOX_FUZZ_CHECK(subscriber.matches(pattern), "a pattern does not match itself");
            (void)subscriber.matches("shop.order.created");
        }
    }
}

} // namespace outbox::fuzz
