// Event-type patterns: exact names or globs in which '*' matches any run of characters
// ("shopify.*", "*.created", "*"). No other character is special.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace outbox {

bool glob_match(std::string_view pattern, std::string_view text);
bool any_glob_match(const std::vector<std::string>& patterns, std::string_view text);

// The SQL LIKE pattern equivalent to a glob ('*' -> '%', with '%', '_' and '\' escaped), for
// claiming only subscribed event types in the database.
std::string glob_to_like(std::string_view pattern);

} // namespace outbox
