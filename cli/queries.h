// Every statement the command line runs, in one place, as SQL. Parameters are text-format.
#pragma once

namespace outbox::cli::sql {

// stats, in one statement so that the numbers come from one snapshot: rows by status, the DLQ
// size and the age in seconds of the oldest due event (SPEC 2's definition of due; an event parked
// behind an earlier event of its ordering key is waiting, not due), which the claim's partial
// index "Outbox_worker_claim_idx" answers cheaply.
inline constexpr const char* kStats = R"sql(
SELECT count(*) FILTER (WHERE o."status" = 'PENDING'),
       count(*) FILTER (WHERE o."status" = 'PROCESSING'),
       count(*) FILTER (WHERE o."status" = 'COMPLETED'),
       count(*) FILTER (WHERE o."status" = 'FAILED'),
       (SELECT count(*) FROM "DlqEventLog"),
       (SELECT extract(epoch FROM now() - d."createdAt")::float8
          FROM "Outbox" d
         WHERE d."status" = 'PENDING' AND NOT d."orderingParked"
           AND (d."nextRetryAt" IS NULL OR d."nextRetryAt" <= now())
         ORDER BY d."createdAt"
         LIMIT 1)
  FROM "Outbox" o
)sql";

// dlq list: newest first. $1 event type or NULL, $2 tenant or NULL, $3 limit.
inline constexpr const char* kDlqList = R"sql(
SELECT d."id", d."originalId", d."eventType", d."tenantId", d."retryCount",
       to_char(d."failedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
       d."failureReason", d."eventKey", d."projectId", d."orderingKey"
  FROM "DlqEventLog" d
 WHERE ($1::text IS NULL OR d."eventType" = $1)
   AND ($2::text IS NULL OR d."tenantId" = $2)
 ORDER BY d."failedAt" DESC, d."id"
 LIMIT $3::int
)sql";

// dlq retry --all: the ids to retry, oldest failure first. $1 event type or NULL.
inline constexpr const char* kDlqIds = R"sql(
SELECT d."id" FROM "DlqEventLog" d
 WHERE ($1::text IS NULL OR d."eventType" = $1)
 ORDER BY d."failedAt", d."id"
)sql";

// dlq retry: the migration's function does the work in one transaction (SPEC 2, "Retry from
// DLQ"); it raises no_data_found (P0002) for an unknown id.
inline constexpr const char* kDlqRetry = R"sql(
SELECT outbox_retry_dlq($1)
)sql";

// dlq skip: releases the key an ordered dead-lettered event blocks (SPEC 2a); the function raises
// no_data_found (P0002) for an unknown id. The entry stays in the queue, so the subquery finds its
// key whatever the function answered, and both read the statement's one snapshot.
inline constexpr const char* kDlqSkip = R"sql(
SELECT outbox_skip_dlq($1),
       (SELECT d."orderingKey" FROM "DlqEventLog" d WHERE d."id" = $1)
)sql";

// dlq purge. $1 age in seconds.
inline constexpr const char* kDlqPurgeOlderThan = R"sql(
DELETE FROM "DlqEventLog" WHERE "failedAt" < now() - $1::bigint * interval '1 second'
)sql";

inline constexpr const char* kDlqPurgeAll = R"sql(
DELETE FROM "DlqEventLog"
)sql";

// ordering set: the migration's function validates the rule (invalid_parameter_value, 22023,
// with a message naming the rule and what is allowed), stores it and returns it, or 'none'.
inline constexpr const char* kOrderingSet = R"sql(
SELECT outbox_worker_ordering_set($1)
)sql";

// ordering show: no row when there is no rule.
inline constexpr const char* kOrderingShow = R"sql(
SELECT s.rule, to_char(s.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
  FROM outbox_worker_ordering_show() s
)sql";

// ordering blocked: the longest-blocked keys first; the last column is how long, in seconds.
inline constexpr const char* kOrderingBlocked = R"sql(
SELECT b.ordering_key, b.head_id, b.head_status, b.reason,
       to_char(b.blocked_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), b.waiting,
       extract(epoch FROM now() - b.blocked_since)::float8
  FROM outbox_worker_blocked_keys b
 ORDER BY b.blocked_since NULLS LAST, b.ordering_key
)sql";

} // namespace outbox::cli::sql
