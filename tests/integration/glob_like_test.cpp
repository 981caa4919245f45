// The two halves of event-type matching must agree, against a real PostgreSQL. A handler process
// runs a subscriber when glob_match(pattern, eventType) holds; the supervisor claims an event only
// when "eventType" LIKE ANY (glob_to_like(patterns)). Were LIKE wider than the glob, events would
// be claimed and then fail with "no subscriber matches"; were it narrower, events this instance
// subscribes to would never be claimed (and another deployment owning them could not tell).
//
// The same file proves that pg_text_array, in which those LIKE patterns (and every other list) are
// sent, reads back in PostgreSQL as exactly the values encoded.
#include "common/glob.h"
#include "common/pg.h"
#include "supervisor/claimed_event.h"
#include "supervisor/queries.h"
#include "tests/support/pg_fixture.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

using outbox::any_glob_match;
using outbox::glob_match;
using outbox::glob_to_like;
using outbox::pg_exec;
using outbox::pg_exec_params;
using outbox::pg_text_array;
using outbox::PgConn;
using outbox::PgResult;
using outbox::test::TestDatabase;

namespace {

// Patterns as an operator would write them, and ones built to trip LIKE: its wildcards '%' and '_',
// its escape '\' (alone, doubled, trailing, before a star), empty, and non-ASCII.
const std::vector<std::string> kPatterns{
    "",
    "*",
    "**",
    "shopify.*",
    "shopify.order.created",
    "*.created",
    "shop*.*.created",
    "a*b*",
    "*a*a*",
    "a*a",
    "*ab",
    "100%",
    "100*",
    "%",
    "%%",
    "_",
    "a_b",
    "a%b",
    "a\\b",
    "a\\*",
    "\\",
    "\\\\",
    "*\\",
    "\\%",
    "\\_",
    "a*%*",
    "*_*",
    "é*",
    "*é",
    "日本.*",
    "*.イベント",
    "🙂*",
};

// Event types, including every pattern's own text (which a star may also match literally).
std::vector<std::string> event_types() {
    std::vector<std::string> types{
        "",
        "shopify.order.created",
        "shopify.",
        "shopify",
        "Shopify.order.created",
        "shopifyXorder",
        "xshopify.order",
        "order.created",
        ".created",
        "order.created.v2",
        "shop.x.created",
        "ab",
        "axxbyy",
        "ba",
        "a",
        "aa",
        "aaa",
        "aab",
        "xaxxay",
        "100",
        "1000",
        "100x",
        "100%",
        "100%%",
        "axb",
        "a%b",
        "a_b",
        "a\\b",
        "a\\",
        "a\\xyz",
        "\\",
        "\\\\",
        "dir\\",
        "x",
        "%",
        "_",
        "événement.créé",
        "événement.cré",
        "e",
        "日本.イベント",
        "日本.イベン",
        "🙂",
        "🙂.x",
        "a*b",
        "*",
    };
    for (const auto& pattern : kPatterns) {
        types.push_back(pattern);
    }
    std::sort(types.begin(), types.end());
    types.erase(std::unique(types.begin(), types.end()), types.end());
    return types;
}

// Every concatenation of 0 to max_length of `tokens` (tokens may be several bytes, as "é").
std::vector<std::string> all_strings(const std::vector<std::string>& tokens, size_t max_length) {
    std::vector<std::string> out{""};
    size_t level_begin = 0;
    for (size_t length = 1; length <= max_length; ++length) {
        size_t level_end = out.size();
        for (size_t i = level_begin; i < level_end; ++i) {
            for (const auto& token : tokens) {
                out.push_back(out[i] + token);
            }
        }
        level_begin = level_end;
    }
    return out;
}

PgResult exec_ok(PGconn* conn, const char* sql,
                 const std::vector<std::optional<std::string>>& params = {}) {
    PgResult result = params.empty() ? pg_exec(conn, sql) : pg_exec_params(conn, sql, params);
    INFO(sql);
    REQUIRE(result.ok());
    return result;
}

bool postgres_like(PGconn* conn, const std::string& text, const std::string& like) {
    PgResult result = pg_exec_params(conn, "SELECT $1::text LIKE $2::text", {text, like});
    INFO("text \"" << text << "\", LIKE \"" << like << "\": " << result.error());
    REQUIRE(result.ok());
    REQUIRE(result.rows() == 1);
    return result.value(0, 0) == "t";
}

} // namespace

