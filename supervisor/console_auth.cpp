#include "supervisor/console_auth.h"

#include "common/check.h"

#include <sys/random.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <vector>

namespace outbox::console {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

} // namespace

bool constant_time_equal(std::string_view a, std::string_view b) {
    // Every byte of the longer one is read whatever the contents; only the lengths show.
    size_t n = std::max(a.size(), b.size());
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (size_t i = 0; i < n; ++i) {
        unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= static_cast<unsigned char>(x ^ y);
    }
    return diff == 0;
}

std::string random_hex(size_t bytes) {
    std::vector<unsigned char> buf(bytes);
    size_t got = 0;
    while (got < bytes) {
        ssize_t n = getrandom(buf.data() + got, bytes - got, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        OUTBOX_CHECK(n > 0);
        got += static_cast<size_t>(n);
    }
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes * 2);
    for (unsigned char b : buf) {
        out += kHex[b >> 4];
        out += kHex[b & 15];
    }
    return out;
}

const Session& SessionStore::create(uint64_t now_ms) {
    // Expired sessions go first; then, if still full, the oldest.
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        it = it->second.expires_ms <= now_ms ? sessions_.erase(it) : std::next(it);
    }
    while (!sessions_.empty() && sessions_.size() >= max_sessions_) {
        auto oldest = std::min_element(sessions_.begin(), sessions_.end(), [](auto& a, auto& b) {
            return a.second.created_ms < b.second.created_ms;
        });
        sessions_.erase(oldest);
    }
    Session s{random_hex(32), random_hex(32), now_ms, now_ms + lifetime_ms_};
    auto [it, inserted] = sessions_.emplace(s.id, s);
    OUTBOX_CHECK(inserted);
    return it->second;
}

const Session* SessionStore::find(std::string_view id, uint64_t now_ms) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) {
        return nullptr;
    }
    if (it->second.expires_ms <= now_ms) {
        sessions_.erase(it);
        return nullptr;
    }
    return &it->second;
}

void SessionStore::remove(std::string_view id) {
    auto it = sessions_.find(id);
    if (it != sessions_.end()) {
        sessions_.erase(it);
    }
}

uint64_t LoginThrottle::wait_ms(const std::string& address, uint64_t now_ms) {
    auto it = windows_.find(address);
    if (it == windows_.end()) {
        return 0;
    }
    uint64_t ends = it->second.start_ms + kLoginWindowMs;
    if (now_ms >= ends) {
        windows_.erase(it);
        return 0;
    }
    return it->second.failures >= kLoginFailuresAllowed ? ends - now_ms : 0;
}

void LoginThrottle::failed(const std::string& address, uint64_t now_ms) {
    auto it = windows_.find(address);
    if (it != windows_.end() && now_ms >= it->second.start_ms + kLoginWindowMs) {
        windows_.erase(it);
        it = windows_.end();
    }
    if (it == windows_.end()) {
        if (windows_.size() >= kMaxThrottledAddresses) {
            auto oldest = std::min_element(windows_.begin(), windows_.end(), [](auto& a, auto& b) {
                return a.second.start_ms < b.second.start_ms;
            });
            windows_.erase(oldest);
        }
        it = windows_.emplace(address, Window{now_ms, 0}).first;
    }
    ++it->second.failures;
}

std::optional<std::string> cookie_value(std::string_view header, std::string_view name) {
    while (!header.empty()) {
        size_t semi = header.find(';');
        std::string_view pair = trim(header.substr(0, semi));
        header = semi == std::string_view::npos ? std::string_view() : header.substr(semi + 1);
        size_t eq = pair.find('=');
        if (eq != std::string_view::npos && trim(pair.substr(0, eq)) == name) {
            std::string_view value = trim(pair.substr(eq + 1));
            if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
                value = value.substr(1, value.size() - 2);
            }
            return std::string(value);
        }
    }
    return std::nullopt;
}

std::string session_cookie(const Session& session) {
    return std::string(kSessionCookie) + "=" + session.id +
           "; HttpOnly; SameSite=Strict; Path=/; Max-Age=" +
           std::to_string(kSessionLifetimeMs / 1000);
}

std::string expired_session_cookie() {
    return std::string(kSessionCookie) + "=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
    authorization = trim(authorization);
    if (authorization.size() < 7 || !iequals(authorization.substr(0, 7), "Bearer ")) {
        return std::nullopt;
    }
    return trim(authorization.substr(7));
}

bool is_cross_site(const std::string* origin, const std::string* host,
                   const std::string* sec_fetch_site) {
    if (sec_fetch_site != nullptr) {
        std::string_view site = trim(*sec_fetch_site);
        if (!iequals(site, "same-origin") && !iequals(site, "none")) {
            return true;
        }
    }
    if (origin != nullptr) {
        if (host == nullptr || host->empty()) {
            return true;
        }
        std::string_view o = trim(*origin);
        // Scheme and host name are case-insensitive; the Host header is what the browser
        // addressed, port included.
        return !iequals(o, "http://" + *host) && !iequals(o, "https://" + *host);
    }
    return false;
}

bool is_json_content_type(const std::string* content_type) {
    if (content_type == nullptr) {
        return false;
    }
    std::string_view media = *content_type;
    media = trim(media.substr(0, media.find(';')));
    return iequals(media, "application/json");
}

const char* to_string(AuthMethod method) {
    switch (method) {
    case AuthMethod::bearer:
        return "bearer";
    case AuthMethod::session:
        return "session";
    case AuthMethod::none:
        break;
    }
    return "none";
}

Identity identify(const RequestCredentials& request, const std::string& admin_token,
                  SessionStore& sessions, uint64_t now_ms) {
    Identity out;
    if (admin_token.empty()) {
        return out;
    }
    if (request.authorization != nullptr) {
        if (auto token = bearer_token(*request.authorization)) {
            if (constant_time_equal(*token, admin_token)) {
                out.method = AuthMethod::bearer;
            }
            // A wrong bearer token is not made good by a cookie beside it.
            return out;
        }
    }
    if (request.cookie != nullptr) {
        if (auto id = cookie_value(*request.cookie, kSessionCookie)) {
            if (const Session* s = sessions.find(*id, now_ms)) {
                out.method = AuthMethod::session;
                out.session = s;
            }
        }
    }
    return out;
}

Decision decide_action(const RequestCredentials& request, const std::string& admin_token,
                       SessionStore& sessions, uint64_t now_ms) {
    if (admin_token.empty()) {
        return {403, "the console is read-only: set OUTBOX_ADMIN_TOKEN to enable actions",
                AuthMethod::none};
    }
    if (is_cross_site(request.origin, request.host, request.sec_fetch_site)) {
        return {403, "cross-site request refused", AuthMethod::none};
    }
    Identity who = identify(request, admin_token, sessions, now_ms);
    if (who.method == AuthMethod::none) {
        bool tried = request.authorization != nullptr ||
                     (request.cookie != nullptr &&
                      cookie_value(*request.cookie, kSessionCookie).has_value());
        return {401,
                tried ? "wrong token or expired session"
                      : "authentication required: log in, or send Authorization: Bearer <token>",
                AuthMethod::none};
    }
    if (who.method == AuthMethod::session &&
        (request.csrf == nullptr || !constant_time_equal(*request.csrf, who.session->csrf))) {
        return {403, "missing or wrong X-Outbox-CSRF header", AuthMethod::session};
    }
    if (!is_json_content_type(request.content_type)) {
        return {415, "the body must be application/json", who.method};
    }
    return {200, {}, who.method};
}

} // namespace outbox::console
