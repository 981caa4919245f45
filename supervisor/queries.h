// Every statement the supervisor runs, in one place, as SQL. Parameters are text-format; arrays
// arrive as PostgreSQL array literals (pg_text_array). Each statement is a single round trip and a
// single implicit transaction, which is what makes the multi-part ones (results with their DLQ
// inserts, the lease sweep) atomic.
#pragma once

#include <array>
#include <cstddef>

namespace outbox::sql {

// Joins string literals at compile time, for statements that share a part written once.
template <size_t... N>
consteval auto join(const char (&... parts)[N]) {
    std::array<char, (N + ...) - sizeof...(N) + 1> out{};
    size_t at = 0;
    auto append = [&](const char* p, size_t n) {
        for (size_t i = 0; i + 1 < n; ++i) {
            out[at++] = p[i];
        }
    };
    (append(parts, N), ...);
    out[at] = '\0';
    return out;
}

// The dead-letter insert, written once and shared by every statement that dead-letters (the
// outcome statements and the lease sweep): from a CTE named `upd` returning the updated Outbox
// rows with `kind` (2 = dead letter) and `err` (the failure reason), one "DlqEventLog" row per
// dead-lettered event, in the same statement and so the same transaction as the Outbox update.
// The EventLog row supplies eventKey, projectId and metadata when it exists. The ordering key and
// number and the subscribers that had succeeded travel with it (migration 004), for its retry.
inline constexpr char kDlqInsertFromUpd[] = R"sql(
    INSERT INTO "DlqEventLog" ("id", "originalId", "eventKey", "tenantId", "projectId", "eventType",
                               "payload", "metadata", "failureReason", "retryCount",
                               "orderingKey", "orderingSeq", "subscribersDone")
    SELECT 'dlq_' || replace(gen_random_uuid()::text, '-', ''), u."id",
           COALESCE(e."eventKey", u."eventLogId"), u."tenantId", e."projectId", u."eventType",
           u."payload", e."metadata", COALESCE(u.err, 'unknown error'), u."retryCount",
           u."orderingKey", u."orderingSeq", u."subscribersDone"
      FROM upd u LEFT JOIN "EventLog" e ON e."id" = u."eventLogId"
     WHERE u.kind = 2)sql";

// The channel the insert trigger of migration 002 notifies (there, in SQL, it is spelled out; in
// C++ only here).
inline constexpr char kNotifyChannel[] = "outbox_worker";