TEST_CASE("glob_like: PostgreSQL's LIKE of glob_to_like agrees with glob_match, case by case",
          "[glob]") {
    TestDatabase db;
    PgConn conn = db.connect();
    // The test cluster is UTF8, as production databases are; LIKE then compares characters, and
    // glob_match bytes, which agree because a valid UTF-8 pattern can only match at character
    // boundaries.
    REQUIRE(db.scalar("SHOW server_encoding") == "UTF8");

    const auto types = event_types();
    int matches = 0;
    int mismatches = 0;
    for (const auto& pattern : kPatterns) {
        const std::string like = glob_to_like(pattern);
        for (const auto& type : types) {
            bool glob = glob_match(pattern, type);
            // Parameters go to PostgreSQL as they are, with no array literal in between.
            bool sql = postgres_like(conn.get(), type, like);
            if (glob != sql) {
                ++mismatches;
                FAIL_CHECK("pattern \"" << pattern << "\" (LIKE \"" << like << "\"), event type \""
                                        << type << "\": glob " << glob << ", LIKE " << sql);
            }
            matches += glob ? 1 : 0;
        }
    }
    CHECK(mismatches == 0);
    // Both outcomes must be common, or the comparison proves little.
    const int cases = static_cast<int>(kPatterns.size() * types.size());
    CHECK(matches > 100);
    CHECK(cases - matches > 100);
}

TEST_CASE("glob_like: LIKE and glob_match agree on every short pattern and event type", "[glob]") {
    TestDatabase db;
    PgConn conn = db.connect();

    // All strings of up to three tokens, the tokens being the star, LIKE's specials, a plain
    // letter and a two-byte character: 259 patterns by 259 event types.
    const std::vector<std::string> tokens{"a", "é", "*", "%", "_", "\\"};
    const auto strings = all_strings(tokens, 3);
    REQUIRE(strings.size() == 259);

    // The cases become a table in PostgreSQL: one row per (glob, LIKE pattern, event type).
    std::vector<std::string> globs, likes, texts;
    for (const auto& pattern : strings) {
        for (const auto& text : strings) {
            globs.push_back(pattern);
            likes.push_back(glob_to_like(pattern));
            texts.push_back(text);
        }
    }
    exec_ok(conn.get(), R"(CREATE TEMP TABLE glob_cases AS
                           SELECT n, glob, "like", event_type
                             FROM unnest($1::text[], $2::text[], $3::text[])
                                  WITH ORDINALITY AS c(glob, "like", event_type, n))",
            {pg_text_array(globs), pg_text_array(likes), pg_text_array(texts)});

    PgResult result = exec_ok(conn.get(), R"(SELECT n, glob, "like", event_type,
                                                    event_type LIKE "like"
                                               FROM glob_cases ORDER BY n)");
    REQUIRE(static_cast<size_t>(result.rows()) == globs.size());
    size_t matches = 0;
    size_t mismatches = 0;
    for (int row = 0; row < result.rows(); ++row) {
        const size_t i = std::stoul(result.value(row, 0)) - 1;
        // The table holds what was sent (pg_text_array is exercised here too).
        REQUIRE(i == static_cast<size_t>(row));
        REQUIRE(result.value(row, 1) == globs[i]);
        REQUIRE(result.value(row, 2) == likes[i]);
        REQUIRE(result.value(row, 3) == texts[i]);
        const bool sql = result.value(row, 4) == "t";
        const bool glob = glob_match(globs[i], texts[i]);
        if (sql != glob && ++mismatches <= 20) {
            FAIL_CHECK("pattern \"" << globs[i] << "\" (LIKE \"" << likes[i] << "\"), event type \""
                                    << texts[i] << "\": glob " << glob << ", LIKE " << sql);
        }
        matches += glob ? 1 : 0;
    }
    CHECK(mismatches == 0);
    CHECK(matches > 2000);
    CHECK(globs.size() - matches > 50000);
}

