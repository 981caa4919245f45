// Event-type globs (SPEC 2: exact names or globs with '*'). The handler process decides with
// glob_match which subscribers run; the supervisor claims with the LIKE patterns of glob_to_like.
// Here the matcher is compared with an independent reference over every short pattern and text of
// an alphabet that holds all the characters special to either side, and glob_to_like's output is
// pinned down. tests/integration/glob_like_test.cpp checks that PostgreSQL's LIKE agrees.
// globs_overlap and glob_common_match, which decide whether two subscribers can share an event
// type, are compared with a brute-force search over every pair of short patterns.
#include "common/glob.h"

#include <catch2/catch.hpp>

#include <bitset>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using outbox::any_glob_match;
using outbox::glob_common_match;
using outbox::glob_match;
using outbox::glob_to_like;
using outbox::globs_overlap;

// The textbook dynamic programme: at(i, j) says whether the first i pattern bytes match the
// first j text bytes. Quadratic and obviously right, unlike the backtracking matcher under test.
bool reference_glob_match(std::string_view pattern, std::string_view text) {
    const size_t width = text.size() + 1;
    std::vector<char> matches((pattern.size() + 1) * width, 0);
    auto at = [&](size_t i, size_t j) -> char& {
        return matches[i * width + j];
    };
    at(0, 0) = 1;
    for (size_t i = 1; i <= pattern.size(); ++i) {
        for (size_t j = 0; j <= text.size(); ++j) {
            if (pattern[i - 1] == '*') {
                // The star matches nothing, or one more byte beyond what it already matched.
                at(i, j) = at(i - 1, j) || (j > 0 && at(i, j - 1));
            } else {
                at(i, j) = j > 0 && at(i - 1, j - 1) && pattern[i - 1] == text[j - 1];
            }
        }
    }
    return at(pattern.size(), text.size()) != 0;
}

// Every string of length 0 to max_length over `alphabet`.
std::vector<std::string> all_strings(std::string_view alphabet, size_t max_length) {
    std::vector<std::string> out{""};
    size_t level_begin = 0;
    for (size_t length = 1; length <= max_length; ++length) {
        size_t level_end = out.size();
        for (size_t i = level_begin; i < level_end; ++i) {
            for (char c : alphabet) {
                out.push_back(out[i] + c);
            }
        }
        level_begin = level_end;
    }
    return out;
}

} // namespace

TEST_CASE("glob_match: exact names, stars and characters that are special elsewhere", "[glob]") {
    struct Case {
        const char* pattern;
        const char* text;
        bool match;
    };
    const Case cases[] = {
        {"shopify.order.created", "shopify.order.created", true},
        {"shopify.order.created", "shopify.order.create", false},
        {"shopify.order.created", "shopify.order.createdX", false},
        {"shopify.order.created", "Shopify.order.created", false}, // case matters
        {"shopify.*", "shopify.order.created", true},
        {"shopify.*", "shopify.", true},
        {"shopify.*", "shopify", false},
        {"shopify.*", "shopifyXorder", false}, // '.' is a plain character, not "any"
        {"shopify.*", "xshopify.order", false},
        {"*", "", true},
        {"*", "anything at all", true},
        {"**", "", true},
        {"", "", true},
        {"", "a", false},
        {"a", "", false},
        {"*.created", "order.created", true},
        {"*.created", ".created", true},
        {"*.created", "order.created.v2", false},
        {"a*b*", "ab", true},
        {"a*b*", "axxbyy", true},
        {"a*b*", "ba", false},
        {"a*b*", "a", false},
        {"*a*a*", "aa", true},
        {"*a*a*", "xaxxay", true},
        {"*a*a*", "xax", false},
        {"a*a", "aaa", true},
        {"a*a", "a", false},
        {"*ab", "aab", true}, // needs backtracking past the first 'a'
        {"*aab", "aaab", true},
        {"shop*.*.created", "shopify.order.created", true},
        {"shop*.*.created", "shop.x.created", true},
        {"shop*.*.created", "shopify.created", false},
        // LIKE's wildcards and escape are ordinary characters in a glob.
        {"100%", "100%", true},
        {"100%", "1000", false},
        {"100%", "100", false},
        {"a_b", "a_b", true},
        {"a_b", "axb", false},
        {"%", "%", true},
        {"%", "x", false},
        {"%", "", false},
        {"_", "_", true},
        {"_", "x", false},
        {"a\\b", "a\\b", true},
        {"a\\b", "ab", false},
        {"\\", "\\", true},
        {"\\\\", "\\", false},
        {"*\\", "dir\\", true},
        // A backslash does not escape the star: "a\*" is "a\" followed by anything.
        {"a\\*", "a\\", true},
        {"a\\*", "a\\xyz", true},
        {"a\\*", "a*", false},
        // A star stands for any run, including a literal star.
        {"a*", "a*", true},
        {"a*b", "a*b", true},
        // Non-ASCII names: bytes of UTF-8, so a star never splits a character of a valid name.
        {"é*", "événement.créé", true},
        {"*é", "événement.créé", true},
        {"*é", "événement.cré", true},
        {"*é", "e", false},
        {"日本.*", "日本.イベント", true},
        {"*.イベント", "日本.イベント", true},
        {"*.イベント", "日本.イベン", false},
        {"ü", "u", false},
    };
    for (const auto& c : cases) {
        INFO("pattern \"" << c.pattern << "\", text \"" << c.text << "\"");
        CHECK(glob_match(c.pattern, c.text) == c.match);
        CHECK(reference_glob_match(c.pattern, c.text) == c.match);
    }
}

