#include "supervisor/console_query.h"

#include "common/json.h"
#include "supervisor/queries.h"

#include <cjson/cJSON.h>

#include <array>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <ctime>

namespace outbox::console {

namespace {

constexpr char kBase64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int base64url_value(char c) {
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '-') {
        return 62;
    }
    if (c == '_') {
        return 63;
    }
    return -1;
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

bool digits(std::string_view text, size_t at, size_t n) {
    if (at + n > text.size()) {
        return false;
    }
    for (size_t i = at; i < at + n; ++i) {
        if (text[i] < '0' || text[i] > '9') {
            return false;
        }
    }
    return true;
}

int number(std::string_view text, size_t at, size_t n) {
    int v = 0;
    std::from_chars(text.data() + at, text.data() + at + n, v);
    return v;
}

// YYYY-MM-DD with a plausible month and day; PostgreSQL checks the rest (February 30th).
bool valid_date(std::string_view text) {
    if (text.size() < 10 || !digits(text, 0, 4) || text[4] != '-' || !digits(text, 5, 2) ||
        text[7] != '-' || !digits(text, 8, 2)) {
        return false;
    }
    int month = number(text, 5, 2);
    int day = number(text, 8, 2);
    return month >= 1 && month <= 12 && day >= 1 && day <= 31;
}

// HH:MM[:SS[.fraction]] at `at`; returns the position after it, or 0.
size_t valid_clock(std::string_view text, size_t at, size_t max_fraction) {
    if (!digits(text, at, 2) || at + 2 >= text.size() || text[at + 2] != ':' ||
        !digits(text, at + 3, 2)) {
        return 0;
    }
    if (number(text, at, 2) > 23 || number(text, at + 3, 2) > 59) {
        return 0;
    }
    size_t pos = at + 5;
    if (pos < text.size() && text[pos] == ':') {
        if (!digits(text, pos + 1, 2) || number(text, pos + 1, 2) > 60) {
            return 0;
        }
        pos += 3;
        if (pos < text.size() && text[pos] == '.') {
            size_t start = ++pos;
            while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
                ++pos;
            }
            if (pos == start || pos - start > max_fraction) {
                return 0;
            }
        }
    }
    return pos;
}

std::optional<int> parse_limit(const ParamLookup& param, std::string& error) {
    auto text = param("limit");
    if (!text) {
        return kDefaultLimit;
    }
    int v = 0;
    auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec != std::errc() || ptr != text->data() + text->size() || v < 1 || v > kMaxLimit) {
        error =
            "limit \"" + *text + "\": allowed: an integer from 1 to " + std::to_string(kMaxLimit);
        return std::nullopt;
    }
    return v;
}

std::optional<Cursor> parse_after(const ParamLookup& param, std::string& error) {
    auto text = param("after");
    if (!text) {
        return std::nullopt;
    }
    auto cursor = decode_cursor(*text);
    if (!cursor) {
        error = "after: not a cursor of this list (pass back the `next` of the previous page)";
    }
    return cursor;
}

} // namespace

std::string base64url_encode(std::string_view bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
                     static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                     static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 2]));
        for (int shift : {18, 12, 6, 0}) {
            out += kBase64Url[(v >> shift) & 63];
        }
    }
    size_t rest = bytes.size() - i;
    if (rest > 0) {
        uint32_t v = static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
        if (rest == 2) {
            v |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
        }
        out += kBase64Url[(v >> 18) & 63];
        out += kBase64Url[(v >> 12) & 63];
        if (rest == 2) {
            out += kBase64Url[(v >> 6) & 63];
        }
    }
    return out;
}

std::optional<std::string> base64url_decode(std::string_view text) {
    while (!text.empty() && text.back() == '=') {
        text.remove_suffix(1);
    }
    if (text.size() % 4 == 1) {
        return std::nullopt;
    }
    std::string out;
    out.reserve(text.size() * 3 / 4);
    uint32_t acc = 0;
    int bits = 0;
    for (char c : text) {
        int v = base64url_value(c);
        if (v < 0) {
            return std::nullopt;
        }
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((acc >> bits) & 0xff);
        }
    }
    return out;
}

