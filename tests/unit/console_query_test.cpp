// The pure parts of the console's lists (supervisor/console_query.h): cursors, parameters and the
// SQL they become, and the latency quantiles of the overview's charts (supervisor/telemetry.h).
#include "supervisor/console_query.h"
#include "supervisor/telemetry.h"

#include <catch2/catch.hpp>

#include <map>
#include <string>

using namespace outbox::console;

namespace {

ParamLookup params(std::map<std::string, std::string> values) {
    return [values = std::move(values)](std::string_view name) -> std::optional<std::string> {
        auto it = values.find(std::string(name));
        if (it == values.end() || it->second.empty()) {
            return std::nullopt;
        }
        return it->second;
    };
}

} // namespace

TEST_CASE("base64url round-trips every length and rejects foreign characters", "[console]") {
    std::string bytes;
    for (int i = 0; i < 300; ++i) {
        bytes += static_cast<char>(i * 37 % 256);
        std::string encoded = base64url_encode(bytes);
        CHECK(encoded.find_first_of("+/=") == std::string::npos);
        REQUIRE(base64url_decode(encoded) == bytes);
    }
    CHECK(base64url_encode("") == "");
    CHECK(base64url_encode("f") == "Zg");
    CHECK(base64url_encode("fo") == "Zm8");
    CHECK(base64url_encode("foo") == "Zm9v");
    CHECK(base64url_decode("Zg==") == "f");
    CHECK(base64url_decode("Zm9v!") == std::nullopt);
    CHECK(base64url_decode("Z") == std::nullopt);
    CHECK(base64url_decode("a+b/") == std::nullopt);
}

