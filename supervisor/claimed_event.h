// One row of the claim (sql::kClaim) turned into what the supervisor keeps per claimed event.
//
// The supervisor never builds or parses JSON for an event: it copies the few columns it needs
// itself (id, retry counts, type, creation time) and encodes the event's fields of SPEC 2 once,
// here, into the bytes that every EVENT frame for this claim carries (encode_event_fields in
// common/protocol.h). Payload and metadata pass through as PostgreSQL's jsonb text.
#pragma once

#include "common/pg.h"
#include "common/protocol.h"

#include <cstdint>
#include <string>

namespace outbox {

// Columns of the claim's result that describe the event, in the order of sql::kClaim. One more
// column follows them: whether the row was claimed or parked, which the store reads.
inline constexpr int kClaimColumns = 17;

struct ClaimedEvent {
    std::string id; // "Outbox".id
    int retry_count = 0;
    int max_retries = 0;
    std::string event_type;    // the "Outbox" row's, which the subscribers' timeouts are matched on
    int64_t created_at_ms = 0; // the "Outbox" row's "createdAt", epoch milliseconds
    std::string wire;          // the event's fields, encoded for encode_event_frame
};

// Reads row `row` of a claim result. Contract:
// - `result` is the successful result of sql::kClaim, with at least kClaimColumns text-format
// columns,
//   and 0 <= row < result.rows(); anything else is reported as an error, not a crash.
// - Integers are read exactly (std::from_chars, the whole value, no sign or space tolerated
//   where PostgreSQL would not write one) and checked: retryCount and maxRetries >= 0, attempt
//   >= 1. Required columns must not be NULL; payload must not be empty.
// - A malformed row is an error naming the column, returned as a value; nothing here throws or
//   aborts. The caller decides what to do with the event (the row stays claimed under its lease).
// - Nothing is kept from `result`: the returned value owns its bytes.
[[nodiscard]] Decoded<ClaimedEvent> claimed_event_from_row(const PgResult& result, int row);

} // namespace outbox