// Claims up to $2 due events, oldest first, and returns each as plain columns: what the
// supervisor keeps per event, then the event's fields of SPEC 2 (EventLog fields when the row
// exists, else the Outbox row's). PostgreSQL builds no JSON here: the supervisor encodes the
// columns for the channel as they are (supervisor/claimed_event.h), and payload and metadata are
// jsonb's text output, which is always valid JSON.
//   $1 lease owner, $2 limit, $3 LIKE patterns of the subscribed types (NULL: every type),
//   $4 lease token of this claim, $5 lease length in ms.
// Columns (claimed_event.h relies on this order): 0 id, 1 retryCount, 2 maxRetries, 3 the Outbox
// row's eventType, 4 its createdAt in epoch ms (for the latency metric), then the event's fields:
// 5 eventLogId, 6 eventKey (NULL without an EventLog row), 7 tenantId, 8 projectId, 9 eventType,
// 10 payload, 11 metadata, 12 correlationId, 13 createdAt (ISO 8601 UTC, microseconds),
// 14 attempt (retryCount + 1), 15 subscribersDone (a JSON array of names, or NULL).
// 16 whether the row was claimed: "f" for a candidate that was parked instead (below), which
// tells the relay that a short claim does not mean nothing more is due. (A candidate whose key
// was busy at that instant is neither taken nor parked nor returned: the release that made it
// busy wakes every instance when it commits.) Parking and claiming are one UPDATE, because a
// second data-modifying part cost more planning time than it saved.
// SKIP LOCKED lets any number of instances claim at once without waiting on each other; a row
// another transaction is claiming is simply not ours this time.
// Paused types (migration 005, POST /api/pause) are passed over: every instance reads the table at
// each claim, so a pause holds from the next claim on, everywhere; events already claimed finish.
// Ordering per key (SPEC 2a, migration 004): an event with a key is taken only when it is its
// key's head: orderingSeq = done_seq + 1, or no event of the key still to deliver lies between
// (a number drawn for a row that was never inserted is a hole, not a wait; the index probe runs
// only for events that are not the next number); one that is not is parked, which takes it out
// of the claim's index until its key reaches it. A row given a key by a later UPDATE has no
// number and is taken as unordered rather than left in everyone's way.
// The head test reads done_seq twice. First as of the statement's snapshot, without a lock:
// done_seq only grows, and the event itself is locked by this claim, so "it is the head" read from
// an older snapshot is still true; that settles the usual case, the key's next event, without
// writing a row lock. Only an event that looks like it is not the head is tested again under FOR
// SHARE of the head row, before it is parked. done_seq is read FOR SHARE so that a head being
// released right now (whose release updates that row) is neither taken nor parked by this claim
// (SKIP LOCKED gives NULL), and a park can never slip in after the release that would have unparked
// it.
// Paused event types (migration 005, the console) are skipped: the list is read once per claim (an
// InitPlan), so a pause holds from every instance's next claim. The test is written as a CASE on
// purpose. As NOT EXISTS (a hash anti join) or as "<> ALL (ARRAY(...))" the planner estimates its
// selectivity from the type's statistics against an array it cannot see, which for a table of few
// event types comes out near zero: it then reads and sorts every PENDING row instead of walking the
// claim's index for one batch (a sixth of the throughput, measured: docs/PERFORMANCE.md). A CASE
// gets the planner's fixed default selectivity, which keeps the index walk whatever the data.
inline constexpr const char* kClaim = R"sql(
WITH cand AS (
    SELECT o."id", o."eventLogId",
           CASE WHEN o."orderingKey" IS NULL OR o."orderingSeq" IS NULL THEN true
                WHEN o."orderingSeq" <= (SELECT h.done_seq FROM outbox_worker_ordering_head h
                                          WHERE h.key = o."orderingKey") + 1 THEN true
                ELSE (SELECT o."orderingSeq" <= h.done_seq + 1
                             OR NOT EXISTS (
                                 SELECT 1 FROM "Outbox" p
                                  WHERE p."orderingKey" = o."orderingKey"
                                    AND p."orderingSeq" > h.done_seq
                                    AND p."orderingSeq" < o."orderingSeq"
                                    AND p."status" <> 'COMPLETED')
                        FROM outbox_worker_ordering_head h
                       WHERE h.key = o."orderingKey"
                         FOR SHARE OF h SKIP LOCKED)
           END AS head
      FROM "Outbox" o
     WHERE o."status" = 'PENDING' AND NOT o."orderingParked"
       AND (o."nextRetryAt" IS NULL OR o."nextRetryAt" <= now())
       AND ($3::text[] IS NULL OR o."eventType" LIKE ANY ($3::text[]))
       AND CASE WHEN o."eventType" = ANY (ARRAY(SELECT p."eventType" FROM outbox_worker_paused p))
                THEN false ELSE true END
     ORDER BY o."createdAt"
     LIMIT $2::int
       FOR UPDATE OF o SKIP LOCKED
)
UPDATE "Outbox" o
   SET "status" = CASE WHEN cand.head THEN 'PROCESSING'::"OutboxStatus" ELSE o."status" END,
       "orderingParked" = NOT cand.head,
       "leaseOwner" = CASE WHEN cand.head THEN $1 ELSE o."leaseOwner" END,
       "leaseToken" = CASE WHEN cand.head THEN $4::bigint ELSE o."leaseToken" END,
       "leaseExpiresAt" = CASE WHEN cand.head
                               THEN now() + $5::bigint * interval '1 millisecond'
                               ELSE o."leaseExpiresAt" END,
       "updatedAt" = now()
  FROM cand
  LEFT JOIN "EventLog" e ON e."id" = cand."eventLogId"
 WHERE o."id" = cand."id" AND cand.head IS NOT NULL
RETURNING o."id", o."retryCount", o."maxRetries", o."eventType",
          (extract(epoch FROM o."createdAt") * 1000)::bigint,
          o."eventLogId",
          e."eventKey",
          COALESCE(e."tenantId", o."tenantId"),
          e."projectId",
          COALESCE(e."eventType", o."eventType"),
          COALESCE(e."payload", o."payload"),
          e."metadata",
          e."correlationId",
          to_char(COALESCE(e."createdAt", o."createdAt") AT TIME ZONE 'UTC',
                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
          o."retryCount" + 1,
          to_json(o."subscribersDone")::text,
          o."orderingKey",
          cand.head
)sql";

// The common case: a batch of outcomes that are all successes. A plain UPDATE (or, with
// OUTBOX_ON_COMPLETE=delete, a DELETE) joined to the arrays, without the CTEs, the dead-letter
// insert and the final join of kRecordResults: PostgreSQL plans every call of a statement anew
// (plan_cache_mode = force_custom_plan), and planning the full statement took 1.6 ms, longer than
// running it for 40 events. Fenced like kRecordResults.
//   $1 ids, $2 tokens
// Returns the 1-based positions of the rows applied. The others (rare: a lost lease, or a retry
// after a connection broke mid-commit) are told apart by kRecordedBefore.
inline constexpr const char* kRecordSuccesses = R"sql(
UPDATE "Outbox" o
   SET "status" = 'COMPLETED', "lastError" = NULL, "processedAt" = now(), "leaseExpiresAt" = NULL,
       "updatedAt" = now()
  FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(id, token, n)
 WHERE o."id" = r.id AND o."leaseToken" = r.token AND o."status" = 'PROCESSING'