TEST_CASE("cursors carry a time and any id, and only well-formed ones decode", "[console]") {
    Cursor c{"2026-12-03T18:41:50.123456Z", "obx_1|with|bars and spaces/é"};
    std::string text = encode_cursor(c);
    CHECK(text.find_first_not_of(
              "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
          std::string::npos);
    auto back = decode_cursor(text);
    REQUIRE(back);
    CHECK(back->time == c.time);
    CHECK(back->id == c.id);

    CHECK(decode_cursor(encode_cursor({"2026-12-03T18:41:50Z", ""})));
    CHECK_FALSE(decode_cursor("not a cursor"));
    CHECK_FALSE(decode_cursor(base64url_encode("no separator")));
    CHECK_FALSE(decode_cursor(base64url_encode("yesterday|obx_1")));
    CHECK_FALSE(decode_cursor(base64url_encode("2026-12-03 18:41:50Z|obx_1")));
    CHECK_FALSE(decode_cursor(base64url_encode("2026-12-03T18:41:50.1234567Z|x")));
    CHECK_FALSE(decode_cursor(base64url_encode("2026-13-03T18:41:50Z|x")));
    CHECK_FALSE(decode_cursor(base64url_encode("2026-12-03T18:41:50Z'; DROP TABLE x; --|x")));
}

TEST_CASE("times of from and to are ISO 8601, normalised for PostgreSQL", "[console]") {
    CHECK(parse_iso_time("2026-12-03") == "2026-12-03T00:00:00Z");
    CHECK(parse_iso_time("2026-12-03T18:41") == "2026-12-03T18:41Z");
    CHECK(parse_iso_time("2026-12-03 18:41:50") == "2026-12-03T18:41:50Z");
    CHECK(parse_iso_time("2026-12-03T18:41:50.5Z") == "2026-12-03T18:41:50.5Z");
    CHECK(parse_iso_time("2026-12-03T18:41:50+02:00") == "2026-12-03T18:41:50+02:00");
    CHECK(parse_iso_time("2026-12-03T18:41:50-0530") == "2026-12-03T18:41:50-0530");
    CHECK_FALSE(parse_iso_time("yesterday"));
    CHECK_FALSE(parse_iso_time("2026-12-03T25:00"));
    CHECK_FALSE(parse_iso_time("2026-12-03T18:41:50.1234567Z"));
    CHECK_FALSE(parse_iso_time("2026-12-03T18:41:50 UTC"));
    CHECK_FALSE(parse_iso_time("2026-12-03T18:41:50Z; SELECT 1"));
    CHECK_FALSE(parse_iso_time("2026-12-3"));
}

TEST_CASE("percent_decode decodes escapes and refuses broken ones", "[console]") {
    CHECK(percent_decode("obx_1") == "obx_1");
    CHECK(percent_decode("a%2Fb%20c") == "a/b c");
    CHECK(percent_decode("%e2%9c%93") == "\xe2\x9c\x93");
    CHECK_FALSE(percent_decode("a%2"));
    CHECK_FALSE(percent_decode("a%zz"));
    CHECK_FALSE(percent_decode("a%00b"));
}

TEST_CASE("the query builder numbers parameters in order", "[console]") {
    QueryBuilder q("SELECT 1 WHERE true");
    q.add(" AND a = $%", {"x"}).add(" AND b BETWEEN $% AND $%", {"1", "2"}).add(" LIMIT 5", {});
    Query built = std::move(q).build();
    CHECK(built.sql == "SELECT 1 WHERE true AND a = $1 AND b BETWEEN $2 AND $3 LIMIT 5");
    REQUIRE(built.params.size() == 3);
    CHECK(built.params[0] == "x");
    CHECK(built.params[2] == "2");
}

TEST_CASE("the events list takes only the filters given, each as a parameter", "[console]") {
    ListRequest none = events_list_request(params({}));
    REQUIRE(none.query);
    CHECK(none.limit == 50);
    REQUIRE(none.query->params.size() == 1);
    CHECK(none.query->params[0] == "51"); // one more than the page, to know whether more follow
    CHECK(none.query->sql.find("\"eventType\" = $") == std::string::npos);

    ListRequest all = events_list_request(params({{"id", "obx_1"},
                                                  {"status", "FAILED"},
                                                  {"type", "order.created"},
                                                  {"tenant", "t1"},
                                                  {"eventKey", "k'1"},
                                                  {"orderingKey", "ok"},
                                                  {"from", "2026-01-01"},
                                                  {"to", "2026-02-01T00:00:00Z"},
                                                  {"limit", "200"}}));
    REQUIRE(all.query);
    CHECK(all.limit == 200);
    REQUIRE(all.query->params.size() == 9);
    CHECK(all.query->params[4] == "k'1"); // a value, never spliced into the SQL
    CHECK(all.query->sql.find("k'1") == std::string::npos);
    CHECK(all.query->params.back() == "201");
    CHECK(all.query->sql.find("$9::int") != std::string::npos);

    Cursor c{"2026-12-03T18:41:50.123456Z", "obx_9"};
    ListRequest next = events_list_request(params({{"type", "a"}, {"after", encode_cursor(c)}}));
    REQUIRE(next.query);
    REQUIRE(next.query->params.size() == 5);
    CHECK(next.query->params[1] == c.time);
    CHECK(next.query->params[3] == "obx_9");
}

TEST_CASE("bad list parameters are refused by name", "[console]") {
    auto error = [](std::map<std::string, std::string> p) {
        ListRequest r = events_list_request(params(std::move(p)));
        CHECK_FALSE(r.query);
        return r.error;
    };
    CHECK(error({{"status", "DONE"}}).rfind("status", 0) == 0);
    CHECK(error({{"limit", "0"}}).rfind("limit", 0) == 0);
    CHECK(error({{"limit", "201"}}).rfind("limit", 0) == 0);
    CHECK(error({{"limit", "5x"}}).rfind("limit", 0) == 0);
    CHECK(error({{"from", "soon"}}).rfind("from", 0) == 0);
    CHECK(error({{"to", "2026-99-01"}}).rfind("to", 0) == 0);
    CHECK(error({{"after", "garbage"}}).rfind("after", 0) == 0);
    CHECK(dlq_list_request(params({{"limit", "-1"}})).error.rfind("limit", 0) == 0);
    CHECK(blocked_keys_request(params({{"after", "x"}})).error.rfind("after", 0) == 0);

    ListRequest dlq = dlq_list_request(params({{"reason", "timed out"}, {"limit", "1"}}));
    REQUIRE(dlq.query);
    CHECK(dlq.query->params.size() == 2);
    CHECK(dlq.query->params.back() == "2");
    ListRequest keys = blocked_keys_request(params({}));
    REQUIRE(keys.query);
    CHECK(keys.query->params.size() == 3);
    CHECK_FALSE(keys.query->params[0]);
}

TEST_CASE("histogram_quantile interpolates inside the bucket", "[console]") {
    std::vector<double> bounds = {0.1, 1, 10};
    CHECK(outbox::histogram_quantile(0.5, bounds, {0, 0, 0, 0}) == 0);
    // 10 observations, all in (0.1, 1]: the median is halfway through that bucket.
    CHECK(outbox::histogram_quantile(0.5, bounds, {0, 10, 10, 10}) == Approx(0.55));
    // 100 observations: 50 in the first bucket, 50 in the second.
    CHECK(outbox::histogram_quantile(0.5, bounds, {50, 100, 100, 100}) == Approx(0.1));
    CHECK(outbox::histogram_quantile(0.95, bounds, {50, 100, 100, 100}) == Approx(0.91));
    // Beyond the largest bound: that bound is the best we can say.
    CHECK(outbox::histogram_quantile(0.95, bounds, {0, 0, 0, 4}) == 10);
}

TEST_CASE("the history keeps rates per interval and at most 15 minutes", "[console]") {
    outbox::Telemetry t;
    t.sample_history(1000, 1'000'000);
    CHECK(t.history().empty());
    for (int i = 0; i < 10; ++i) {
        t.event_completed("a", 0.05);
    }
    t.event_retried("a");
    t.event_dead_lettered("a");
    t.sample_history(6000, 1'005'000);
    REQUIRE(t.history().size() == 1);
    const outbox::HistoryPoint& p = t.history().back();
    CHECK(p.at_ms == 1'005'000);
    CHECK(p.completed_per_s == Approx(2.0));
    CHECK(p.retried_per_s == Approx(0.2));
    CHECK(p.dead_lettered_per_s == Approx(0.2));
    CHECK(p.latency_p50_s > 0);
    CHECK(p.latency_p50_s <= 0.05 + 1e-9);
    t.sample_history(11000, 1'010'000);
    CHECK(t.history().back().completed_per_s == 0);
    CHECK(t.history().back().latency_p95_s == 0);
    for (int i = 0; i < 400; ++i) {
        t.sample_history(11000 + 5000 * static_cast<uint64_t>(i + 1), 0);
    }
    CHECK(t.history().size() == outbox::Telemetry::kHistoryPoints);
}
