// Event-type patterns: exact names or globs in which '*' matches any run of characters
// ("shopify.*", "*.created", "*"). No other character is special.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace outbox {

bool glob_match(std::string_view pattern, std::string_view text);
bool any_glob_match(const std::vector<std::string>& patterns, std::string_view text);

// Whether some text (an event type) matches both globs. Exact, and linear in the patterns: two
// globs that both hold a star overlap exactly when their literal prefixes (before the first star)
// agree as far as the shorter goes and so do their literal suffixes (after the last star), since
// the stars can then absorb everything else; a glob without a star is a single text.
bool globs_overlap(std::string_view a, std::string_view b);

// Patterns whose (length + 1) products exceed this are not given to the dynamic programme below.
inline constexpr size_t kGlobOverlapMaxCells = size_t{1} << 20;

// A text that both globs match, or nullopt when there is none: an example for error messages.
// An exact dynamic programme over the two patterns (state: how much of each is consumed) finds the
// shortest such text, in time and memory proportional to (|a| + 1) × (|b| + 1). Above max_cells
// the example is built from the patterns' shape instead (globs_overlap's argument): still matched
// by both, not necessarily the shortest. The text is made of the patterns' literal characters only.
std::optional<std::string> glob_common_match(std::string_view a, std::string_view b,
                                             size_t max_cells = kGlobOverlapMaxCells);

// The SQL LIKE pattern equivalent to a glob ('*' -> '%', with '%', '_' and '\' escaped), for
// claiming only subscribed event types in the database.
std::string glob_to_like(std::string_view pattern);

} // namespace outbox