RETURNING r.n
)sql";
inline constexpr const char* kDeleteSuccesses = R"sql(
DELETE FROM "Outbox" o
 USING unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(id, token, n)
 WHERE o."id" = r.id AND o."leaseToken" = r.token AND o."status" = 'PROCESSING'
RETURNING r.n
)sql";

// For successes that kRecordSuccesses or kDeleteSuccesses did not apply: whether each had been
// recorded before (the row is COMPLETED under this claim's token, or gone in delete mode) rather
// than taken over by another instance.
//   $1 ids, $2 tokens
// Returns one row per input: its 1-based position and whether it was recorded before.
inline constexpr const char* kRecordedBefore = R"sql(
SELECT r.n, (o."id" IS NULL OR (o."leaseToken" = r.token AND o."status" = 'COMPLETED')) AS already
  FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(id, token, n)
  LEFT JOIN "Outbox" o ON o."id" = r.id
)sql";

// Records the outcome of many attempts at once. Per input row: kind 0 = success (COMPLETED),
// 1 = retry (back to PENDING after delay_ms), 2 = dead letter (FAILED plus a "DlqEventLog" row, in
// this same statement and so the same transaction).
// Fenced: a row changes only while it is PROCESSING under this claim's token. The token stays on
// the row afterwards, which lets the final SELECT tell a lost lease (someone else's claim now)
// from a result that was already recorded (a retry after a connection broke mid-commit).
//   $1 ids, $2 tokens, $3 kinds, $4 errors, $5 delays (ms), $6 subscribers that succeeded in
//   this attempt (per row a JSON array of names, or NULL), added to "subscribersDone" with a
//   retry or dead letter so that the next attempt runs only the others (SPEC 2)
// Returns one row per input row that this statement did NOT change: its 1-based position in the
// input, and whether the outcome had been recorded before (a retry after a connection broke
// mid-commit); otherwise the lease was lost. Every input row not returned was applied. Returning
// only the exceptions keeps the usual case to the updates themselves (no second index probe per
// row, no result rows). The filter is a NOT IN over the CTE, which PostgreSQL hashes; a join on
// the CTE was planned as a nested loop, quadratic in the batch size (docs/PERFORMANCE.md).
// The final SELECT reads "Outbox" as it was before this statement (PostgreSQL shows a statement's
// own data-modifying CTEs to none of its other parts), which is what `prev` needs. A row still
// carrying the claim's token is "recorded before" only when it holds exactly this outcome: the
// lease sweep leaves the token on a row it returns to PENDING, and that is a lost lease.
inline constexpr auto kRecordResultsText = join(R"sql(
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], $5::bigint[],
                         $6::text[])
                  WITH ORDINALITY AS r(id, token, kind, err, delay_ms, done, n)
),
upd AS (
    UPDATE "Outbox" o
       SET "status" = (CASE r.kind WHEN 0 THEN 'COMPLETED' WHEN 1 THEN 'PENDING' ELSE 'FAILED' END)::"OutboxStatus",
           "retryCount" = CASE WHEN r.kind = 0 THEN o."retryCount" ELSE o."retryCount" + 1 END,
           "lastError" = CASE WHEN r.kind = 0 THEN NULL ELSE r.err END,
           "processedAt" = CASE WHEN r.kind = 0 THEN now() ELSE o."processedAt" END,
           "nextRetryAt" = CASE WHEN r.kind = 1 THEN now() + r.delay_ms * interval '1 millisecond'
                                ELSE o."nextRetryAt" END,
           "subscribersDone" = CASE WHEN r.done IS NULL THEN o."subscribersDone" ELSE ARRAY(
               SELECT DISTINCT name FROM unnest(o."subscribersDone" || ARRAY(
                   SELECT json_array_elements_text(r.done::json))) AS name ORDER BY name) END,
           "leaseExpiresAt" = NULL,
           "updatedAt" = now()
      FROM r
     WHERE o."id" = r.id AND o."leaseToken" = r.token AND o."status" = 'PROCESSING'
    RETURNING r.n, r.kind, o."id", o."eventLogId", o."tenantId", o."eventType", o."payload",
              o."retryCount", r.err, o."orderingKey", o."orderingSeq", o."subscribersDone"
),
dlq AS (
)sql",
                                                kDlqInsertFromUpd, R"sql(
)
SELECT r.n, (prev."id" IS NOT NULL) AS already
  FROM r
  LEFT JOIN "Outbox" prev ON prev."id" = r.id AND prev."leaseToken" = r.token
                         AND prev."status" = (CASE r.kind WHEN 0 THEN 'COMPLETED' WHEN 1 THEN 'PENDING'
                                              ELSE 'FAILED' END)::"OutboxStatus"
                         AND prev."lastError" IS NOT DISTINCT FROM (CASE WHEN r.kind = 0 THEN NULL ELSE r.err END)
 WHERE r.n NOT IN (SELECT n FROM upd)
)sql");
inline constexpr const char* kRecordResults = kRecordResultsText.data();