std::optional<std::string> percent_decode(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '%') {
            out += text[i];
            continue;
        }
        if (i + 2 >= text.size()) {
            return std::nullopt;
        }
        int hi = hex_value(text[i + 1]);
        int lo = hex_value(text[i + 2]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            return std::nullopt;
        }
        out += static_cast<char>(hi << 4 | lo);
        i += 2;
    }
    return out;
}

bool is_utc_timestamp(std::string_view text) {
    if (!valid_date(text) || text.size() < 12 || text[10] != 'T') {
        return false;
    }
    size_t end = valid_clock(text, 11, 6);
    // Seconds are required: PostgreSQL's to_char always writes them.
    return end == text.size() - 1 && end >= 19 && text.back() == 'Z';
}

std::optional<std::string> parse_iso_time(std::string_view text) {
    if (!valid_date(text)) {
        return std::nullopt;
    }
    if (text.size() == 10) {
        return std::string(text) + "T00:00:00Z";
    }
    if (text[10] != 'T' && text[10] != 't' && text[10] != ' ') {
        return std::nullopt;
    }
    // PostgreSQL keeps microseconds; more digits would be rounded, which a bound must not be.
    size_t pos = valid_clock(text, 11, 6);
    if (pos == 0) {
        return std::nullopt;
    }
    std::string out(text.substr(0, pos));
    out[10] = 'T';
    std::string_view zone = text.substr(pos);
    if (zone.empty()) {
        return out + "Z";
    }
    if (zone == "Z" || zone == "z") {
        return out + "Z";
    }
    // +HH, +HHMM or +HH:MM.
    if (zone[0] != '+' && zone[0] != '-') {
        return std::nullopt;
    }
    bool ok = (zone.size() == 3 && digits(zone, 1, 2)) ||
              (zone.size() == 5 && digits(zone, 1, 4)) ||
              (zone.size() == 6 && digits(zone, 1, 2) && zone[3] == ':' && digits(zone, 4, 2));
    if (!ok || number(zone, 1, 2) > 14) {
        return std::nullopt;
    }
    return out + std::string(zone);
}

std::string encode_cursor(const Cursor& cursor) {
    // The time first: it never contains the separator, the id may.
    return base64url_encode(cursor.time + "|" + cursor.id);
}

std::optional<Cursor> decode_cursor(std::string_view text) {
    auto bytes = base64url_decode(text);
    if (!bytes) {
        return std::nullopt;
    }
    size_t bar = bytes->find('|');
    if (bar == std::string::npos) {
        return std::nullopt;
    }
    Cursor c{bytes->substr(0, bar), bytes->substr(bar + 1)};
    if (!is_utc_timestamp(c.time) || c.id.find('\0') != std::string::npos) {
        return std::nullopt;
    }
    return c;
}

QueryBuilder& QueryBuilder::add(std::string_view fragment,
                                std::vector<std::optional<std::string>> values) {
    size_t used = 0;
    for (size_t i = 0; i < fragment.size(); ++i) {
        if (fragment[i] == '$' && i + 1 < fragment.size() && fragment[i + 1] == '%') {
            params_.push_back(used < values.size() ? std::move(values[used]) : std::nullopt);
            ++used;
            sql_ += '$';
            sql_ += std::to_string(params_.size());
            ++i;
        } else {
            sql_ += fragment[i];
        }
    }
    return *this;
}

Query QueryBuilder::build() && {
    return Query{std::move(sql_), std::move(params_)};
}

