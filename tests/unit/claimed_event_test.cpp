// A claim's row turned into what the supervisor keeps per event (supervisor/claimed_event.h). The
// rows are built in memory with libpq's own result constructors, so no server is needed.
#include "common/protocol.h"
#include "supervisor/claimed_event.h"

#include <catch2/catch.hpp>

#include <libpq-fe.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

using namespace outbox;

namespace {

using Row = std::array<std::optional<std::string>, kClaimColumns>;

// A row as the claim returns it for an event with an EventLog row.
Row sample_row() {
    return {"ob_1",
            "2",
            "5",
            "shop.order.created",
            "1714564800123",
            "el_1",
            "order-7",
            "t1",
            std::nullopt,
            "shop.order.created",
            R"({"orderId": 12345678901234567890123})",
            std::nullopt,
            "",
            "2024-05-01T12:00:00.123456Z",
            "3",
            std::nullopt,
            std::nullopt};
}

// A text-format PGresult with `columns` columns holding `rows`.
PgResult make_result(const std::vector<Row>& rows, int columns = kClaimColumns) {
    PGresult* result = PQmakeEmptyPGresult(nullptr, PGRES_TUPLES_OK);
    REQUIRE(result != nullptr);
    std::vector<PGresAttDesc> attributes(static_cast<size_t>(columns));
    std::vector<std::string> names;
    for (int c = 0; c < columns; ++c) {
        names.push_back("c" + std::to_string(c));
    }
    for (int c = 0; c < columns; ++c) {
        attributes[static_cast<size_t>(c)] = PGresAttDesc{};
        attributes[static_cast<size_t>(c)].name = names[static_cast<size_t>(c)].data();
        attributes[static_cast<size_t>(c)].format = 0;
        attributes[static_cast<size_t>(c)].typlen = -1;
        attributes[static_cast<size_t>(c)].atttypmod = -1;
    }
    REQUIRE(PQsetResultAttrs(result, columns, attributes.data()) != 0);
    for (size_t r = 0; r < rows.size(); ++r) {
        for (int c = 0; c < columns && c < kClaimColumns; ++c) {
            const std::optional<std::string>& value = rows[r][static_cast<size_t>(c)];
            // A length of -1 is libpq's NULL.
            REQUIRE(PQsetvalue(result, static_cast<int>(r), c,
                               value ? const_cast<char*>(value->data()) : nullptr,
                               value ? static_cast<int>(value->size()) : -1) != 0);
        }
    }
    return PgResult(result);
}

std::string error_for(Row row) {
    const PgResult result = make_result({row});
    const auto claimed = claimed_event_from_row(result, 0);
    return claimed.ok() ? std::string() : claimed.error();
}

} // namespace

TEST_CASE("a claimed row becomes the supervisor's columns and the event's wire fields",
          "[claimed_event]") {
    Row other = sample_row();
    other[0] = "ob_2";
    other[6] = std::nullopt; // an Outbox row without its EventLog row
    other[11] = R"({"source": "api"})";
    other[16] = "customer-42"; // an ordered event
    const PgResult result = make_result({sample_row(), other});

    const auto first = claimed_event_from_row(result, 0);
    REQUIRE(first.ok());
    CHECK(first.value().id == "ob_1");
    CHECK(first.value().retry_count == 2);
    CHECK(first.value().max_retries == 5);
    CHECK(first.value().event_type == "shop.order.created");
    CHECK(first.value().created_at_ms == 1714564800123);

    const auto event = decode_event_fields(first.value().wire);
    REQUIRE(event.ok());
    CHECK(event.value().id == "ob_1");
    CHECK(event.value().event_log_id == "el_1");
    CHECK(event.value().event_key == "order-7");
    CHECK(event.value().tenant_id == "t1");
    CHECK_FALSE(event.value().project_id.has_value());
    CHECK(event.value().payload_json == R"({"orderId": 12345678901234567890123})");
    CHECK(event.value().metadata_json == "null");
    CHECK(event.value().correlation_id == std::optional<std::string>(""));
    CHECK(event.value().created_at == "2024-05-01T12:00:00.123456Z");
    CHECK(event.value().attempt == 3);
    CHECK_FALSE(event.value().ordering_key.has_value());

    const auto second = claimed_event_from_row(result, 1);
    REQUIRE(second.ok());
    const auto orphan = decode_event_fields(second.value().wire);
    REQUIRE(orphan.ok());
    CHECK(orphan.value().id == "ob_2");
    CHECK_FALSE(orphan.value().event_key.has_value());
    CHECK(orphan.value().metadata_json == R"({"source": "api"})");
    CHECK(orphan.value().ordering_key == std::optional<std::string>("customer-42"));
}