// The same for OUTBOX_ON_COMPLETE=delete (SPEC 2): a success deletes the Outbox row instead of
// marking it COMPLETED (the "EventLog" row keeps the history). Successes come in arrays of their
// own: they need only id and token, and the DELETE joins them by hash like the UPDATE (a kind
// filter on one shared array made the planner expect one row and join by nested loop, quadratic
// in the batch).
//   $1 success ids, $2 success tokens,
//   $3 failure ids, $4 failure tokens, $5 kinds (1 retry, 2 dead letter), $6 errors, $7 delays,
//   $8 subscribers that succeeded in the failed attempt (as kRecordResults' $6)
// Returns the rows not applied as in kRecordResults, numbered successes first (1..#$1), then
// failures (#$1+1..). A success not applied whose row is gone was recorded before: its earlier
// statement committed and deleted the row. (The row could also have been completed and deleted by
// another instance after this one lost the lease; either way the event was delivered, and neither
// is counted again.)
inline constexpr auto kRecordResultsDeleteText = join(R"sql(
WITH ok AS (
    SELECT * FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS ok(id, token, n)
),
r AS (
    SELECT id, token, kind, err, delay_ms, done, n + cardinality($1::text[]) AS n
      FROM unnest($3::text[], $4::bigint[], $5::int[], $6::text[], $7::bigint[], $8::text[])
           WITH ORDINALITY AS f(id, token, kind, err, delay_ms, done, n)
),
del AS (
    DELETE FROM "Outbox" o USING ok
     WHERE o."id" = ok.id AND o."leaseToken" = ok.token AND o."status" = 'PROCESSING'
    RETURNING ok.n
),
upd AS (
    UPDATE "Outbox" o
       SET "status" = (CASE r.kind WHEN 1 THEN 'PENDING' ELSE 'FAILED' END)::"OutboxStatus",
           "retryCount" = o."retryCount" + 1,
           "lastError" = r.err,
           "nextRetryAt" = CASE WHEN r.kind = 1 THEN now() + r.delay_ms * interval '1 millisecond'
                                ELSE o."nextRetryAt" END,
           "subscribersDone" = CASE WHEN r.done IS NULL THEN o."subscribersDone" ELSE ARRAY(
               SELECT DISTINCT name FROM unnest(o."subscribersDone" || ARRAY(
                   SELECT json_array_elements_text(r.done::json))) AS name ORDER BY name) END,
           "leaseExpiresAt" = NULL,
           "updatedAt" = now()
      FROM r
     WHERE o."id" = r.id AND o."leaseToken" = r.token AND o."status" = 'PROCESSING'
    RETURNING r.n, r.kind, o."id", o."eventLogId", o."tenantId", o."eventType", o."payload",
              o."retryCount", r.err, o."orderingKey", o."orderingSeq", o."subscribersDone"
),
dlq AS (
)sql",
                                                      kDlqInsertFromUpd, R"sql(
)
SELECT ok.n, (cur."id" IS NULL) AS already
  FROM ok LEFT JOIN "Outbox" cur ON cur."id" = ok.id
 WHERE ok.n NOT IN (SELECT n FROM del)
UNION ALL
SELECT r.n, (cur."id" IS NOT NULL) AS already
  FROM r
  LEFT JOIN "Outbox" cur ON cur."id" = r.id AND cur."leaseToken" = r.token
                        AND cur."status" = (CASE r.kind WHEN 1 THEN 'PENDING' ELSE 'FAILED' END)::"OutboxStatus"
                        AND cur."lastError" IS NOT DISTINCT FROM r.err
 WHERE r.n NOT IN (SELECT n FROM upd)
)sql");
inline constexpr const char* kRecordResultsDelete = kRecordResultsDeleteText.data();

// Extends the leases of events this instance still holds. Returns the 1-based positions of the
// leases renewed; the others were lost (swept and possibly claimed by another instance): their
// results will be fenced off.
//   $1 ids, $2 tokens, $3 lease length in ms
inline constexpr const char* kRenewLeases = R"sql(
UPDATE "Outbox" o
   SET "leaseExpiresAt" = now() + $3::bigint * interval '1 millisecond', "updatedAt" = now()
  FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS r(id, token, n)
 WHERE o."id" = r.id AND o."leaseToken" = r.token AND o."status" = 'PROCESSING'
RETURNING r.n
)sql";