TEST_CASE("glob_match agrees with a reference on every short pattern and text", "[glob]") {
    // Both sides draw on the star and LIKE's special characters: an event type may contain any of
    // them, a star included.
    const auto patterns = all_strings("ab*%_\\", 4);
    const auto texts = all_strings("ab*%_\\", 4);
    long compared = 0;
    long matched = 0;
    for (const auto& pattern : patterns) {
        for (const auto& text : texts) {
            bool expected = reference_glob_match(pattern, text);
            if (glob_match(pattern, text) != expected) {
                FAIL("pattern \"" << pattern << "\", text \"" << text << "\": expected "
                                  << (expected ? "a match" : "no match"));
            }
            ++compared;
            matched += expected ? 1 : 0;
        }
    }
    // The comparison means something only if both outcomes occur often.
    CHECK(compared == 1555L * 1555L);
    CHECK(matched > 10000);
    CHECK(compared - matched > 10000);
}

TEST_CASE("glob_match is linear enough for hostile patterns", "[glob]") {
    // Naive recursive matchers take exponential time here; the backtracking one is quadratic at
    // worst, which for these sizes is instant.
    std::string pattern;
    for (int i = 0; i < 50; ++i) {
        pattern += "a*";
    }
    pattern += "b";
    std::string text(2000, 'a');
    CHECK_FALSE(glob_match(pattern, text));
    CHECK(glob_match(pattern, text + "b"));
}

TEST_CASE("any_glob_match: any of the patterns, none for an empty list", "[glob]") {
    const std::vector<std::string> patterns{"shopify.*", "*.created", "exact"};
    CHECK(any_glob_match(patterns, "shopify.order"));
    CHECK(any_glob_match(patterns, "billing.created"));
    CHECK(any_glob_match(patterns, "exact"));
    CHECK_FALSE(any_glob_match(patterns, "exactly"));
    CHECK_FALSE(any_glob_match(patterns, "billing.deleted"));
    CHECK_FALSE(any_glob_match({}, "anything"));
    CHECK_FALSE(any_glob_match({}, ""));
}

TEST_CASE("glob_to_like: star becomes %, LIKE's specials are escaped with a backslash", "[glob]") {
    CHECK(glob_to_like("") == "");
    CHECK(glob_to_like("*") == "%");
    CHECK(glob_to_like("**") == "%%");
    CHECK(glob_to_like("shopify.order.created") == "shopify.order.created");
    CHECK(glob_to_like("shopify.*") == "shopify.%");
    CHECK(glob_to_like("a*b*") == "a%b%");
    CHECK(glob_to_like("100%") == "100\\%");
    CHECK(glob_to_like("a_b") == "a\\_b");
    CHECK(glob_to_like("a\\b") == "a\\\\b");
    CHECK(glob_to_like("\\") == "\\\\");
    // The backslash before a star is a literal backslash, then the star's '%'.
    CHECK(glob_to_like("a\\*") == "a\\\\%");
    CHECK(glob_to_like("%_\\*") == "\\%\\_\\\\%");
    CHECK(glob_to_like("日本.*") == "日本.%");
}

TEST_CASE("globs_overlap and glob_common_match on event types", "[glob]") {
    struct Case {
        const char* a;
        const char* b;
        std::optional<std::string> shortest; // nullopt: no event type matches both
    };
    const Case cases[] = {
        {"order.created", "order.created", "order.created"},
        {"order.created", "order.paid", std::nullopt},
        {"order.*", "order.created", "order.created"},
        {"order.*", "invoice.*", std::nullopt},
        {"order.*", "*.created", "order.created"},
        {"order.*", "*", "order."},
        {"*", "*", ""},
        {"*", "**", ""},
        {"*.created", "*.paid", std::nullopt},
        {"*.created", "order.*.created", "order..created"},
        {"shop*", "shopify.*", "shopify."},
        {"shop.*", "shopify.*", std::nullopt}, // "shop." is not a prefix of "shopify."
        {"a*b", "b*a", std::nullopt},
        {"a*", "*a", "a"},
        {"ab*", "*ba", "aba"},
        {"*ab*", "*ba*", "aba"},
        {"a*a*a", "aa", std::nullopt},
        {"a*a*a", "aaa", "aaa"},
        {"a*a*a", "*aaaa*", "aaaa"},
        {"x*y", "x*z", std::nullopt},
        {"x*y*z", "*y*", "xyz"},
        {"100%", "100*", "100%"}, // LIKE's specials are ordinary here
        {"a\\*", "a\\b", "a\\b"}, // and so is the backslash
        {"日本.*", "*.イベント", "日本.イベント"},
    };
    for (const Case& c : cases) {
        INFO("\"" << c.a << "\" and \"" << c.b << "\"");
        CHECK(globs_overlap(c.a, c.b) == c.shortest.has_value());
        CHECK(globs_overlap(c.b, c.a) == c.shortest.has_value());
        CHECK(glob_common_match(c.a, c.b) == c.shortest);
        if (c.shortest) {
            // Whatever the order of the patterns, the example is as short and matches both.
            const std::optional<std::string> swapped = glob_common_match(c.b, c.a);
            REQUIRE(swapped.has_value());
            CHECK(swapped->size() == c.shortest->size());
            CHECK(glob_match(c.a, *swapped));
            CHECK(glob_match(c.b, *swapped));
        }
    }
}