TEST_CASE("the claim's orderingKey travels to the handler process, the empty key too",
          "[claimed_event]") {
    Row row = sample_row();
    row[15] = R"(["search"])";
    row[16] = "";
    const PgResult result = make_result({row});
    const auto claimed = claimed_event_from_row(result, 0);
    REQUIRE(claimed.ok());
    const auto delivery = decode_event_delivery(claimed.value().wire);
    REQUIRE(delivery.ok());
    CHECK(delivery.value().subscribers_done_json == std::optional<std::string>(R"(["search"])"));
    // Null and the empty string stay apart, as for every nullable column.
    CHECK(delivery.value().event.ordering_key == std::optional<std::string>(""));
}

TEST_CASE("a malformed claimed row is an error naming the column, never a crash",
          "[claimed_event]") {
    CHECK(error_for(sample_row()).empty());

    const auto broken = [](int column, std::optional<std::string> value) {
        Row row = sample_row();
        row[static_cast<size_t>(column)] = std::move(value);
        return error_for(row);
    };
    CHECK_THAT(broken(0, std::nullopt), Catch::Contains("column 0 (id) is NULL"));
    CHECK_THAT(broken(1, "abc"), Catch::Contains("column 1 (retryCount) is not an integer"));
    CHECK_THAT(broken(1, "-1"), Catch::Contains("column 1 (retryCount) is -1, below 0"));
    CHECK_THAT(broken(1, "1 "), Catch::Contains("(retryCount) is not an integer"));
    CHECK_THAT(broken(1, " 1"), Catch::Contains("(retryCount) is not an integer"));
    CHECK_THAT(broken(1, ""), Catch::Contains("(retryCount) is not an integer"));
    CHECK_THAT(broken(2, "99999999999"), Catch::Contains("(maxRetries) is not an integer"));
    CHECK_THAT(broken(4, "1.5"), Catch::Contains("(createdAt (ms)) is not an integer"));
    CHECK_THAT(broken(5, std::nullopt), Catch::Contains("(eventLogId) is NULL"));
    CHECK_THAT(broken(10, ""), Catch::Contains("(payload) is empty"));
    CHECK_THAT(broken(13, std::nullopt), Catch::Contains("(createdAt) is NULL"));
    CHECK_THAT(broken(14, "0"), Catch::Contains("column 14 (attempt) is 0, below 1"));
    CHECK(broken(4, "-1000").empty()); // before 1970 is odd but representable

    const PgResult narrow = make_result({}, kClaimColumns - 1);
    const auto wrong_shape = claimed_event_from_row(narrow, 0);
    REQUIRE_FALSE(wrong_shape.ok());
    CHECK_THAT(wrong_shape.error(), Catch::Contains("16 columns, expected 17"));

    const PgResult one = make_result({sample_row()});
    for (const int row : {-1, 1}) {
        const auto missing = claimed_event_from_row(one, row);
        REQUIRE_FALSE(missing.ok());
        CHECK_THAT(missing.error(), Catch::Contains("does not exist"));
    }
    const PgResult empty;
    CHECK_FALSE(claimed_event_from_row(empty, 0).ok());
}
