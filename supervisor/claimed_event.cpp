#include "supervisor/claimed_event.h"

#include <charconv>
#include <optional>
#include <string_view>

namespace outbox {

namespace {

enum Column : int {
    kId = 0,
    kRetryCount,
    kMaxRetries,
    kOutboxEventType,
    kCreatedAtMs,
    kEventLogId,
    kEventKey,
    kTenantId,
    kProjectId,
    kEventType,
    kPayload,
    kMetadata,
    kCorrelationId,
    kCreatedAt,
    kAttempt,
    kSubscribersDone,
    kOrderingKey,
};
static_assert(kOrderingKey + 1 == kClaimColumns);

const char* column_name(int column) {
    static constexpr const char* kNames[kClaimColumns] = {"id",
                                                          "retryCount",
                                                          "maxRetries",
                                                          "eventType (Outbox)",
                                                          "createdAt (ms)",
                                                          "eventLogId",
                                                          "eventKey",
                                                          "tenantId",
                                                          "projectId",
                                                          "eventType",
                                                          "payload",
                                                          "metadata",
                                                          "correlationId",
                                                          "createdAt",
                                                          "attempt",
                                                          "subscribersDone",
                                                          "orderingKey"};
    return kNames[column];
}

// Reads the columns of one row, remembering the first problem.
class RowReader {
  public:
    RowReader(const PgResult& result, int row) : result_(result), row_(row) {}

    bool ok() const { return error_.empty(); }
    const std::string& error() const { return error_; }

    std::string_view text(int column) {
        if (!ok()) {
            return {};
        }
        if (result_.is_null(row_, column)) {
            fail(column, "is NULL");
            return {};
        }
        return result_.view(row_, column);
    }

    std::optional<std::string_view> nullable_text(int column) {
        if (!ok() || result_.is_null(row_, column)) {
            return std::nullopt;
        }
        return result_.view(row_, column);
    }

    template <typename Integer>
    Integer integer(int column, Integer min) {
        const std::string_view digits = text(column);
        if (!ok()) {
            return min;
        }
        Integer value{};
        const auto [end, error] =
            std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (error != std::errc() || end != digits.data() + digits.size()) {
            fail(column, "is not an integer of the expected range");
            return min;
        }
        if (value < min) {
            fail(column, "is " + std::to_string(value) + ", below " + std::to_string(min));
            return min;
        }
        return value;
    }

    void fail(int column, const std::string& problem) {
        if (ok()) {
            error_ = std::string("claimed row ") + std::to_string(row_) + ": column " +
                     std::to_string(column) + " (" + column_name(column) + ") " + problem;
        }
    }

  private:
    const PgResult& result_;
    int row_;
    std::string error_;
};

} // namespace

Decoded<ClaimedEvent> claimed_event_from_row(const PgResult& result, int row) {
    if (result.get() == nullptr || result.columns() < kClaimColumns) {
        return Decoded<ClaimedEvent>::failure(
            "the claim returned " + std::to_string(result.columns()) + " columns, expected " +
            std::to_string(kClaimColumns) + " or more");
    }
    if (row < 0 || row >= result.rows()) {
        return Decoded<ClaimedEvent>::failure("claimed row " + std::to_string(row) +
                                              " does not exist (the claim returned " +
                                              std::to_string(result.rows()) + " rows)");
    }
    RowReader reader(result, row);
    ClaimedEvent claimed;
    const std::string_view id = reader.text(kId);
    claimed.retry_count = reader.integer<int>(kRetryCount, 0);
    claimed.max_retries = reader.integer<int>(kMaxRetries, 0);
    const std::string_view outbox_event_type = reader.text(kOutboxEventType);
    claimed.created_at_ms = reader.integer<int64_t>(kCreatedAtMs, INT64_MIN);

    EventFieldsView fields;
    fields.id = id;
    fields.event_log_id = reader.text(kEventLogId);
    fields.event_key = reader.nullable_text(kEventKey);
    fields.tenant_id = reader.text(kTenantId);
    fields.project_id = reader.nullable_text(kProjectId);
    fields.event_type = reader.text(kEventType);
    fields.payload_json = reader.text(kPayload);
    if (reader.ok() && fields.payload_json.empty()) {
        reader.fail(kPayload, "is empty");
    }
    fields.metadata_json = reader.nullable_text(kMetadata);
    fields.correlation_id = reader.nullable_text(kCorrelationId);
    fields.created_at = reader.text(kCreatedAt);
    fields.attempt = reader.integer<int>(kAttempt, 1);
    // Subscribers that already succeeded (SPEC 2): passed on as PostgreSQL printed the array,
    // for the handler process to read (it runs only the others).
    fields.subscribers_done_json = reader.nullable_text(kSubscribersDone);
    // For broker subscribers: the message key, and ${orderingKey} in a destination.
    fields.ordering_key = reader.nullable_text(kOrderingKey);
    if (!reader.ok()) {
        return Decoded<ClaimedEvent>::failure(reader.error());
    }
    claimed.id.assign(id);
    claimed.event_type.assign(outbox_event_type);
    claimed.wire = encode_event_fields(fields);
    return Decoded<ClaimedEvent>::success(std::move(claimed));
}

} // namespace outbox
