// OUTBOX_ADMIN_TOKEN (SPEC 3, SPEC 6): optional, a secret that no error message repeats.
#include "common/config.h"

#include <catch2/catch.hpp>

#include <map>
#include <string>

namespace {

outbox::ConfigResult load_with_token(std::optional<std::string> token) {
    std::map<std::string, std::string> vars = {{"DATABASE_URL", "postgresql://u@h/db"}};
    if (token) {
        vars["OUTBOX_ADMIN_TOKEN"] = *token;
    }
    return outbox::load_config([vars](const char* name) -> std::optional<std::string> {
        auto it = vars.find(name);
        return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
    });
}

} // namespace

TEST_CASE("OUTBOX_ADMIN_TOKEN is optional and kept as given", "[config][console]") {
    auto unset = load_with_token(std::nullopt);
    REQUIRE(unset.config);
    CHECK(unset.config->admin_token.empty());
    auto empty = load_with_token("");
    REQUIRE(empty.config);
    CHECK(empty.config->admin_token.empty());
    auto set = load_with_token("s3cret-Token_value.0123");
    REQUIRE(set.config);
    CHECK(set.config->admin_token == "s3cret-Token_value.0123");
}

TEST_CASE("a bad OUTBOX_ADMIN_TOKEN is refused without showing it", "[config][console]") {
    for (std::string bad : {std::string("has space-secretvalue"), std::string("tab\tsecretvalue"),
                            std::string(1025, 'x') + "secretvalue"}) {
        auto r = load_with_token(bad);
        CHECK_FALSE(r.config);
        CHECK(r.error.rfind("OUTBOX_ADMIN_TOKEN=\"****\":", 0) == 0);
        CHECK(r.error.find("secretvalue") == std::string::npos);
    }
}