// Gives back claimed events that never started (draining, or handed back after a handler process
// died with them queued behind the running one): due again, no attempt charged. The NOTIFY lets
// other instances pick them up at once.
//   $1 ids, $2 tokens
inline constexpr auto kReleaseText = join(R"sql(
WITH rel AS (
    UPDATE "Outbox" o
       SET "status" = 'PENDING', "leaseExpiresAt" = NULL, "leaseOwner" = NULL, "updatedAt" = now()
      FROM unnest($1::text[], $2::bigint[]) AS r(id, token)
     WHERE o."id" = r.id AND o."leaseToken" = r.token AND o."status" = 'PROCESSING'
    RETURNING o."id"
)
SELECT count(*), pg_notify(')sql",
                                          kNotifyChannel, R"sql(', '') FROM rel
)sql");
inline constexpr const char* kRelease = kReleaseText.data();

// Returns events whose lease ran out (their instance died or lost the database for longer than a
// lease) to due, charging the attempt ("lease expired"); an event out of attempts goes to the DLQ
// in the same statement. The claim's token is cleared, so that no late outcome of the swept claim
// can be taken for one recorded before (the outcome statements' `already`) instead of a lost
// lease. Rows left PROCESSING without a lease (by the Node.js worker this service
// replaces) count as expired once untouched for a lease length. Any instance may sweep; SKIP
// LOCKED keeps two sweeps (or a sweep and a renewal) from charging one event twice.
//   $1 lease length in ms (for lease-less rows), $2 batch limit
inline constexpr auto kSweepExpiredLeasesText = join(R"sql(
WITH expired AS (
    SELECT o."id"
      FROM "Outbox" o
     WHERE o."status" = 'PROCESSING'
       AND (o."leaseExpiresAt" < now()
            OR (o."leaseExpiresAt" IS NULL AND o."updatedAt" < now() - $1::bigint * interval '1 millisecond'))
     LIMIT $2::int
       FOR UPDATE SKIP LOCKED
),
upd AS (
    UPDATE "Outbox" o
       SET "status" = (CASE WHEN o."retryCount" + 1 >= o."maxRetries" THEN 'FAILED' ELSE 'PENDING' END)::"OutboxStatus",
           "retryCount" = o."retryCount" + 1,
           "lastError" = 'lease expired (owner ' || COALESCE(o."leaseOwner", 'unknown') || ')',
           "nextRetryAt" = now(),
           "leaseExpiresAt" = NULL,
           "leaseToken" = NULL,
           "updatedAt" = now()
      FROM expired
     WHERE o."id" = expired."id"
    RETURNING o."id", (CASE WHEN o."status" = 'FAILED' THEN 2 ELSE 1 END) AS kind,
              o."eventLogId", o."tenantId", o."eventType", o."payload", o."retryCount",
              o."lastError" AS err, o."orderingKey", o."orderingSeq", o."subscribersDone"
),
dlq AS (
)sql",
                                                     kDlqInsertFromUpd, R"sql(
)
SELECT count(*) FILTER (WHERE kind = 1), count(*) FILTER (WHERE kind = 2)
  FROM upd
)sql");
inline constexpr const char* kSweepExpiredLeases = kSweepExpiredLeasesText.data();

// Counts for health, metrics and the metrics log line. Cheap enough to run every few seconds,
// and cached between runs rather than queried per HTTP request. The blocked keys (SPEC 2a) come
// from the partial index on the head table's blocked_since, which holds only blocked keys.
//   $1 LIKE patterns of the subscribed types (NULL: every type), $2 lease length in ms: keys
//   blocked for longer are named (at most 5, longest first) for the log's warning.
inline constexpr const char* kStatusCounts = R"sql(
SELECT (SELECT count(*) FROM "Outbox" WHERE "status" = 'PENDING'),
       (SELECT count(*) FROM "Outbox" WHERE "status" = 'PROCESSING'),
       (SELECT count(*) FROM "Outbox" WHERE "status" = 'COMPLETED'),
       (SELECT count(*) FROM "Outbox" WHERE "status" = 'FAILED'),
       (SELECT count(*) FROM "DlqEventLog"),
       (SELECT COALESCE(extract(epoch FROM now() - min("createdAt")), 0)::float8
          FROM "Outbox" WHERE "status" = 'PENDING' AND NOT "orderingParked"
           AND ("nextRetryAt" IS NULL OR "nextRetryAt" <= now())),
       (SELECT COALESCE(json_object_agg(t, n), '{}')::text FROM (
            SELECT "eventType" AS t, count(*) AS n FROM "Outbox"
             WHERE "status" = 'PENDING' AND $1::text[] IS NOT NULL
               AND NOT ("eventType" LIKE ANY ($1::text[]))
             GROUP BY "eventType" ORDER BY count(*) DESC LIMIT 100) x),
       (SELECT count(*) FROM outbox_worker_ordering_head WHERE blocked_since IS NOT NULL),
       (SELECT count(*) FROM outbox_worker_ordering_head
         WHERE blocked_since < now() - $2::bigint * interval '1 millisecond'),
       (SELECT COALESCE(string_agg(format('%s (%s s)', key,
                                          extract(epoch FROM now() - blocked_since)::bigint),
                                   ', ' ORDER BY blocked_since), '')
          FROM (SELECT key, blocked_since FROM outbox_worker_ordering_head
                 WHERE blocked_since < now() - $2::bigint * interval '1 millisecond'
                 ORDER BY blocked_since LIMIT 5) b)
)sql";

