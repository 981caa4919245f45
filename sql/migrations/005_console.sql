-- The operator's console (SPEC 6, docs/console.md): pausing event types, finding events by their
-- event key, and acting on dead letters in batches. Additive and idempotent like 002-004: a new
-- table and a new function. An application that writes "EventLog"/"Outbox" rows without
-- knowing any of this keeps working.
--
-- Finding events by their event key: an index this migration does NOT create
-- ---------------------------------------------------------------------------------------
-- The console finds the Outbox rows of an event key through EventLog's unique index on
-- ("eventKey", "tenantId") and then an index on "Outbox" ("eventLogId"), which the Calibr schema
-- does not have. Every update the service makes to a row changes "status" (indexed), so none is a
-- HOT update and each adds an entry to every index of the table: that index would cost one more
-- index entry per insert and per status change (claim, outcome, release). Measured with the
-- service's own claim and success statements under pgbench, production durability, 100,000 events,
-- alternating: 0.84 of the throughput without it (median of 4 pairs). Delivery matters more than
-- one search, so the index is the operator's choice:
--     CREATE INDEX CONCURRENTLY "Outbox_worker_eventLogId_idx" ON "Outbox" ("eventLogId");
-- Without it the console answers a search by event key with 400 and this advice (it never reads
-- the whole table); with it the search is an index lookup. docs/console.md says the same.
--
-- The paused types cost every claim one read of a table that is empty unless an operator paused
-- something (an InitPlan of the claim, supervisor/queries.h, which says why it is written as it is). Events of a paused type stay PENDING
-- in the claim's index: a claim walks past them, so pausing a type with a backlog of many
-- thousands of events at the head of the queue makes every claim read those index entries until
-- the type is resumed.

-- Event types no instance claims while they are listed (POST /api/pause). Events already claimed
-- finish; the others wait as PENDING and count in the backlog. "pausedBy" is the client address of
-- the request that paused it, for the operator who wonders why.
CREATE TABLE IF NOT EXISTS outbox_worker_paused (
    "eventType" TEXT PRIMARY KEY,
    "pausedAt"  TIMESTAMPTZ NOT NULL DEFAULT now(),
    "pausedBy"  TEXT
);

-- The console's dead-letter actions on a batch of entries, each in a subtransaction of its own, so
-- that one entry that cannot be retried (its EventLog row is gone, say) costs the others nothing
-- and is reported rather than aborting the batch. `retry` and `skip` are outbox_retry_dlq and
-- outbox_skip_dlq (migration 004) as the command line uses them, except that the console's skip
-- also removes the entry (docs/console.md): deleting it releases its ordering key anyway (the
-- trigger of 004), the explicit skip first makes that independent of the trigger. `purge` deletes.
-- One row per id, in the order given: outcome `done` (detail: the new Outbox id for a retry),
-- `unknown` (no such entry, or another request took it first), or `failed` (detail: the error).
CREATE OR REPLACE FUNCTION outbox_worker_dlq_apply(p_action TEXT, p_ids TEXT[])
RETURNS TABLE (dlq_id TEXT, outcome TEXT, detail TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    v_id TEXT;
BEGIN
    IF p_action IS NULL OR p_action NOT IN ('retry', 'skip', 'purge') THEN
        RAISE EXCEPTION 'outbox_worker_dlq_apply: unknown action "%"; allowed: retry, skip, purge',
            p_action USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH v_id IN ARRAY COALESCE(p_ids, '{}') LOOP
        dlq_id := v_id;
        detail := NULL;
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM "DlqEventLog" d WHERE d."id" = v_id) THEN
                outcome := 'unknown';
            ELSIF p_action = 'retry' THEN
                detail := outbox_retry_dlq(v_id);
                outcome := 'done';
            ELSIF p_action = 'skip' THEN
                PERFORM outbox_skip_dlq(v_id);
                DELETE FROM "DlqEventLog" d WHERE d."id" = v_id;
                outcome := 'done';
            ELSE
                DELETE FROM "DlqEventLog" d WHERE d."id" = v_id;
                outcome := CASE WHEN FOUND THEN 'done' ELSE 'unknown' END;
            END IF;
        EXCEPTION
            -- The functions of 004 raise no_data_found for an entry that is gone, which happens
            -- when another request retried or purged it between the check above and their lock.
            WHEN no_data_found THEN
                IF EXISTS (SELECT 1 FROM "DlqEventLog" d WHERE d."id" = v_id) THEN
                    outcome := 'failed';
                    detail := SQLERRM;
                ELSE
                    outcome := 'unknown';
                END IF;
            WHEN OTHERS THEN
                outcome := 'failed';
                detail := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