TEST_CASE("glob_like: the claim query takes exactly the events a subscriber set matches",
          "[glob]") {
    TestDatabase db;
    db.migrate();
    PgConn conn = db.connect();

    const auto types = event_types();
    std::vector<std::string> ids;
    for (size_t i = 0; i < types.size(); ++i) {
        ids.push_back("glob-" + std::to_string(i));
    }
    exec_ok(
        conn.get(),
        R"(INSERT INTO "Outbox" (id, "eventLogId", "tenantId", "eventType", payload, "updatedAt")
               SELECT id, id, 'tenant', t, '{}', now() FROM unnest($1::text[], $2::text[]) AS u(id, t))",
        {pg_text_array(ids), pg_text_array(types)});
    REQUIRE(db.count(R"(SELECT count(*) FROM "Outbox" WHERE status = 'PENDING')") ==
            static_cast<long>(types.size()));

    // Subscriber sets as the supervisor sees them: the patterns of all its subscribers together.
    const std::vector<std::vector<std::string>> subscriber_sets{
        {"shopify.*"},
        {"*.created", "a*b*"},
        {"100%", "a_b"},
        {"a\\b", "\\"},
        {"a\\*"},
        {"%", "_"},
        {"é*", "*.イベント"},
        {""},
        {"shopify.order.created"},
        {"no.such.type"},
        {"*"},
        {"**"},
    };
    for (const auto& patterns : subscriber_sets) {
        // The LIKE array as the supervisor builds it (supervisor/service.cpp): NULL, meaning every
        // type, when one pattern is "*".
        std::optional<std::string> like_array;
        if (std::find(patterns.begin(), patterns.end(), "*") == patterns.end()) {
            std::vector<std::string> likes;
            for (const auto& p : patterns) {
                likes.push_back(glob_to_like(p));
            }
            like_array = pg_text_array(likes);
        }
        PgResult claimed = exec_ok(conn.get(), outbox::sql::kClaim,
                                   {std::string("glob-test"), std::to_string(types.size() + 10),
                                    like_array, std::string("1"), std::string("60000")});
        std::multiset<std::string> got;
        for (int row = 0; row < claimed.rows(); ++row) {
            if (claimed.value(row, outbox::kClaimColumns) == "f") {
                continue; // parked, not claimed (sql::kClaim); none here, all are unordered
            }
            got.insert(claimed.value(row, 3));
        }
        std::multiset<std::string> expected;
        for (const auto& type : types) {
            if (any_glob_match(patterns, type)) {
                expected.insert(type);
            }
        }
        std::string label;
        for (const auto& p : patterns) {
            label += "\"" + p + "\" ";
        }
        INFO("subscriber patterns " << label);
        CHECK(got == expected);
        exec_ok(conn.get(), R"(UPDATE "Outbox" SET status = 'PENDING', "leaseOwner" = NULL,
                                      "leaseToken" = NULL, "leaseExpiresAt" = NULL)");
    }
}

namespace {

// Reads an array literal back through PostgreSQL, one element per row in order, NULL as nullopt.
std::vector<std::optional<std::string>> round_trip(PGconn* conn, const std::string& literal) {
    PgResult result = pg_exec_params(conn,
                                     R"(SELECT v FROM unnest($1::text[]) WITH ORDINALITY AS u(v, n)
                                         ORDER BY n)",
                                     {literal});
    INFO("literal " << literal << ": " << result.error());
    REQUIRE(result.ok());
    std::vector<std::optional<std::string>> out;
    for (int row = 0; row < result.rows(); ++row) {
        out.push_back(result.optional_value(row, 0));
    }
    // unnest would hide a second dimension; the literal must be one-dimensional with the
    // expected length (cardinality of '{}' is 0).
    PgResult shape = pg_exec_params(
        conn, "SELECT cardinality($1::text[]), COALESCE(array_ndims($1::text[]), 1)", {literal});
    REQUIRE(shape.ok());
    CHECK(shape.value(0, 0) == std::to_string(out.size()));
    CHECK(shape.value(0, 1) == "1");
    return out;
}

} // namespace