ListRequest events_list_request(const ParamLookup& param) {
    ListRequest out;
    QueryBuilder q(sql::kConsoleEventsSelect);
    if (auto id = param("id")) {
        q.add(sql::kConsoleEventsById, {*id});
    }
    if (auto status = param("status")) {
        if (*status != "PENDING" && *status != "PROCESSING" && *status != "COMPLETED" &&
            *status != "FAILED") {
            out.error =
                "status \"" + *status + "\": allowed: PENDING, PROCESSING, COMPLETED, FAILED";
            return out;
        }
        q.add(sql::kConsoleEventsByStatus, {*status});
    }
    if (auto type = param("type")) {
        q.add(sql::kConsoleEventsByType, {*type});
    }
    if (auto tenant = param("tenant")) {
        q.add(sql::kConsoleEventsByTenant, {*tenant});
    }
    if (auto key = param("eventKey")) {
        q.add(sql::kConsoleEventsByEventKey, {*key});
    }
    if (auto key = param("orderingKey")) {
        q.add(sql::kConsoleEventsByOrderingKey, {*key});
    }
    for (auto [name, fragment] :
         {std::pair{"from", sql::kConsoleEventsFrom}, std::pair{"to", sql::kConsoleEventsTo}}) {
        if (auto text = param(name)) {
            auto time = parse_iso_time(*text);
            if (!time) {
                out.error = std::string(name) + " \"" + *text +
                            "\": allowed: an ISO 8601 date or time, as 2026-12-03 or "
                            "2026-12-03T18:41:50Z";
                return out;
            }
            q.add(fragment, {*time});
        }
    }
    auto after = parse_after(param, out.error);
    if (!out.error.empty()) {
        return out;
    }
    if (after) {
        q.add(sql::kConsoleEventsAfter, {after->time, after->time, after->id});
    }
    auto limit = parse_limit(param, out.error);
    if (!limit) {
        return out;
    }
    out.limit = *limit;
    q.add(sql::kConsoleEventsOrder, {std::to_string(*limit + 1)});
    out.query = std::move(q).build();
    return out;
}

ListRequest dlq_list_request(const ParamLookup& param) {
    ListRequest out;
    QueryBuilder q(sql::kConsoleDlqSelect);
    if (auto type = param("type")) {
        q.add(sql::kConsoleDlqByType, {*type});
    }
    if (auto tenant = param("tenant")) {
        q.add(sql::kConsoleDlqByTenant, {*tenant});
    }
    if (auto reason = param("reason")) {
        q.add(sql::kConsoleDlqByReason, {*reason});
    }
    auto after = parse_after(param, out.error);
    if (!out.error.empty()) {
        return out;
    }
    if (after) {
        q.add(sql::kConsoleDlqAfter, {after->time, after->time, after->id});
    }
    auto limit = parse_limit(param, out.error);
    if (!limit) {
        return out;
    }
    out.limit = *limit;
    q.add(sql::kConsoleDlqOrder, {std::to_string(*limit + 1)});
    out.query = std::move(q).build();
    return out;
}

ListRequest blocked_keys_request(const ParamLookup& param) {
    ListRequest out;
    auto after = parse_after(param, out.error);
    if (!out.error.empty()) {
        return out;
    }
    auto limit = parse_limit(param, out.error);
    if (!limit) {
        return out;
    }
    out.limit = *limit;
    Query query{sql::kConsoleBlockedKeys, {}};
    query.params.push_back(after ? std::optional<std::string>(after->time) : std::nullopt);
    query.params.push_back(after ? std::optional<std::string>(after->id) : std::nullopt);
    query.params.push_back(std::to_string(*limit + 1));
    out.query = std::move(query);
    return out;
}

namespace {

// A JSON object, or nullptr with `error` set.
Json parse_object(std::string_view body, std::string& error) {
    Json parsed = json_parse(body);
    if (!parsed || !cJSON_IsObject(parsed.get())) {
        error = "the body must be a JSON object";
        return nullptr;
    }
    return parsed;
}

// A member that must be a string when present; `ok` false when it is something else.
std::optional<std::string> string_member(const cJSON* object, const char* name, bool& ok,
                                         std::string& error) {
    const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, name);
    if (item == nullptr || cJSON_IsNull(item)) {
        return std::nullopt;
    }
    if (!cJSON_IsString(item)) {
        ok = false;
        error = std::string(name) + ": must be a string";
        return std::nullopt;
    }
    return std::string(item->valuestring);
}

} // namespace