TEST_CASE("globs_overlap and glob_common_match agree with brute force on short patterns",
          "[glob]") {
    // Every pattern of up to 5 characters over "ab*", every text of up to 10 over "ab". A text
    // both patterns match can be made to use only their literals and no more characters than they
    // hold: a character that both sides' stars absorb can be dropped, and any other one is some
    // pattern's literal. So the texts below hold a common match whenever one exists, and its
    // shortest.
    const auto patterns = all_strings("ab*", 5);
    const auto texts = all_strings("ab", 10);
    REQUIRE(texts.size() <= 2048);
    std::vector<std::bitset<2048>> matched(patterns.size());
    for (size_t p = 0; p < patterns.size(); ++p) {
        for (size_t t = 0; t < texts.size(); ++t) {
            matched[p][t] = reference_glob_match(patterns[p], texts[t]);
        }
    }
    long pairs = 0;
    long overlapping = 0;
    for (size_t p = 0; p < patterns.size(); ++p) {
        for (size_t q = 0; q < patterns.size(); ++q) {
            const std::string& a = patterns[p];
            const std::string& b = patterns[q];
            const std::bitset<2048> both = matched[p] & matched[q];
            // all_strings lists texts by length, so the first common one is a shortest.
            std::optional<size_t> shortest;
            for (size_t t = 0; t < texts.size() && both.any(); ++t) {
                if (both[t]) {
                    shortest = texts[t].size();
                    break;
                }
            }
            ++pairs;
            overlapping += shortest ? 1 : 0;
            if (globs_overlap(a, b) != shortest.has_value()) {
                FAIL("globs_overlap(\"" << a << "\", \"" << b << "\") is wrong");
            }
            const std::optional<std::string> example = glob_common_match(a, b);
            if (example.has_value() != shortest.has_value()) {
                FAIL("glob_common_match(\"" << a << "\", \"" << b
                                            << "\") is wrong about existence");
            }
            if (example && (!reference_glob_match(a, *example) ||
                            !reference_glob_match(b, *example) || example->size() != *shortest)) {
                FAIL("glob_common_match(\"" << a << "\", \"" << b << "\") gave \"" << *example
                                            << "\", expected a common match of length "
                                            << *shortest);
            }
            // Without room for the dynamic programme, the example comes from the patterns' shape.
            const std::optional<std::string> shaped = glob_common_match(a, b, 0);
            if (shaped.has_value() != shortest.has_value() ||
                (shaped &&
                 (!reference_glob_match(a, *shaped) || !reference_glob_match(b, *shaped)))) {
                FAIL("glob_common_match(\"" << a << "\", \"" << b << "\", 0) gave \""
                                            << shaped.value_or("(none)") << "\"");
            }
        }
    }
    CHECK(pairs == 364L * 364L);
    // Both answers must be common for the comparison to mean something.
    CHECK(overlapping > 20000);
    CHECK(pairs - overlapping > 20000);
}

TEST_CASE("glob_common_match on patterns too long for the dynamic programme", "[glob]") {
    const std::string xs(3000, 'x');
    const std::string ys(3000, 'y');
    REQUIRE((xs.size() + 2) * (ys.size() + 2) > outbox::kGlobOverlapMaxCells);

    const std::optional<std::string> example = glob_common_match(xs + "*", "*" + ys);
    REQUIRE(example.has_value());
    CHECK(*example == xs + ys);
    CHECK(glob_match(xs + "*", *example));
    CHECK(glob_match("*" + ys, *example));

    const std::string middle = xs + "*m*" + ys + "*";
    const std::optional<std::string> with_middle = glob_common_match(middle, "*" + ys + "*n*");
    REQUIRE(with_middle.has_value());
    CHECK(glob_match(middle, *with_middle));
    CHECK(glob_match("*" + ys + "*n*", *with_middle));

    CHECK_FALSE(glob_common_match(xs + "*", ys + "*").has_value());
    CHECK_FALSE(glob_common_match("*" + xs, "*" + ys).has_value());
    CHECK(glob_common_match(xs + ys, xs + "*") == xs + ys);
    CHECK(glob_common_match(xs, xs) == xs);
    CHECK_FALSE(glob_common_match(xs, xs + "z").has_value());
    CHECK_FALSE(globs_overlap(xs + "*", ys + "*"));
    CHECK(globs_overlap(xs + "*", "*" + ys));
}
