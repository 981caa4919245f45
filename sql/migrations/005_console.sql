-- The operator's console (SPEC 6, docs/console.md): pausing event types, finding events by their
-- event key, and acting on dead letters in batches. Additive and idempotent like 002-004: a new
-- table, a new index, a new function. An application that writes "EventLog"/"Outbox" rows without
-- knowing any of this keeps working.
--
-- What it costs
-- -------------
-- "Outbox_worker_eventLogId_idx" is one more index on "Outbox". Every update the service makes to
-- a row changes "status" (indexed), so none of them is a HOT update and each adds an entry to
-- every index of the table: this index costs one more index entry per insert and per status
-- change (claim, outcome, release), next to the four full indexes the table had (its primary key
-- and the application's three) and the partial ones of 002-004. It is what lets the console
-- find the Outbox rows of an event key (EventLog's unique index on ("eventKey", "tenantId"), then
-- the Outbox rows of those EventLog ids) without reading the whole table.
-- Creating it locks "Outbox" against writes while the index is built (as any CREATE INDEX without
-- CONCURRENTLY, which cannot run inside the migration's transaction). On a large live table, build
-- it beforehand with
--     CREATE INDEX CONCURRENTLY "Outbox_worker_eventLogId_idx" ON "Outbox" ("eventLogId");
-- and this migration then finds it and skips it.
--
-- The paused types cost every claim one probe of a table that is empty unless an operator paused
-- something (the claim's NOT EXISTS, supervisor/queries.h). Events of a paused type stay PENDING
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

CREATE INDEX IF NOT EXISTS "Outbox_worker_eventLogId_idx" ON "Outbox" ("eventLogId");

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
