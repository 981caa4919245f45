// Who may act through the console (docs/console.md, "Security"), as pure functions and one
// in-memory session table, so that every rule is unit-tested (tests/unit/console_auth_test.cpp).
//
// Without OUTBOX_ADMIN_TOKEN the console is read-only. With it, an action needs the token: as
// `Authorization: Bearer <token>` (scripts), or through a session that the login form opened with
// it (a cookie, plus the session's CSRF token in `X-Outbox-CSRF` on every action). Requests from
// another site are refused whatever they carry. Sessions live in this process's memory only: a
// restart logs everyone out, and another instance does not know them.
//
// Single-threaded, on the supervisor's loop, like everything of the supervisor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace outbox::console {

constexpr const char* kSessionCookie = "outbox_session";
constexpr uint64_t kSessionLifetimeMs = 12ull * 3600 * 1000;
constexpr size_t kMaxSessions = 1000;

// Compares in time that depends on the lengths only, not on where the first difference lies.
bool constant_time_equal(std::string_view a, std::string_view b);

// `bytes` random bytes from getrandom(2), as lower-case hex. Aborts if the kernel cannot give
// them: a predictable session id would be worse than no console.
std::string random_hex(size_t bytes);

struct Session {
    std::string id;   // 64 hex characters
    std::string csrf; // 64 hex characters, sent back by the page in X-Outbox-CSRF
    uint64_t created_ms = 0;
    uint64_t expires_ms = 0;
};

// The sessions opened by logins. Bounded: when full, the oldest is forgotten.
class SessionStore {
  public:
    explicit SessionStore(size_t max_sessions = kMaxSessions,
                          uint64_t lifetime_ms = kSessionLifetimeMs)
        : max_sessions_(max_sessions), lifetime_ms_(lifetime_ms) {}

    // `now_ms` is a monotonic clock (the loop's).
    const Session& create(uint64_t now_ms);
    // The live session of that id, or nullptr (an expired one is forgotten here).
    const Session* find(std::string_view id, uint64_t now_ms);
    void remove(std::string_view id);
    size_t size() const { return sessions_.size(); }

  private:
    size_t max_sessions_;
    uint64_t lifetime_ms_;
    std::map<std::string, Session, std::less<>> sessions_;
};

// Failed logins per client address: after kLoginFailuresAllowed failures within
// kLoginWindowMs, that address is refused (429) until the window of its first failure has passed.
// A guess at a long random token is hopeless anyway; this keeps a script from trying millions and
// filling the log. Behind a proxy every client shares the proxy's address, so a flood of wrong
// tokens there locks the login form for a minute (bearer requests are not throttled). Bounded:
// when full, the address with the oldest window is forgotten.
constexpr size_t kLoginFailuresAllowed = 5;
constexpr uint64_t kLoginWindowMs = 60'000;
constexpr size_t kMaxThrottledAddresses = 10'000;

class LoginThrottle {
  public:
    // 0 when `address` may try now, else the milliseconds until it may.
    uint64_t wait_ms(const std::string& address, uint64_t now_ms);
    void failed(const std::string& address, uint64_t now_ms);
    void succeeded(const std::string& address) { windows_.erase(address); }
    size_t size() const { return windows_.size(); }

  private:
    struct Window {
        uint64_t start_ms = 0;
        size_t failures = 0;
    };
    std::map<std::string, Window, std::less<>> windows_;
};

// The value of cookie `name` in a Cookie header ("a=1; outbox_session=abc"), or nullopt.
std::optional<std::string> cookie_value(std::string_view cookie_header, std::string_view name);
// Set-Cookie values: the session's, and one that removes it.
std::string session_cookie(const Session& session);
std::string expired_session_cookie();

// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or nullopt
// for another scheme.
std::optional<std::string_view> bearer_token(std::string_view authorization);

// Whether a request comes from another site: an Origin header that is not this host's (http or
// https, as the Host header names it), or a Sec-Fetch-Site other than same-origin or none. A
// browser sends at least one of them on every cross-site POST; their absence means a
// script or an old browser, which the other rules cover.
bool is_cross_site(const std::string* origin, const std::string* host,
                   const std::string* sec_fetch_site);

// Whether a Content-Type header names application/json (parameters such as charset allowed).
bool is_json_content_type(const std::string* content_type);

// The headers of a request that the decision reads (nullptr: absent).
struct RequestCredentials {
    const std::string* host = nullptr;
    const std::string* origin = nullptr;
    const std::string* sec_fetch_site = nullptr;
    const std::string* authorization = nullptr;
    const std::string* cookie = nullptr;
    const std::string* csrf = nullptr; // X-Outbox-CSRF
    const std::string* content_type = nullptr;
};

enum class AuthMethod { none, bearer, session };
const char* to_string(AuthMethod method);

struct Decision {
    int status = 200;  // 200: allowed; otherwise the status to answer with
    std::string error; // for the JSON error body when refused
    AuthMethod method = AuthMethod::none;
};

// Whether an action (a POST that changes something) may run. In this order: a read-only console
// (no token configured) 403; a cross-site request 403; no credentials or wrong ones 401; a
// session cookie without its CSRF token 403; a body that is not application/json 415.
Decision decide_action(const RequestCredentials& request, const std::string& admin_token,
                       SessionStore& sessions, uint64_t now_ms);

// For GET /api/session: how the request is authenticated, whatever it asks (no CSRF needed to
// read). The session when it is one.
struct Identity {
    AuthMethod method = AuthMethod::none;
    const Session* session = nullptr;
};
Identity identify(const RequestCredentials& request, const std::string& admin_token,
                  SessionStore& sessions, uint64_t now_ms);

} // namespace outbox::console
