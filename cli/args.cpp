#include "cli/args.h"

#include <algorithm>
#include <charconv>

namespace outbox::cli {

bool ParsedArgs::has(std::string_view name) const {
    return values.find(name) != values.end() ||
           std::find(flags.begin(), flags.end(), name) != flags.end();
}

std::optional<std::string> ParsedArgs::value(std::string_view name) const {
    auto it = values.find(name);
    if (it == values.end()) {
        return std::nullopt;
    }
    return it->second;
}

ParseResult parse_args(const std::vector<std::string>& args,
                       std::initializer_list<OptionSpec> specs, bool allow_positionals) {
    ParseResult out;
    auto fail = [&](std::string why) {
        out.error = std::move(why);
        return out;
    };
    bool options_ended = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& word = args[i];
        if (options_ended || word == "-" || word.empty() || word[0] != '-') {
            if (!allow_positionals) {
                return fail("unexpected argument \"" + word + "\"");
            }
            out.args.positionals.push_back(word);
            continue;
        }
        if (word == "--") {
            options_ended = true;
            continue;
        }
        if (word == "-h" || word == "--help") {
            out.args.help = true;
            return out;
        }
        if (word.rfind("--", 0) != 0) {
            return fail("unknown option " + word + " (options are long: --name)");
        }
        std::string name = word.substr(2);
        std::optional<std::string> inline_value;
        if (size_t eq = name.find('='); eq != std::string::npos) {
            inline_value = name.substr(eq + 1);
            name.resize(eq);
        }
        const OptionSpec* spec = nullptr;
        for (const auto& s : specs) {
            if (name == s.name) {
                spec = &s;
            }
        }
        if (spec == nullptr) {
            return fail("unknown option --" + name);
        }
        if (out.args.has(name)) {
            return fail("--" + name + " given more than once");
        }
        if (!spec->takes_value) {
            if (inline_value) {
                return fail("--" + name + " takes no value");
            }
            out.args.flags.push_back(name);
            continue;
        }
        if (!inline_value) {
            if (i + 1 >= args.size()) {
                return fail("--" + name + " needs a value");
            }
            inline_value = args[++i];
        }
        out.args.values.emplace(name, *inline_value);
    }
    return out;
}

std::optional<long long> parse_integer(std::string_view text, long long min, long long max) {
    long long value = 0;
    const char* first = text.data();
    const char* last = text.data() + text.size();
    if (text.empty() || text[0] == '+') {
        return std::nullopt;
    }
    auto [ptr, ec] = std::from_chars(first, last, value);
    if (ec != std::errc() || ptr != last || value < min || value > max) {
        return std::nullopt;
    }
    return value;
}

std::optional<long long> parse_duration_seconds(std::string_view text) {
    if (text.size() < 2) {
        return std::nullopt;
    }
    long long unit = 0;
    switch (text.back()) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 3600;
        break;
    case 'd':
        unit = 86400;
        break;
    case 'w':
        unit = 7 * 86400;
        break;
    default:
        return std::nullopt;
    }
    constexpr long long kHundredYears = 100LL * 366 * 86400;
    auto count = parse_integer(text.substr(0, text.size() - 1), 1, kHundredYears / unit);
    if (!count) {
        return std::nullopt;
    }
    return *count * unit;
}

} // namespace outbox::cli
