#include "common/glob.h"

#include "common/check.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace outbox {

namespace {

// A glob seen from outside: the literal text before its first star and after its last one.
struct GlobShape {
    bool has_star = false;
    std::string_view prefix; // the whole pattern when it has no star
    std::string_view suffix;
    std::string_view middle; // from the first star to the last, both included
};

GlobShape shape_of(std::string_view pattern) {
    GlobShape shape;
    const size_t first = pattern.find('*');
    if (first == std::string_view::npos) {
        shape.prefix = pattern;
        shape.suffix = pattern;
        return shape;
    }
    const size_t last = pattern.rfind('*');
    shape.has_star = true;
    shape.prefix = pattern.substr(0, first);
    shape.suffix = pattern.substr(last + 1);
    shape.middle = pattern.substr(first, last - first + 1);
    return shape;
}

bool agree_as_prefixes(std::string_view a, std::string_view b) {
    const size_t n = std::min(a.size(), b.size());
    return a.substr(0, n) == b.substr(0, n);
}

bool agree_as_suffixes(std::string_view a, std::string_view b) {
    const size_t n = std::min(a.size(), b.size());
    return a.substr(a.size() - n) == b.substr(b.size() - n);
}

void append_literals(std::string& out, std::string_view pattern) {
    for (const char c : pattern) {
        if (c != '*') {
            out += c;
        }
    }
}

// The text of globs_overlap's argument, for two globs known to overlap: the longer prefix, the
// literals between a's stars, those between b's, and the longer suffix. a's first star absorbs
// the rest of the longer prefix, its last star b's literals and the start of the longer suffix;
// b's stars do the same the other way round.
std::string example_from_shapes(std::string_view a, std::string_view b) {
    const GlobShape sa = shape_of(a);
    const GlobShape sb = shape_of(b);
    if (!sa.has_star) {
        return std::string(a);
    }
    if (!sb.has_star) {
        return std::string(b);
    }
    std::string text(sa.prefix.size() >= sb.prefix.size() ? sa.prefix : sb.prefix);
    append_literals(text, sa.middle);
    append_literals(text, sb.middle);
    text += sa.suffix.size() >= sb.suffix.size() ? sa.suffix : sb.suffix;
    return text;
}

// One step of a text through both patterns at once, from state (i, j): i bytes of a and j bytes
// of b consumed.
struct Move {
    size_t i = 0;
    size_t j = 0;
    bool emits = false; // whether the step adds a character to the text
    char character = 0;
};

// The steps possible from (i, j), in a fixed order of preference: two equal literals consume one
// character; a star stops absorbing (for free); a star absorbs the other side's literal. A star
// absorbing a character that the other side's star absorbs too is left out: it never shortens a
// text, and without it every step advances i or j.
size_t moves_from(std::string_view a, std::string_view b, size_t i, size_t j, Move out[5]) {
    const bool a_star = i < a.size() && a[i] == '*';
    const bool b_star = j < b.size() && b[j] == '*';
    const bool a_literal = i < a.size() && !a_star;
    const bool b_literal = j < b.size() && !b_star;
    size_t count = 0;
    if (a_literal && b_literal && a[i] == b[j]) {
        out[count++] = {i + 1, j + 1, true, a[i]};
    }
    if (a_star) {
        out[count++] = {i + 1, j, false, 0};
    }
    if (b_star) {
        out[count++] = {i, j + 1, false, 0};
    }
    if (a_star && b_literal) {
        out[count++] = {i, j + 1, true, b[j]};
    }
    if (b_star && a_literal) {
        out[count++] = {i + 1, j, true, a[i]};
    }
    return count;
}

// The dynamic programme of glob_common_match: shortest(i, j) is the length of the shortest text
// that both a[i..] and b[j..] match, or kNone. Since every move advances i or j, the table fills
// from the end; the text is then spelled by walking from (0, 0) along moves that keep the length.
std::optional<std::string> shortest_common_match(std::string_view a, std::string_view b) {
    constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
    const size_t width = b.size() + 1;
    std::vector<uint32_t> shortest((a.size() + 1) * width, kNone);
    const auto at = [&](size_t i, size_t j) -> uint32_t& {
        return shortest[i * width + j];
    };
    const auto length_after = [&](const Move& move) {
        const uint32_t rest = at(move.i, move.j);
        return rest == kNone ? kNone : rest + (move.emits ? 1 : 0);
    };
    Move moves[5];
    at(a.size(), b.size()) = 0;
    for (size_t i = a.size() + 1; i-- > 0;) {
        for (size_t j = b.size() + 1; j-- > 0;) {
            const size_t count = moves_from(a, b, i, j, moves);
            for (size_t k = 0; k < count; ++k) {
                at(i, j) = std::min(at(i, j), length_after(moves[k]));
            }
        }
    }
    if (at(0, 0) == kNone) {
        return std::nullopt;
    }
    std::string text;
    text.reserve(at(0, 0));
    size_t i = 0, j = 0;
    while (i < a.size() || j < b.size()) {
        const size_t count = moves_from(a, b, i, j, moves);
        size_t k = 0;
        while (k < count && length_after(moves[k]) != at(i, j)) {
            ++k;
        }
        // The table took its value from one of these moves.
        OUTBOX_CHECK(k < count);
        if (moves[k].emits) {
            text += moves[k].character;
        }
        i = moves[k].i;
        j = moves[k].j;
    }
    return text;
}

} // namespace

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

bool globs_overlap(std::string_view a, std::string_view b) {
    const GlobShape sa = shape_of(a);
    const GlobShape sb = shape_of(b);
    if (!sa.has_star) {
        return glob_match(b, a);
    }
    if (!sb.has_star) {
        return glob_match(a, b);
    }
    return agree_as_prefixes(sa.prefix, sb.prefix) && agree_as_suffixes(sa.suffix, sb.suffix);
}

std::optional<std::string> glob_common_match(std::string_view a, std::string_view b,
                                             size_t max_cells) {
    // Compared by division, so that the product cannot overflow.
    if (b.size() + 1 <= max_cells / (a.size() + 1)) {
        return shortest_common_match(a, b);
    }
    if (!globs_overlap(a, b)) {
        return std::nullopt;
    }
    return example_from_shapes(a, b);
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
