// The command line's own small argument parser: long options only, as `--name value` or
// `--name=value`, flags as `--name`, positionals anywhere, `--` ends the options, and `-h` is
// `--help`. It knows nothing of the commands; each passes its table of options.
#pragma once

#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace outbox::cli {

struct OptionSpec {
    const char* name; // without the dashes: "type" for --type
    bool takes_value; // --type T; false for flags such as --json
};

struct ParsedArgs {
    bool help = false; // --help or -h was given: print the help, ignore the rest
    std::map<std::string, std::string, std::less<>> values; // options with a value
    std::vector<std::string> flags;                         // flags present, in order
    std::vector<std::string> positionals;

    bool has(std::string_view name) const;
    std::optional<std::string> value(std::string_view name) const;
};

struct ParseResult {
    ParsedArgs args;
    std::string error; // empty on success: "unknown option --x", "--type needs a value", ...
};

// Parses `args` (the words after the subcommand). An option given twice is an error, so that a
// script's mistake is not resolved silently in favour of either value. Positionals are an error
// unless `allow_positionals`.
ParseResult parse_args(const std::vector<std::string>& args,
                       std::initializer_list<OptionSpec> specs, bool allow_positionals = false);

// A whole decimal integer within [min, max]; nullopt for anything else (sign, spaces, garbage).
std::optional<long long> parse_integer(std::string_view text, long long min, long long max);

// A duration for `dlq purge --older-than`: a positive integer and one unit, s, m, h, d or w
// ("90s", "30m", "12h", "7d", "2w"). In seconds; nullopt when malformed or beyond 100 years.
std::optional<long long> parse_duration_seconds(std::string_view text);

} // namespace outbox::cli