DlqActionBody parse_dlq_action_body(std::string_view body) {
    DlqActionBody out;
    Json parsed = parse_object(body, out.error);
    if (!parsed) {
        return out;
    }
    const cJSON* ids = cJSON_GetObjectItemCaseSensitive(parsed.get(), "ids");
    const cJSON* filter = cJSON_GetObjectItemCaseSensitive(parsed.get(), "filter");
    if ((ids == nullptr) == (filter == nullptr)) {
        out.error = "give either \"ids\" or \"filter\"";
        return out;
    }
    if (ids != nullptr) {
        if (!cJSON_IsArray(ids)) {
            out.error = "ids: must be an array of strings";
            return out;
        }
        if (static_cast<size_t>(cJSON_GetArraySize(ids)) > kMaxActionIds) {
            out.error = "ids: at most " + std::to_string(kMaxActionIds) +
                        " at once (use a filter for more)";
            return out;
        }
        const cJSON* item = nullptr;
        cJSON_ArrayForEach(item, ids) {
            if (!cJSON_IsString(item)) {
                out.error = "ids: must be an array of strings";
                return out;
            }
            out.ids.emplace_back(item->valuestring);
        }
        out.by_ids = true;
        return out;
    }
    if (!cJSON_IsObject(filter)) {
        out.error = "filter: must be an object with type, tenant and reason";
        return out;
    }
    const cJSON* item = nullptr;
    cJSON_ArrayForEach(item, filter) {
        std::string_view name = item->string;
        if (name != "type" && name != "tenant" && name != "reason") {
            out.error = "filter." + std::string(name) + ": unknown; allowed: type, tenant, reason";
            return out;
        }
    }
    bool ok = true;
    auto member = [&](const char* name) {
        auto v = string_member(filter, name, ok, out.error);
        return v && !v->empty() ? v : std::nullopt;
    };
    out.type = member("type");
    out.tenant = member("tenant");
    out.reason = member("reason");
    if (!ok) {
        out.error = "filter." + out.error;
        return out;
    }
    const cJSON* all = cJSON_GetObjectItemCaseSensitive(parsed.get(), "all");
    if (all != nullptr && !cJSON_IsBool(all)) {
        out.error = "all: must be true or false";
        return out;
    }
    if (!out.type && !out.tenant && !out.reason && !cJSON_IsTrue(all)) {
        out.error = "an empty filter matches every entry: add \"all\": true to mean that";
        return out;
    }
    return out;
}

std::optional<std::string> parse_event_type_body(std::string_view body, std::string& error) {
    Json parsed = parse_object(body, error);
    if (!parsed) {
        return std::nullopt;
    }
    bool ok = true;
    auto type = string_member(parsed.get(), "eventType", ok, error);
    if (!ok) {
        return std::nullopt;
    }
    if (!type || type->empty() || type->size() > 1000) {
        error = "eventType: required, a string of 1 to 1000 characters";
        return std::nullopt;
    }
    return type;
}

std::optional<std::string> parse_login_body(std::string_view body, std::string& error) {
    Json parsed = parse_object(body, error);
    if (!parsed) {
        return std::nullopt;
    }
    bool ok = true;
    auto token = string_member(parsed.get(), "token", ok, error);
    if (!ok) {
        return std::nullopt;
    }
    if (!token) {
        error = "token: required";
        return std::nullopt;
    }
    return token;
}

std::string format_utc_ms(int64_t epoch_ms) {
    int64_t seconds = epoch_ms >= 0 ? epoch_ms / 1000 : (epoch_ms - 999) / 1000;
    int64_t ms = epoch_ms - seconds * 1000;
    std::time_t t = static_cast<std::time_t>(seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03d000Z", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(ms));
    return buf;
}

} // namespace outbox::console
