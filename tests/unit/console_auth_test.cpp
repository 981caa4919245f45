// The console's access rules (supervisor/console_auth.h, docs/console.md "Security"): token
// comparison, sessions and their cookie, bearer tokens, cross-site detection and the order in
// which an action is refused.
#include "supervisor/console_auth.h"

#include <catch2/catch.hpp>

#include <set>
#include <string>

using namespace outbox::console;

namespace {

const std::string kToken = "the-admin-token-0123456789";

struct Headers {
    std::string host = "127.0.0.1:3001";
    std::optional<std::string> origin, sec_fetch_site, authorization, cookie, csrf;
    std::optional<std::string> content_type = std::string("application/json");

    RequestCredentials view() const {
        auto ptr = [](const std::optional<std::string>& v) {
            return v ? &*v : nullptr;
        };
        RequestCredentials r;
        r.host = &host;
        r.origin = ptr(origin);
        r.sec_fetch_site = ptr(sec_fetch_site);
        r.authorization = ptr(authorization);
        r.cookie = ptr(cookie);
        r.csrf = ptr(csrf);
        r.content_type = ptr(content_type);
        return r;
    }
};

} // namespace

TEST_CASE("constant_time_equal compares whole strings", "[console]") {
    CHECK(constant_time_equal("abc", "abc"));
    CHECK(constant_time_equal("", ""));
    CHECK_FALSE(constant_time_equal("abc", "abd"));
    CHECK_FALSE(constant_time_equal("abc", "ab"));
    CHECK_FALSE(constant_time_equal("ab", "abc"));
    CHECK_FALSE(constant_time_equal("", "a"));
    CHECK_FALSE(constant_time_equal(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST_CASE("random_hex gives distinct lower-case hex of the asked length", "[console]") {
    std::set<std::string> seen;
    for (int i = 0; i < 100; ++i) {
        std::string h = random_hex(32);
        REQUIRE(h.size() == 64);
        CHECK(h.find_first_not_of("0123456789abcdef") == std::string::npos);
        seen.insert(h);
    }
    CHECK(seen.size() == 100);
}

TEST_CASE("sessions expire after their lifetime and the oldest is evicted when full", "[console]") {
    SessionStore store(3, 1000);
    const Session& a = store.create(0);
    std::string a_id = a.id;
    CHECK(a.id.size() == 64);
    CHECK(a.csrf.size() == 64);
    CHECK(a.id != a.csrf);
    REQUIRE(store.find(a_id, 999) != nullptr);
    CHECK(store.find(a_id, 1000) == nullptr); // expired, and forgotten
    CHECK(store.size() == 0);

    std::string first = store.create(10).id;
    std::string second = store.create(20).id;
    std::string third = store.create(30).id;
    std::string fourth = store.create(40).id;
    CHECK(store.size() == 3);
    CHECK(store.find(first, 50) == nullptr);
    CHECK(store.find(second, 50) != nullptr);
    CHECK(store.find(fourth, 50) != nullptr);
    store.remove(second);
    CHECK(store.find(second, 50) == nullptr);
    CHECK(store.find(third, 50) != nullptr);
    CHECK(store.find("", 50) == nullptr);
}

TEST_CASE("the session cookie carries its flags, and cookies are parsed", "[console]") {
    SessionStore store;
    const Session& s = store.create(0);
    std::string cookie = session_cookie(s);
    CHECK(cookie ==
          "outbox_session=" + s.id + "; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200");
    CHECK(expired_session_cookie().find("Max-Age=0") != std::string::npos);

    CHECK(cookie_value("outbox_session=abc", "outbox_session") == "abc");
    CHECK(cookie_value("a=1; outbox_session=abc; b=2", "outbox_session") == "abc");
    CHECK(cookie_value("a=1;outbox_session=\"abc\"", "outbox_session") == "abc");
    CHECK(cookie_value("x_outbox_session=abc", "outbox_session") == std::nullopt);
    CHECK(cookie_value("a=1; b", "outbox_session") == std::nullopt);
    CHECK(cookie_value("", "outbox_session") == std::nullopt);
}

TEST_CASE("bearer tokens and JSON content types are recognised", "[console]") {
    CHECK(bearer_token("Bearer abc") == "abc");
    CHECK(bearer_token("bearer   abc ") == "abc");
    CHECK(bearer_token("Basic abc") == std::nullopt);
    CHECK(bearer_token("Bearer") == std::nullopt);

    std::string json = "application/json", with_charset = "Application/JSON; charset=utf-8",
                form = "application/x-www-form-urlencoded", text = "text/plain",
                jsonish = "application/jsonp";
    CHECK(is_json_content_type(&json));
    CHECK(is_json_content_type(&with_charset));
    CHECK_FALSE(is_json_content_type(&form));
    CHECK_FALSE(is_json_content_type(&text));
    CHECK_FALSE(is_json_content_type(&jsonish));
    CHECK_FALSE(is_json_content_type(nullptr));
}

TEST_CASE("cross-site requests are told by Origin and Sec-Fetch-Site", "[console]") {
    std::string host = "127.0.0.1:3001";
    std::string same = "http://127.0.0.1:3001", same_https = "https://127.0.0.1:3001",
                other_port = "http://127.0.0.1:3002", other = "https://evil.example",
                null_origin = "null";
    std::string same_origin = "same-origin", none = "none", same_site = "same-site",
                cross = "cross-site";
    CHECK_FALSE(is_cross_site(nullptr, &host, nullptr));
    CHECK_FALSE(is_cross_site(&same, &host, nullptr));
    CHECK_FALSE(is_cross_site(&same_https, &host, &same_origin));
    CHECK_FALSE(is_cross_site(nullptr, &host, &none));
    CHECK(is_cross_site(&other_port, &host, nullptr));
    CHECK(is_cross_site(&other, &host, nullptr));
    CHECK(is_cross_site(&null_origin, &host, nullptr));
    CHECK(is_cross_site(&same, nullptr, nullptr));
    CHECK(is_cross_site(nullptr, &host, &same_site));
    CHECK(is_cross_site(&same, &host, &cross));
}

TEST_CASE("an action is refused in the documented order", "[console]") {
    SessionStore store;
    const Session& s = store.create(0);
    std::string sid = s.id, csrf = s.csrf;

    SECTION("read-only console: 403 whatever the request carries") {
        Headers h;
        h.authorization = "Bearer " + kToken;
        CHECK(decide_action(h.view(), "", store, 1).status == 403);
    }
    SECTION("a valid bearer token is allowed") {
        Headers h;
        h.authorization = "Bearer " + kToken;
        Decision d = decide_action(h.view(), kToken, store, 1);
        CHECK(d.status == 200);
        CHECK(d.method == AuthMethod::bearer);
    }
    SECTION("cross-site: 403 even with a valid bearer token") {
        Headers h;
        h.authorization = "Bearer " + kToken;
        h.origin = "https://evil.example";
        CHECK(decide_action(h.view(), kToken, store, 1).status == 403);
        h.origin.reset();
        h.sec_fetch_site = "cross-site";
        CHECK(decide_action(h.view(), kToken, store, 1).status == 403);
    }
    SECTION("no credentials, a wrong token, an unknown session: 401") {
        Headers h;
        CHECK(decide_action(h.view(), kToken, store, 1).status == 401);
        h.authorization = "Bearer " + kToken + "x";
        CHECK(decide_action(h.view(), kToken, store, 1).status == 401);
        h.authorization = "Bearer " + kToken.substr(1);
        CHECK(decide_action(h.view(), kToken, store, 1).status == 401);
        h.authorization.reset();
        h.cookie = "outbox_session=0000";
        h.csrf = csrf;
        CHECK(decide_action(h.view(), kToken, store, 1).status == 401);
    }
    SECTION("a wrong bearer token is not rescued by a valid cookie") {
        Headers h;
        h.authorization = "Bearer nope";
        h.cookie = "outbox_session=" + sid;
        h.csrf = csrf;
        CHECK(decide_action(h.view(), kToken, store, 1).status == 401);
    }
    SECTION("a session cookie needs its CSRF token") {
        Headers h;
        h.cookie = "outbox_session=" + sid;
        CHECK(decide_action(h.view(), kToken, store, 1).status == 403);
        h.csrf = "0" + csrf.substr(1) == csrf ? "1" + csrf.substr(1) : "0" + csrf.substr(1);
        CHECK(decide_action(h.view(), kToken, store, 1).status == 403);
        h.csrf = csrf;
        Decision d = decide_action(h.view(), kToken, store, 1);
        CHECK(d.status == 200);
        CHECK(d.method == AuthMethod::session);
        // Expired: 401, as if it never existed.
        CHECK(decide_action(h.view(), kToken, store, kSessionLifetimeMs + 1).status == 401);
    }
    SECTION("a body that is not JSON: 415, after the credentials") {
        Headers h;
        h.authorization = "Bearer " + kToken;
        h.content_type = "application/x-www-form-urlencoded";
        CHECK(decide_action(h.view(), kToken, store, 1).status == 415);
        h.content_type.reset();
        CHECK(decide_action(h.view(), kToken, store, 1).status == 415);
        h.authorization.reset();
        CHECK(decide_action(h.view(), kToken, store, 1).status == 401);
    }
}

TEST_CASE("identify tells bearer from session and nothing", "[console]") {
    SessionStore store;
    std::string sid = store.create(0).id;
    Headers h;
    CHECK(identify(h.view(), kToken, store, 1).method == AuthMethod::none);
    h.cookie = "outbox_session=" + sid;
    Identity who = identify(h.view(), kToken, store, 1);
    CHECK(who.method == AuthMethod::session);
    REQUIRE(who.session != nullptr);
    CHECK(who.session->id == sid);
    CHECK(identify(h.view(), "", store, 1).method == AuthMethod::none);
    h.cookie.reset();
    h.authorization = "Bearer " + kToken;
    CHECK(identify(h.view(), kToken, store, 1).method == AuthMethod::bearer);
}

TEST_CASE("failed logins from one address are throttled for the rest of their window",
          "[console]") {
    LoginThrottle throttle;
    for (size_t i = 0; i < kLoginFailuresAllowed; ++i) {
        CHECK(throttle.wait_ms("10.0.0.1", 1000 + i) == 0);
        throttle.failed("10.0.0.1", 1000 + i);
    }
    // The sixth try inside the window waits until the first failure's window has passed.
    CHECK(throttle.wait_ms("10.0.0.1", 2000) == kLoginWindowMs - 1000);
    // Another address is not affected.
    CHECK(throttle.wait_ms("10.0.0.2", 2000) == 0);
    // After the window, the address starts afresh.
    CHECK(throttle.wait_ms("10.0.0.1", 1000 + kLoginWindowMs) == 0);
    CHECK(throttle.size() == 0);
    // A success forgets the failures before it.
    throttle.failed("10.0.0.3", 0);
    throttle.succeeded("10.0.0.3");
    CHECK(throttle.size() == 0);
    // Failures spread over more than a window never lock an address out.
    for (uint64_t t = 0; t < 10 * kLoginWindowMs; t += kLoginWindowMs / 2) {
        CHECK(throttle.wait_ms("10.0.0.4", t) == 0);
        throttle.failed("10.0.0.4", t);
    }
}
