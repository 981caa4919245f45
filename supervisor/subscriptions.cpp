#include "supervisor/subscriptions.h"

#include "common/glob.h"
#include "common/pg.h"
#include "worker/handlers_file.h"

#include <set>
#include <string_view>

namespace outbox {

namespace {

// Bounds the timeout cache by the number of distinct types seen; beyond it, computed each time.
constexpr size_t kTimeoutCacheLimit = 10000;

} // namespace

Subscriptions::Subscriptions(const Config& config, std::vector<Subscriber> code_subscribers)
    : config_(config), code_subscribers_(std::move(code_subscribers)) {}

std::optional<std::string> Subscriptions::load() {
    auto all = std::make_shared<std::vector<Subscriber>>(code_subscribers_);
    if (!config_.handlers_path.empty()) {
        HandlersFileResult loaded =
            load_handlers_file(config_.handlers_path, config_.handler_timeout_ms);
        if (!loaded.subscribers) {
            return loaded.error;
        }
        for (auto& s : *loaded.subscribers) {
            all->push_back(std::move(s));
        }
    }
    if (all->empty()) {
        return std::string(
            "no handlers: set OUTBOX_HANDLERS to a handlers file (see examples/handlers.json) "
            "or register subscribers in code with outbox::Worker::subscribe()");
    }
    // A subscriber's name is its identity in an event's record of which subscribers succeeded
    // (SPEC 2), across code and file alike: names must be unique, and subscribers that can share
    // an event type must have names of their own rather than positions.
    std::set<std::string_view> names;
    for (const auto& s : *all) {
        if (!names.insert(s.name).second) {
            return "two subscribers are named \"" + s.name +
                   "\" (in code or in the handlers file): names must be unique, because an "
                   "event records which subscribers succeeded by name";
        }
    }
    if (auto overlap = find_unnamed_overlap(*all)) {
        const Subscriber& a = (*all)[overlap->first];
        const Subscriber& b = (*all)[overlap->second];
        return "subscribers " + a.name + " and " + b.name + " can both match event type \"" +
               overlap->example + "\" (by \"" + overlap->first_pattern + "\" and \"" +
               overlap->second_pattern +
               "\"), so each needs a name of its own (the handlers file's \"name\", or "
               "Subscription::name in code)";
    }
    std::vector<std::string> likes;
    bool everything = false;
    for (const auto& s : *all) {
        for (const auto& p : s.patterns) {
            everything = everything || p == "*";
            likes.push_back(glob_to_like(p));
        }
    }
    like_patterns_ = everything ? std::nullopt : std::optional<std::string>(pg_text_array(likes));
    subscribers_ = std::move(all);
    timeout_cache_.clear();
    return std::nullopt;
}

long Subscriptions::timeout_for(const std::string& event_type) {
    auto it = timeout_cache_.find(event_type);
    if (it != timeout_cache_.end()) {
        return it->second;
    }
    long total = 0;
    for (const auto& s : *subscribers_) {
        if (s.matches(event_type)) {
            total += s.timeout_ms;
        }
    }
    if (total == 0) {
        total = config_.handler_timeout_ms;
    }
    if (timeout_cache_.size() < kTimeoutCacheLimit) {
        timeout_cache_.emplace(event_type, total);
    }
    return total;
}

} // namespace outbox
