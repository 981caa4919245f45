// The pure parts of the console's list endpoints (docs/console.md): cursors, request parameters
// and the SQL each request runs, assembled from the fragments of supervisor/queries.h. No I/O
// here, so that all of it is unit-tested (tests/unit/console_query_test.cpp).
//
// Lists page by keyset: a cursor names the last row shown by its sort time and id, and the next
// page starts after it. Never OFFSET, which reads and throws away every row before the page.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace outbox::console {

constexpr int kDefaultLimit = 50;
constexpr int kMaxLimit = 200;

// RFC 4648 base64url without padding.
std::string base64url_encode(std::string_view bytes);
// nullopt for a character outside the alphabet or an impossible length. Padding is accepted.
std::optional<std::string> base64url_decode(std::string_view text);

// "%2F" and the like in a path segment; nullopt for a malformed escape or an encoded NUL.
std::optional<std::string> percent_decode(std::string_view text);

// Times as PostgreSQL sends them to the console: 2026-12-03T18:41:50.123456Z (UTC, 0 to 6
// fractional digits).
bool is_utc_timestamp(std::string_view text);
// What `from` and `to` accept: an ISO 8601 date (2026-12-03) or date and time (T or a space,
// minutes or seconds, an optional fraction, and Z or an offset such as +02:00). Times without a
// zone are UTC. Returns the value to hand to PostgreSQL, or nullopt.
std::optional<std::string> parse_iso_time(std::string_view text);

// The position after which the next page starts: the last row's sort time and its id.
struct Cursor {
    std::string time; // is_utc_timestamp
    std::string id;
};
std::string encode_cursor(const Cursor& cursor);
std::optional<Cursor> decode_cursor(std::string_view text);

// A statement with numbered text parameters.
struct Query {
    std::string sql;
    std::vector<std::optional<std::string>> params;
};

// Appends SQL fragments in which each "$%" stands for the next parameter; their values come in
// order. A fragment with no "$%" takes no values.
class QueryBuilder {
  public:
    explicit QueryBuilder(std::string_view head) : sql_(head) {}
    QueryBuilder& add(std::string_view fragment, std::vector<std::optional<std::string>> values);
    Query build() &&;

  private:
    std::string sql_;
    std::vector<std::optional<std::string>> params_;
};

// A list request: its query (which asks for one row more than the page, to know whether another
// page follows) or the reason it is refused, which names the parameter.
struct ListRequest {
    std::optional<Query> query;
    int limit = kDefaultLimit;
    std::string error; // for a 400, when query is empty
};

// Query parameters by name, percent-decoded; an empty value counts as absent (the page sends
// every filter, most of them empty).
using ParamLookup = std::function<std::optional<std::string>(std::string_view name)>;

// GET /api/events: id, status, type, tenant, eventKey, orderingKey, from, to, after, limit.
ListRequest events_list_request(const ParamLookup& param);
// GET /api/dlq: type, tenant, reason, after, limit.
ListRequest dlq_list_request(const ParamLookup& param);
// GET /api/blocked-keys: after, limit.
ListRequest blocked_keys_request(const ParamLookup& param);

// The body of POST /api/dlq/retry, skip and purge: either {"ids": [...]} (at most kMaxActionIds)
// or {"filter": {"type", "tenant", "reason"}} (an empty filter only with "all": true beside it).
constexpr size_t kMaxActionIds = 1000;
struct DlqActionBody {
    bool by_ids = false;
    std::vector<std::string> ids;
    // The filter; absent (or empty) members do not restrict.
    std::optional<std::string> type, tenant, reason;
    std::string error; // for a 400; nothing else is meaningful then
};
DlqActionBody parse_dlq_action_body(std::string_view body);

// The body of POST /api/pause and /api/resume: {"eventType": "..."}. nullopt with `error` set
// when it is not that.
std::optional<std::string> parse_event_type_body(std::string_view body, std::string& error);

// The body of POST /api/login: {"token": "..."}.
std::optional<std::string> parse_login_body(std::string_view body, std::string& error);

// Epoch milliseconds as the API writes times: 2026-12-03T18:41:50.123000Z.
std::string format_utc_ms(int64_t epoch_ms);

} // namespace outbox::console
