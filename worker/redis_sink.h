// The `redis` handler kind's connection URL (the sink itself is make_redis_sink in worker/sink.h).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace outbox {

// redis://[[user]:password@]host[:port][/db]
//   - the password (and a Redis 6 ACL user) are sent with AUTH after connecting; both may be
//     percent-encoded; "redis://secret@host" (no colon) is a password alone, as redis-cli reads it;
//   - host is a name, an IPv4 address or a bracketed IPv6 address; port defaults to 6379;
//   - db (default 0) is selected with SELECT after AUTH.
struct RedisUrl {
    std::string host;
    int port = 6379;
    std::optional<std::string> user;
    std::optional<std::string> password;
    int db = 0;
};

// nullopt and `error` set (one line) when `url` is not of that form.
std::optional<RedisUrl> parse_redis_url(std::string_view url, std::string& error);

} // namespace outbox
