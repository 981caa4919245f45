// pg_text_array: the PostgreSQL array literals in which the supervisor and the event writer send
// lists (ids, lease tokens, errors, LIKE patterns) as one text parameter. Every element is quoted,
// so nothing inside it (commas, braces, spaces, the word NULL) can end it or change its meaning;
// only a real std::nullopt becomes the unquoted NULL. tests/integration/glob_like_test.cpp reads
// the same literals back through PostgreSQL.
#include "common/pg.h"

#include <catch2/catch.hpp>

#include <optional>
#include <string>
#include <vector>

using outbox::pg_text_array;

namespace {

using Optionals = std::vector<std::optional<std::string>>;

} // namespace

TEST_CASE("pg_text_array: empty array and plain values", "[pg_array]") {
    CHECK(pg_text_array(std::vector<std::string>{}) == "{}");
    CHECK(pg_text_array(Optionals{}) == "{}");
    CHECK(pg_text_array(std::vector<std::string>{"a"}) == R"({"a"})");
    CHECK(pg_text_array(std::vector<std::string>{"a", "b", "c"}) == R"({"a","b","c"})");
}

TEST_CASE("pg_text_array: quotes and backslashes are escaped, other specials only quoted",
          "[pg_array]") {
    CHECK(pg_text_array(std::vector<std::string>{"say \"hi\""}) == R"({"say \"hi\""})");
    CHECK(pg_text_array(std::vector<std::string>{"a\\b"}) == R"({"a\\b"})");
    CHECK(pg_text_array(std::vector<std::string>{"\\"}) == R"({"\\"})");
    CHECK(pg_text_array(std::vector<std::string>{"\""}) == R"({"\""})");
    CHECK(pg_text_array(std::vector<std::string>{"\\\""}) == R"({"\\\""})");
    // Braces, commas and spaces would split or end an unquoted element; quoted they are plain.
    CHECK(pg_text_array(std::vector<std::string>{"{a,b}", " x ", "a, b"}) ==
          R"({"{a,b}"," x ","a, b"})");
    CHECK(pg_text_array(std::vector<std::string>{"}", "{", ","}) == R"({"}","{",","})");
    // LIKE patterns keep their own backslash escapes, doubled once more for the array.
    CHECK(pg_text_array(std::vector<std::string>{"100\\%", "a\\_b"}) == R"({"100\\%","a\\_b"})");
    // Newlines, tabs and apostrophes need nothing inside double quotes.
    CHECK(pg_text_array(std::vector<std::string>{"line\nnext\tx'y"}) == "{\"line\nnext\tx'y\"}");
}

TEST_CASE("pg_text_array: NULL is std::nullopt, never the string \"NULL\"", "[pg_array]") {
    CHECK(pg_text_array(Optionals{std::nullopt}) == "{NULL}");
    CHECK(pg_text_array(Optionals{std::string("NULL")}) == R"({"NULL"})");
    CHECK(pg_text_array(std::vector<std::string>{"NULL", "null"}) == R"({"NULL","null"})");
    CHECK(pg_text_array(Optionals{std::nullopt, std::string("NULL"), std::string(""),
                                  std::nullopt}) == R"({NULL,"NULL","",NULL})");
}

TEST_CASE("pg_text_array: empty strings are empty quoted elements", "[pg_array]") {
    CHECK(pg_text_array(std::vector<std::string>{""}) == R"({""})");
    CHECK(pg_text_array(std::vector<std::string>{"", ""}) == R"({"",""})");
    CHECK(pg_text_array(Optionals{std::string("")}) == R"({""})");
}

TEST_CASE("pg_text_array: non-ASCII bytes pass through unchanged", "[pg_array]") {
    CHECK(pg_text_array(std::vector<std::string>{"événement", "日本.イベント", "🙂"}) ==
          R"({"événement","日本.イベント","🙂"})");
}

TEST_CASE("pg_text_array: both overloads agree on values that are all present", "[pg_array]") {
    const std::vector<std::string> values{"", "NULL", "a\"b", "c\\d", "{,}", " ", "é"};
    Optionals optionals(values.begin(), values.end());
    CHECK(pg_text_array(values) == pg_text_array(optionals));
}
