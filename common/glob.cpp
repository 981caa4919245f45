#include "common/glob.h"

namespace outbox {

bool glob_match(std::string_view pattern, std::string_view text) {
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    size_t p = 0, t = 0, star = std::string_view::npos, resume = 0;
    while (t < text.size()) {
        if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            resume = t;
        } else if (p < pattern.size() && pattern[p] == text[t]) {
            ++p;
            ++t;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            t = ++resume;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') {
        ++p;
    }
    return p == pattern.size();
}

bool any_glob_match(const std::vector<std::string>& patterns, std::string_view text) {
    for (const auto& pattern : patterns) {
        if (glob_match(pattern, text)) {
            return true;
        }
    }
    return false;
}

std::string glob_to_like(std::string_view pattern) {
    std::string like;
    like.reserve(pattern.size() + 4);
    for (char c : pattern) {
        switch (c) {
        case '*':
            like += '%';
            break;
        case '%':
        case '_':
        case '\\':
            like += '\\';
            like += c;
            break;
        default:
            like += c;
        }
    }
    return like;
}

} // namespace outbox