TEST_CASE("pg_text_array: PostgreSQL reads back exactly the values encoded", "[pg_array]") {
    TestDatabase db;
    PgConn conn = db.connect();

    SECTION("values chosen to break a careless encoder") {
        std::string ascii;
        for (int c = 1; c < 128; ++c) {
            ascii += static_cast<char>(c);
        }
        const std::vector<std::optional<std::string>> values{
            std::nullopt,
            std::string("NULL"),
            std::string("null"),
            std::string(" NULL"),
            std::string("NULL "),
            std::string(""),
            std::string("\""),
            std::string("\\"),
            std::string("\\\""),
            std::string("\"\\"),
            std::string("a\"b\\c"),
            std::string("{"),
            std::string("}"),
            std::string("{}"),
            std::string("{a,b}"),
            std::string("{\"a\",NULL}"),
            std::string(","),
            std::string(" "),
            std::string("  leading and trailing  "),
            std::string("\t\n\r\v\f"),
            std::string("'"),
            std::string("[1:2]={x,y}"),
            std::string("100\\%"),
            std::string("a\\_b"),
            std::string("événement.créé"),
            std::string("日本.イベント"),
            std::string("🙂"),
            ascii,
            std::string(10000, 'x') + "\"\\,{}",
            std::nullopt,
        };
        CHECK(round_trip(conn.get(), pg_text_array(values)) == values);
        // Each value alone, so that one element's mistake cannot be masked by its neighbours.
        for (const auto& value : values) {
            CHECK(round_trip(conn.get(), pg_text_array(std::vector{value})) == std::vector{value});
        }
    }

    SECTION("the empty array, and arrays of empty strings") {
        CHECK(round_trip(conn.get(), pg_text_array(std::vector<std::string>{})).empty());
        CHECK(round_trip(conn.get(), pg_text_array(std::vector<std::optional<std::string>>{}))
                  .empty());
        using Values = std::vector<std::optional<std::string>>;
        CHECK(round_trip(conn.get(), pg_text_array(std::vector<std::string>{""})) == Values{""});
        CHECK(round_trip(conn.get(), pg_text_array(std::vector<std::string>{"", ""})) ==
              Values{"", ""});
    }

    SECTION("the overload without NULLs") {
        const std::vector<std::string> values{"NULL", "", "a,b", "{x}", "\\\"", "é"};
        std::vector<std::optional<std::string>> expected(values.begin(), values.end());
        CHECK(round_trip(conn.get(), pg_text_array(values)) == expected);
    }

    SECTION("random arrays over the special characters") {
        // Fixed seed: a failure reproduces. Elements are drawn from the characters that matter to
        // the array syntax, plus multi-byte ones; about one in eight is NULL.
        const std::vector<std::string> pieces{"\"", "\\",   "{",  "}", ",", " ", "NULL", "a",
                                              "é",  "🙂", "\t", "'", "[", "]", ":",    "="};
        std::mt19937 rng(20240607);
        for (int round = 0; round < 200; ++round) {
            std::vector<std::optional<std::string>> values(rng() % 12);
            for (auto& value : values) {
                if (rng() % 8 == 0) {
                    continue;
                }
                std::string s;
                for (unsigned n = rng() % 8; n > 0; --n) {
                    s += pieces[rng() % pieces.size()];
                }
                value = s;
            }
            INFO("round " << round << ", literal " << pg_text_array(values));
            REQUIRE(round_trip(conn.get(), pg_text_array(values)) == values);
        }
    }
}
