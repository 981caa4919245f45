// The command line's argument parser and value parsers (cli/args.h).
#include "cli/args.h"

#include <catch2/catch.hpp>

using outbox::cli::parse_args;
using outbox::cli::parse_duration_seconds;
using outbox::cli::parse_integer;

TEST_CASE("cli args: --name value, --name=value, flags and positionals", "[cli]") {
    auto r = parse_args({"--type", "a.b", "--count=5", "--json", "id1", "id2"},
                        {{"type", true}, {"count", true}, {"json", false}}, true);
    REQUIRE(r.error.empty());
    CHECK(r.args.value("type") == "a.b");
    CHECK(r.args.value("count") == "5");
    CHECK(r.args.has("json"));
    CHECK_FALSE(r.args.value("json"));
    CHECK_FALSE(r.args.has("missing"));
    CHECK(r.args.positionals == std::vector<std::string>{"id1", "id2"});
    CHECK_FALSE(r.args.help);
}

TEST_CASE("cli args: values may look like options or be empty", "[cli]") {
    auto r = parse_args({"--payload", "-", "--key", "--odd", "--tenant="},
                        {{"payload", true}, {"key", true}, {"tenant", true}});
    REQUIRE(r.error.empty());
    CHECK(r.args.value("payload") == "-");
    CHECK(r.args.value("key") == "--odd");
    CHECK(r.args.value("tenant") == "");
}

TEST_CASE("cli args: -- ends the options", "[cli]") {
    auto r = parse_args({"--all", "--", "--not-an-option"}, {{"all", false}}, true);
    REQUIRE(r.error.empty());
    CHECK(r.args.positionals == std::vector<std::string>{"--not-an-option"});
}

TEST_CASE("cli args: --help and -h win over everything after them", "[cli]") {
    CHECK(parse_args({"--help", "--bogus"}, {}).args.help);
    CHECK(parse_args({"-h"}, {}).args.help);
}

TEST_CASE("cli args: usage errors", "[cli]") {
    auto error = [](std::vector<std::string> args, bool positionals = false) {
        return parse_args(args, {{"type", true}, {"json", false}}, positionals).error;
    };
    CHECK(error({"--bogus"}) == "unknown option --bogus");
    CHECK(error({"--bogus=1"}) == "unknown option --bogus");
    CHECK(error({"-x"}).find("unknown option -x") == 0);
    CHECK(error({"--type"}) == "--type needs a value");
    CHECK(error({"--json=yes"}) == "--json takes no value");
    CHECK(error({"--type", "a", "--type=b"}) == "--type given more than once");
    CHECK(error({"stray"}) == "unexpected argument \"stray\"");
    CHECK(error({"stray"}, true).empty());
}

TEST_CASE("cli args: integers", "[cli]") {
    CHECK(parse_integer("0", 0, 10) == 0);
    CHECK(parse_integer("10", 0, 10) == 10);
    CHECK_FALSE(parse_integer("11", 0, 10));
    CHECK_FALSE(parse_integer("-1", 0, 10));
    CHECK_FALSE(parse_integer("+1", 0, 10));
    CHECK_FALSE(parse_integer("1x", 0, 10));
    CHECK_FALSE(parse_integer("", 0, 10));
    CHECK_FALSE(parse_integer(" 1", 0, 10));
    CHECK_FALSE(parse_integer("99999999999999999999999", 0, 10));
}

TEST_CASE("cli args: durations", "[cli]") {
    CHECK(parse_duration_seconds("90s") == 90);
    CHECK(parse_duration_seconds("30m") == 1800);
    CHECK(parse_duration_seconds("12h") == 43200);
    CHECK(parse_duration_seconds("7d") == 604800);
    CHECK(parse_duration_seconds("2w") == 1209600);
    for (const char* bad :
         {"", "7", "d", "0d", "-1d", "1.5h", "7 d", "7D", "1h30m", "99999999999d"}) {
        INFO(bad);
        CHECK_FALSE(parse_duration_seconds(bad));
    }
}