// Retention (SPEC 2): deletes one small batch of old COMPLETED rows. One instance at a time: the
// statement first tries a transaction-level advisory lock without waiting (an uncorrelated scalar
// subquery, evaluated once), and deletes nothing when another instance holds it. SKIP LOCKED keeps
// the batch from waiting on rows another transaction touches. EventLog rows are never deleted.
//   $1 retention in hours, $2 batch size
inline constexpr const char* kRetentionBatch = R"sql(
WITH old AS (
    SELECT "id" FROM "Outbox"
     WHERE (SELECT pg_try_advisory_xact_lock(4242061701))
       AND "status" = 'COMPLETED' AND "processedAt" < now() - $1::bigint * interval '1 hour'
     LIMIT $2::int
       FOR UPDATE SKIP LOCKED
)
DELETE FROM "Outbox" o USING old WHERE o."id" = old."id"
)sql";

// ---- The console (docs/console.md) -----------------------------------------------------------
// Times leave PostgreSQL as ISO 8601 UTC text with microseconds, the columns' own precision, so
// that a cursor built from a row names that row exactly.

// Read by the janitor with the counts (never per request): the instances holding leases (through
// the ("status", "nextRetryAt") index, which holds the few PROCESSING rows together) and the
// paused types, each as a JSON array the overview passes on as it is.
inline constexpr const char* kConsoleLeasesAndPaused = R"sql(
SELECT (SELECT COALESCE(json_agg(json_build_object(
                   'instance', l.owner, 'leases', l.n,
                   'latestLeaseExpiresAt',
                   to_char(l.latest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                   ORDER BY l.owner), '[]')::text
          FROM (SELECT "leaseOwner" AS owner, count(*) AS n, max("leaseExpiresAt") AS latest
                  FROM "Outbox" WHERE "status" = 'PROCESSING' GROUP BY 1) l),
       (SELECT COALESCE(json_agg(json_build_object(
                   'eventType', p."eventType",
                   'pausedAt', to_char(p."pausedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'pausedBy', p."pausedBy") ORDER BY p."pausedAt", p."eventType"), '[]')::text
          FROM outbox_worker_paused p)
)sql";

// The dead letters grouped by type and the first line of their reason (at most 200 characters),
// the 100 largest groups. It reads the whole queue, so the janitor runs it only when the queue's
// size changed or a minute has passed.
inline constexpr const char* kConsoleDlqGroups = R"sql(
SELECT COALESCE(json_agg(json_build_object(
           'eventType', g.t, 'reason', g.r, 'count', g.n,
           'newest', to_char(g.newest AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
           ORDER BY g.n DESC, g.t, g.r), '[]')::text
  FROM (SELECT "eventType" AS t, left(split_part("failureReason", E'\n', 1), 200) AS r,
               count(*) AS n, max("failedAt") AS newest
          FROM "DlqEventLog" GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 100) g
)sql";

// Whether "Outbox" has a valid index whose first column is "eventLogId" (any name, not partial):
// the optional index that search by event key needs (migration 005's header). A catalogue lookup.
inline constexpr const char* kConsoleEventLogIndexExists = R"sql(
SELECT EXISTS (
    SELECT 1 FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = '"Outbox"'::regclass AND i.indisvalid AND i.indpred IS NULL
       AND a.attname = 'eventLogId')
)sql";

// GET /api/events: the select list and the source, then the filters that apply (each below, with
// its parameter numbered by the builder, supervisor/console_query.h), then the order and limit.
// Newest first by ("createdAt", id), paged by keyset. Each filter has an index: id the primary
// key, eventKey EventLog's unique index and then an index on "Outbox" ("eventLogId") that the
// operator creates (migration 005's header; without it the search is refused,
// kConsoleEventLogIndexExists), orderingKey "Outbox_worker_ordering_idx" (its predicate follows
// from the equality), tenant
// ("tenantId", status), status ("status", "nextRetryAt"); the type (see kConsoleEventsByType) and
// the time range walk the "createdAt" index backwards in the order wanted, stopping after one
// page.
inline constexpr const char* kConsoleEventsSelect = R"sql(
SELECT o."id", o."eventType", o."tenantId", o."status"::text,
       to_char(o."createdAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       o."retryCount", o."maxRetries",
       to_char(o."nextRetryAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       o."orderingKey", e."eventKey", left(o."lastError", 200)
  FROM "Outbox" o LEFT JOIN "EventLog" e ON e."id" = o."eventLogId"
 WHERE true)sql";
inline constexpr const char* kConsoleEventsById = R"sql( AND o."id" = $%)sql";
inline constexpr const char* kConsoleEventsByStatus =
    R"sql( AND o."status" = $%::"OutboxStatus")sql";
// The type is compared with an InitPlan's value rather than the parameter itself, so that the
// planner estimates it as an average type (1 / the number of types) instead of looking it up in the
// statistics: a type the statistics call rare (or one that does not exist) would otherwise be
// searched by reading the whole table and sorting it. Walking the "createdAt" index instead stops
// after one page for any common type; for a rare one it reads far, in the order wanted, bounded by
// the console connection's statement timeout. (An index on "eventType" would make every type
// cheap, at the price of another index entry per status change of every event, which delivery
// would pay for a search the console makes now and then.)
inline constexpr const char* kConsoleEventsByType =
    R"sql( AND o."eventType" = (SELECT $%::text))sql";
inline constexpr const char* kConsoleEventsByTenant = R"sql( AND o."tenantId" = $%)sql";
inline constexpr const char* kConsoleEventsByEventKey =
    R"sql( AND o."eventLogId" IN (SELECT x."id" FROM "EventLog" x WHERE x."eventKey" = $%))sql";
inline constexpr const char* kConsoleEventsByOrderingKey = R"sql( AND o."orderingKey" = $%)sql";
inline constexpr const char* kConsoleEventsFrom = R"sql( AND o."createdAt" >= $%::timestamptz)sql";
inline constexpr const char* kConsoleEventsTo = R"sql( AND o."createdAt" <= $%::timestamptz)sql";
// After the cursor's row: written out rather than as a row comparison, so that the "createdAt"
// index bounds the scan whatever the planner makes of row comparisons. Two parameters: the
// cursor's time and id.
inline constexpr const char* kConsoleEventsAfter =
    R"sql( AND o."createdAt" <= $%::timestamptz AND (o."createdAt" < $%::timestamptz OR o."id" < $%))sql";
inline constexpr const char* kConsoleEventsOrder =
    R"sql( ORDER BY o."createdAt" DESC, o."id" DESC LIMIT $%::int)sql";

// GET /api/events/{id}: one row or none. The event's fields as a handler receives them (EventLog's
// when the row exists). jsonb's text output is valid JSON and is passed on verbatim.
//   $1 the Outbox id
inline constexpr const char* kConsoleEventDetail = R"sql(
SELECT o."id", o."eventType", o."tenantId", o."status"::text,
       to_char(o."createdAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       o."retryCount", o."maxRetries",
       to_char(o."nextRetryAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       o."orderingKey", e."eventKey", o."lastError",
       COALESCE(e."payload", o."payload")::text, e."metadata"::text, e."correlationId",
       o."eventLogId",
       to_char(o."processedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       to_char(o."updatedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       o."leaseOwner",
       to_char(o."leaseExpiresAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       o."orderingSeq", to_json(COALESCE(o."subscribersDone", '{}'))::text
  FROM "Outbox" o LEFT JOIN "EventLog" e ON e."id" = o."eventLogId"
 WHERE o."id" = $1
)sql";

// GET /api/dlq, built like the events list: newest failure first by ("failedAt", id) through the
// "failedAt" index; type and tenant through ("tenantId", "eventType") when the tenant is given.
// `reason` matches the start of the failure reason, as the groups of the overview show it.
inline constexpr const char* kConsoleDlqSelect = R"sql(
SELECT d."id", d."originalId", d."eventType", d."tenantId", d."eventKey", d."failureReason",
       d."retryCount",
       to_char(d."failedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       d."orderingKey"
  FROM "DlqEventLog" d
 WHERE true)sql";
// As kConsoleEventsByType, and through the "failedAt" index; the reason too.
inline constexpr const char* kConsoleDlqByType = R"sql( AND d."eventType" = (SELECT $%::text))sql";
inline constexpr const char* kConsoleDlqByTenant = R"sql( AND d."tenantId" = $%)sql";
inline constexpr const char* kConsoleDlqByReason =
    R"sql( AND starts_with(d."failureReason", (SELECT $%::text)))sql";
inline constexpr const char* kConsoleDlqAfter =
    R"sql( AND d."failedAt" <= $%::timestamptz AND (d."failedAt" < $%::timestamptz OR d."id" < $%))sql";
inline constexpr const char* kConsoleDlqOrder =
    R"sql( ORDER BY d."failedAt" DESC, d."id" DESC LIMIT $%::int)sql";

// GET /api/dlq/{id}.   $1 the DLQ id
inline constexpr const char* kConsoleDlqDetail = R"sql(
SELECT d."id", d."originalId", d."eventType", d."tenantId", d."eventKey", d."failureReason",
       d."retryCount",
       to_char(d."failedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       d."orderingKey", d."payload"::text, d."metadata"::text
  FROM "DlqEventLog" d
 WHERE d."id" = $1
)sql";

// The dead-letter actions on given ids (at most 1000), each id in a subtransaction of its own
// (migration 005's outbox_worker_dlq_apply). One row per id: id, outcome, detail.
//   $1 retry, skip or purge, $2 the ids
inline constexpr const char* kConsoleDlqApply = R"sql(
SELECT a.dlq_id, a.outcome, a.detail FROM outbox_worker_dlq_apply($1, $2::text[]) a
)sql";

// The same on every entry that matches a filter, one batch of up to 500 at a time, oldest failure
// first by keyset. Entries that failed after the action began ($2, the time of its first batch)
// are left alone: a retried event that fails again at once must not be retried again by the same
// request. Returns one row per entry of the batch, in order, with the entry's failedAt for the
// next batch's cursor. Type and reason are compared as in kConsoleDlqByType.
//   $1 action, $2 upper bound of failedAt, $3 type or NULL, $4 tenant or NULL, $5 reason prefix or
//   NULL, $6 cursor time or NULL, $7 cursor id
inline constexpr const char* kConsoleDlqApplyBatch = R"sql(
WITH batch AS MATERIALIZED (
    SELECT d."id", d."failedAt",
           row_number() OVER (ORDER BY d."failedAt", d."id") AS n
      FROM "DlqEventLog" d
     WHERE d."failedAt" <= $2::timestamptz
       AND ($3::text IS NULL OR d."eventType" = (SELECT $3::text))
       AND ($4::text IS NULL OR d."tenantId" = $4)
       AND ($5::text IS NULL OR starts_with(d."failureReason", (SELECT $5::text)))
       AND ($6::timestamptz IS NULL OR d."failedAt" > $6::timestamptz
            OR (d."failedAt" = $6::timestamptz AND d."id" > $7))
     ORDER BY d."failedAt", d."id"
     LIMIT 500
)
SELECT a.dlq_id, a.outcome, a.detail,
       to_char(b."failedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
  FROM outbox_worker_dlq_apply($1, ARRAY(SELECT "id" FROM batch ORDER BY n)) a
  JOIN batch b ON b."id" = a.dlq_id
 ORDER BY b.n
)sql";

// The database's time now, the upper bound of a filter action's entries.
inline constexpr const char* kConsoleNow =
    R"sql(SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))sql";

// GET /api/blocked-keys: the longest-blocked keys first, by keyset on (blocked_since, key), through
// the partial index of migration 004 on the blocked keys.
//   $1 cursor time or NULL, $2 cursor key, $3 limit
inline constexpr const char* kConsoleBlockedKeys = R"sql(
SELECT b.ordering_key, b.head_id, b.head_status, b.reason,
       to_char(b.blocked_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), b.waiting
  FROM outbox_worker_blocked_keys b
 WHERE ($1::timestamptz IS NULL OR b.blocked_since > $1::timestamptz
        OR (b.blocked_since = $1::timestamptz AND b.ordering_key > $2))
 ORDER BY b.blocked_since, b.ordering_key
 LIMIT $3::int
)sql";

// GET /api/paused, and the answer of pause and resume.
inline constexpr const char* kConsolePaused = R"sql(
SELECT p."eventType", to_char(p."pausedAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       p."pausedBy"
  FROM outbox_worker_paused p
 ORDER BY p."pausedAt", p."eventType"
)sql";

// POST /api/pause. A type paused already keeps its first time and author.
//   $1 event type, $2 client address
inline constexpr const char* kConsolePause = R"sql(
INSERT INTO outbox_worker_paused ("eventType", "pausedBy") VALUES ($1, $2)
ON CONFLICT ("eventType") DO NOTHING
)sql";

// POST /api/resume. The notification wakes every instance, whose next claim takes the type's
// waiting events at once rather than at the next poll.
//   $1 event type
inline constexpr auto kConsoleResumeText = join(R"sql(
WITH del AS (
    DELETE FROM outbox_worker_paused WHERE "eventType" = $1 RETURNING 1
)
SELECT count(*), pg_notify(')sql",
                                                kNotifyChannel, R"sql(', '') FROM del
)sql");
inline constexpr const char* kConsoleResume = kConsoleResumeText.data();

// Two steps, because a statement naming a table that does not exist fails as it is parsed.
inline constexpr const char* kSchemaTableExists =
    "SELECT to_regclass('outbox_worker_schema') IS NOT NULL";
inline constexpr const char* kSchemaVersion =
    "SELECT COALESCE(max(version), 0) FROM outbox_worker_schema";

} // namespace outbox::sql
