-- Ordering per key (SPEC 2a) and per-subscriber progress (SPEC 2, "Several subscribers, one event").
-- Additive like 002: nullable columns, one column with a constant default (a catalogue-only change),
-- new tables, indexes, functions and triggers. An application that inserts "Outbox" rows without
-- knowing any of this keeps working; every existing row is unordered.
--
-- How commit order is kept (the choice the design had to make)
-- ------------------------------------------------------------
-- Events of one key must be delivered in the order their transactions COMMITTED, which is neither
-- "createdAt" (the transaction's start, or the application's own clock) nor the transaction id
-- (assigned at the first write, not at commit). Two known ways:
--  a) a per-key sequence number assigned at insert under a lock that is held until the inserting
--     transaction ends, so that a second writer of the same key waits for the first to commit (or
--     roll back) before it draws its number;
--  b) ordering by transaction id and holding back every row newer than the oldest transaction still
--     running (watermill-sql's pg_snapshot_xmin).
-- We use (a). (b) delivers in transaction-id order, which two writers of one key can commit in the
-- opposite order, and it holds back ALL ordered delivery behind the oldest open transaction in the
-- database, so one forgotten "idle in transaction" session anywhere stalls every key. (a) costs
-- something only to writers of the same key: they serialise at the insert until the earlier one
-- commits, and a transaction that writes several keys should write them in a consistent order (as
-- with any row lock; PostgreSQL detects a deadlock and aborts one of the two). The lock is the row
-- of the key in outbox_worker_ordering_seq, updated by the insert trigger and held until commit; a
-- rolled-back insert rolls its number back too, so the numbers of a key have no holes.
--
-- How the relay finds the next event of a key without scanning the ones that wait
-- --------------------------------------------------------------------------------
-- outbox_worker_ordering_head holds, per key, done_seq: every event of the key numbered up to it has
-- reached a terminal state (completed or deleted, dead-lettered under the `skip` policy, or skipped by
-- `dlq skip`). The head of a key is its event numbered done_seq + 1, and only the head may be
-- claimed. Only the relay and the operator's commands write this table, never an application
-- transaction, so recording an outcome never waits for a writer.
-- A claim that meets an event which is not its key's head parks it ("orderingParked"): parked rows
-- leave the claim's partial index, so a key with ten thousand events waiting behind a failing head
-- costs later claims nothing (pg-boss's key_strict_fifo starved the queue on exactly this). When a
-- head reaches a terminal state, a trigger advances done_seq and unparks the next event of the key.
-- The claim reads done_seq with FOR SHARE and the advance updates it, so parking and unparking of
-- one key are serialised and a wake-up cannot be lost between them.

-- The key, from the writer or from the database-wide rule below, and its number in commit order.
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "orderingKey" TEXT;
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "orderingSeq" BIGINT;
-- Internal: the event waits behind an earlier event of its key and is not a claim candidate.
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "orderingParked" BOOLEAN NOT NULL DEFAULT false;
-- Names of the subscribers that have already succeeded for this event: a retry runs the others.
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "subscribersDone" TEXT[];
-- The same three travel with a dead letter, so that its retry goes back to the right place and runs
-- only the subscribers that had not succeeded.
ALTER TABLE "DlqEventLog" ADD COLUMN IF NOT EXISTS "orderingKey" TEXT;
ALTER TABLE "DlqEventLog" ADD COLUMN IF NOT EXISTS "orderingSeq" BIGINT;
ALTER TABLE "DlqEventLog" ADD COLUMN IF NOT EXISTS "subscribersDone" TEXT[];

-- The database-wide rule (`outbox-worker ordering set RULE`): at most one row. `source` is
-- tenantId, eventType, payload or metadata; `path` the field path inside payload or metadata.
CREATE TABLE IF NOT EXISTS outbox_worker_ordering_rule (
    id          BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    rule        TEXT NOT NULL,
    source      TEXT NOT NULL,
    path        TEXT[] NOT NULL DEFAULT '{}',
    "updatedAt" TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The per-key counter that writers draw numbers from (its row lock is the commit-order lock).
CREATE TABLE IF NOT EXISTS outbox_worker_ordering_seq (
    key      TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

-- Per key: how far delivery has come, and since when the head has been failing (NULL: it is not).
CREATE TABLE IF NOT EXISTS outbox_worker_ordering_head (
    key           TEXT PRIMARY KEY,
    done_seq      BIGINT NOT NULL DEFAULT 0,
    blocked_since TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS outbox_worker_ordering_head_blocked_idx
    ON outbox_worker_ordering_head (blocked_since) WHERE blocked_since IS NOT NULL;

-- The claim's index: due candidates oldest first, without the parked ones. It replaces 002's
-- "Outbox_worker_due_idx", which it equals for unordered events.
CREATE INDEX IF NOT EXISTS "Outbox_worker_claim_idx" ON "Outbox" ("createdAt")
    WHERE "status" = 'PENDING' AND NOT "orderingParked";
DROP INDEX IF EXISTS "Outbox_worker_due_idx";
-- The events of one key in order: finding the next one after a head, counting the waiting ones.
-- Unordered rows are not in it and pay nothing for it.
CREATE INDEX IF NOT EXISTS "Outbox_worker_ordering_idx" ON "Outbox" ("orderingKey", "orderingSeq")
    WHERE "orderingKey" IS NOT NULL;

-- Before each insert: the key from the rule when the writer gave none, then the key's next number,
-- under the key's row lock (see the top). Numbers and parking belong to the service: a number a
-- writer supplies is replaced (a copied row would otherwise jump the queue), except in the
-- service's own retry of a dead letter that goes back to the head of its key, which says so in the
-- transaction-local setting outbox_worker.keep_seq. A number drawn for a row that is then not
-- inserted (INSERT ... ON CONFLICT DO NOTHING, a later trigger returning NULL) leaves a hole,
-- which the claim and the release step over.
CREATE OR REPLACE FUNCTION outbox_worker_ordering_assign() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_rule outbox_worker_ordering_rule%ROWTYPE;
BEGIN
    NEW."orderingParked" := false;
    IF NEW."orderingSeq" IS NOT NULL
       AND current_setting('outbox_worker.keep_seq', true) IS DISTINCT FROM 'on' THEN
        NEW."orderingSeq" := NULL;
    END IF;
    IF NEW."orderingKey" IS NULL THEN
        SELECT * INTO v_rule FROM outbox_worker_ordering_rule;
        IF NOT FOUND THEN
            RETURN NEW;
        END IF;
        NEW."orderingKey" := CASE v_rule.source
            WHEN 'tenantId' THEN NEW."tenantId"
            WHEN 'eventType' THEN NEW."eventType"
            WHEN 'payload' THEN NEW."payload" #>> v_rule.path
            -- "Outbox" has no metadata: it is the "EventLog" row's, which the writer inserts first
            -- (an application that inserts the Outbox row first gets no key from a metadata rule).
            WHEN 'metadata' THEN (SELECT e."metadata" #>> v_rule.path
                                    FROM "EventLog" e WHERE e."id" = NEW."eventLogId")
        END;
        IF NEW."orderingKey" IS NULL THEN
            RETURN NEW;
        END IF;
    END IF;
    IF NEW."orderingSeq" IS NULL THEN
        INSERT INTO outbox_worker_ordering_seq AS s (key, last_seq) VALUES (NEW."orderingKey", 1)
            ON CONFLICT (key) DO UPDATE SET last_seq = s.last_seq + 1
            RETURNING s.last_seq INTO NEW."orderingSeq";
    END IF;
    INSERT INTO outbox_worker_ordering_head (key) VALUES (NEW."orderingKey") ON CONFLICT DO NOTHING;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS "Outbox_worker_ordering_assign" ON "Outbox";
CREATE TRIGGER "Outbox_worker_ordering_assign" BEFORE INSERT ON "Outbox"
    FOR EACH ROW EXECUTE FUNCTION outbox_worker_ordering_assign();

-- The event numbered p_seq of key p_key no longer holds its key: if it was the head, the key moves
-- on to its next event still to deliver, which is unparked, and waiting instances are woken.
-- Returns whether it was the head. Called by the triggers below and by outbox_skip_dlq.
-- "The head" tolerates holes: no event of the key still to deliver lies between done_seq and it
-- (a number drawn for a row that was never inserted, or a row an operator deleted, is a hole;
-- a dead-lettered event not yet released under the block policy is not).
CREATE OR REPLACE FUNCTION outbox_worker_ordering_release(p_key TEXT, p_seq BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_next_id  TEXT;
    v_next_seq BIGINT;
BEGIN
    -- The row lock taken here is what a concurrent claim's FOR SHARE read of done_seq waits out.
    UPDATE outbox_worker_ordering_head h SET done_seq = p_seq, blocked_since = NULL
     WHERE h.key = p_key AND h.done_seq < p_seq
       AND NOT EXISTS (SELECT 1 FROM "Outbox" x
                        WHERE x."orderingKey" = p_key AND x."orderingSeq" > h.done_seq
                          AND x."orderingSeq" < p_seq AND x."status" <> 'COMPLETED');
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    -- No row lock is needed here: a claim parks an event only while it holds the key's head row
    -- FOR SHARE, so the UPDATE above returned only after every such claim had committed, and this
    -- statement (a new snapshot) sees their parks; a claim that comes later finds the key moved on.
    SELECT o."id", o."orderingSeq" INTO v_next_id, v_next_seq
      FROM "Outbox" o
     WHERE o."orderingKey" = p_key AND o."orderingSeq" > p_seq
       AND o."status" IN ('PENDING', 'PROCESSING')
     ORDER BY o."orderingSeq"
     LIMIT 1;
    IF FOUND THEN
        IF v_next_seq > p_seq + 1 THEN
            UPDATE outbox_worker_ordering_head SET done_seq = v_next_seq - 1 WHERE key = p_key;
        END IF;
        UPDATE "Outbox" SET "orderingParked" = false, "updatedAt" = now()
         WHERE "id" = v_next_id AND "orderingParked";
    END IF;
    -- Always, not only when a next event was found: a claim that ran while this transaction held
    -- the key's head row passed its candidates of the key over without parking them, and one of
    -- them may have been inserted after the lookup above. Notifications of one transaction are
    -- folded into one.
    PERFORM pg_notify('outbox_worker', '');
    RETURN TRUE;
END
$$;

-- After an ordered event changes state: completed, or dead-lettered under the `skip` policy, it
-- releases its key; a failed attempt (back to PENDING with one more retry, or dead-lettered under
-- `block`) marks the key blocked since now, unless it already was. The policy is the session's
-- setting outbox_worker.on_dead_letter, which the service sets from OUTBOX_ORDERING_ON_DEAD_LETTER;
-- a session without it (an operator's psql) gets the default, block.
CREATE OR REPLACE FUNCTION outbox_worker_ordering_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW."status" = 'COMPLETED'
       OR (NEW."status" = 'FAILED'
           AND current_setting('outbox_worker.on_dead_letter', true) = 'skip') THEN
        PERFORM outbox_worker_ordering_release(NEW."orderingKey", NEW."orderingSeq");
    ELSIF NEW."retryCount" > OLD."retryCount" OR NEW."status" = 'FAILED' THEN
        UPDATE outbox_worker_ordering_head SET blocked_since = now()
         WHERE key = NEW."orderingKey" AND done_seq = NEW."orderingSeq" - 1
           AND blocked_since IS NULL;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "Outbox_worker_ordering_update" ON "Outbox";
-- The WHEN keeps unordered events and claims (PENDING -> PROCESSING) away from PL/pgSQL entirely.
CREATE TRIGGER "Outbox_worker_ordering_update" AFTER UPDATE ON "Outbox"
    FOR EACH ROW
    WHEN (OLD."orderingKey" IS NOT NULL AND OLD."status" IS DISTINCT FROM NEW."status"
          AND (NEW."status" IN ('COMPLETED', 'FAILED') OR NEW."retryCount" > OLD."retryCount"))
    EXECUTE FUNCTION outbox_worker_ordering_on_update();

-- A deleted ordered event that had not reached a terminal state (OUTBOX_ON_COMPLETE=delete records
-- success this way; an operator may delete a stuck row) releases its key.
CREATE OR REPLACE FUNCTION outbox_worker_ordering_on_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM outbox_worker_ordering_release(OLD."orderingKey", OLD."orderingSeq");
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "Outbox_worker_ordering_delete" ON "Outbox";
CREATE TRIGGER "Outbox_worker_ordering_delete" AFTER DELETE ON "Outbox"
    FOR EACH ROW
    WHEN (OLD."orderingKey" IS NOT NULL AND OLD."status" IN ('PENDING', 'PROCESSING'))
    EXECUTE FUNCTION outbox_worker_ordering_on_delete();

-- A dead-letter entry that is deleted (`dlq purge`, an operator's DELETE) gives up on its event: if
-- it was still blocking its key (policy block, neither retried nor skipped), the key moves on, as
-- with `dlq skip`. outbox_retry_dlq deletes the entry too, after inserting the event again with its
-- number; that pending copy is what tells the two apart.
CREATE OR REPLACE FUNCTION outbox_worker_ordering_on_dlq_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM "Outbox" o
                    WHERE o."orderingKey" = OLD."orderingKey"
                      AND o."orderingSeq" = OLD."orderingSeq"
                      AND o."status" IN ('PENDING', 'PROCESSING')) THEN
        PERFORM outbox_worker_ordering_release(OLD."orderingKey", OLD."orderingSeq");
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "DlqEventLog_worker_ordering_delete" ON "DlqEventLog";
CREATE TRIGGER "DlqEventLog_worker_ordering_delete" AFTER DELETE ON "DlqEventLog"
    FOR EACH ROW
    WHEN (OLD."orderingKey" IS NOT NULL AND OLD."orderingSeq" IS NOT NULL)
    EXECUTE FUNCTION outbox_worker_ordering_on_dlq_delete();

-- The service runs its sessions with plan_cache_mode = force_custom_plan (its own statements are
-- planned for their parameters every time, see db_connection.cpp). Inside these functions that
-- would re-plan every statement for every ordered event, which cost more than running them (the
-- head update alone: 0.16 ms to plan, 0.1 ms to run): their statements are simple and keyed by
-- primary key or by Outbox_worker_ordering_idx, so a cached plan serves every call.
ALTER FUNCTION outbox_worker_ordering_assign() SET plan_cache_mode = auto;
ALTER FUNCTION outbox_worker_ordering_release(TEXT, BIGINT) SET plan_cache_mode = auto;
ALTER FUNCTION outbox_worker_ordering_on_update() SET plan_cache_mode = auto;
ALTER FUNCTION outbox_worker_ordering_on_delete() SET plan_cache_mode = auto;
ALTER FUNCTION outbox_worker_ordering_on_dlq_delete() SET plan_cache_mode = auto;

-- Keys whose head event has failed and is not delivered yet: retrying, or dead-lettered under the
-- `block` policy. `waiting` counts the events queued behind the head.
CREATE OR REPLACE VIEW outbox_worker_blocked_keys AS
SELECT h.key AS ordering_key,
       o."id" AS head_id,
       o."status"::text AS head_status,
       o."lastError" AS reason,
       h.blocked_since,
       (SELECT count(*) FROM "Outbox" w
         WHERE w."orderingKey" = h.key AND w."orderingSeq" > h.done_seq + 1
           AND w."status" = 'PENDING') AS waiting
  FROM outbox_worker_ordering_head h
  LEFT JOIN LATERAL (
       SELECT * FROM "Outbox" x
        WHERE x."orderingKey" = h.key AND x."orderingSeq" = h.done_seq + 1
          AND x."status" <> 'COMPLETED'
        ORDER BY (x."status" = 'FAILED'), x."createdAt" DESC
        LIMIT 1) o ON true
 WHERE h.blocked_since IS NOT NULL;

-- `outbox-worker ordering set RULE`: checks and stores the rule, or removes it (`none`). Returns the
-- rule now in force.
CREATE OR REPLACE FUNCTION outbox_worker_ordering_set(p_rule TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_parts TEXT[];
BEGIN
    IF p_rule IS NULL OR p_rule = 'none' THEN
        DELETE FROM outbox_worker_ordering_rule;
        RETURN 'none';
    END IF;
    IF p_rule IN ('tenantId', 'eventType') THEN
        v_parts := ARRAY[p_rule];
    ELSIF p_rule ~ '^(payload|metadata)(\.[^.[:space:]]+)+$' THEN
        v_parts := string_to_array(p_rule, '.');
    ELSE
        RAISE EXCEPTION 'ordering rule "%" is not valid: use tenantId, eventType, payload.<field>[.<field>...], metadata.<field>[.<field>...] or none', p_rule
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO outbox_worker_ordering_rule (id, rule, source, path, "updatedAt")
    VALUES (true, p_rule, v_parts[1], v_parts[2:], now())
    ON CONFLICT (id) DO UPDATE
       SET rule = EXCLUDED.rule, source = EXCLUDED.source, path = EXCLUDED.path,
           "updatedAt" = EXCLUDED."updatedAt";
    RETURN p_rule;
END
$$;

CREATE OR REPLACE FUNCTION outbox_worker_ordering_show()
RETURNS TABLE (rule TEXT, updated_at TIMESTAMPTZ)
LANGUAGE sql STABLE AS $$
    SELECT r.rule, r."updatedAt" FROM outbox_worker_ordering_rule r
$$;

-- The writer gains the ordering key (a 9th argument with a default, so calls written for the
-- 8-argument version keep working; the old signature is dropped so the two cannot be ambiguous).
DROP FUNCTION IF EXISTS outbox_write_event(TEXT, TEXT, TEXT, JSONB, TEXT, JSONB, TEXT, INTEGER);
CREATE OR REPLACE FUNCTION outbox_write_event(
    p_event_key      TEXT,
    p_tenant_id      TEXT,
    p_event_type     TEXT,
    p_payload        JSONB,
    p_project_id     TEXT DEFAULT NULL,
    p_metadata       JSONB DEFAULT NULL,
    p_correlation_id TEXT DEFAULT NULL,
    p_max_retries    INTEGER DEFAULT NULL,
    p_ordering_key   TEXT DEFAULT NULL)
RETURNS TABLE (event_log_id TEXT, outbox_id TEXT, duplicate BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_log_id    TEXT;
    v_outbox_id TEXT;
BEGIN
    IF p_event_key IS NULL OR p_tenant_id IS NULL OR p_event_type IS NULL OR p_payload IS NULL THEN
        RAISE EXCEPTION 'outbox_write_event: eventKey, tenantId, eventType and payload are required'
            USING ERRCODE = 'not_null_violation';
    END IF;
    IF p_max_retries IS NOT NULL AND p_max_retries < 1 THEN
        RAISE EXCEPTION 'outbox_write_event: maxRetries must be at least 1, not %', p_max_retries
            USING ERRCODE = 'check_violation';
    END IF;

    INSERT INTO "EventLog" ("id", "eventKey", "tenantId", "projectId", "eventType", "payload",
                            "metadata", "correlationId")
    VALUES ('evl_' || replace(gen_random_uuid()::text, '-', ''), p_event_key, p_tenant_id,
            p_project_id, p_event_type, p_payload, p_metadata, p_correlation_id)
    ON CONFLICT ("eventKey", "tenantId") DO NOTHING
    RETURNING "id" INTO v_log_id;

    IF v_log_id IS NULL THEN
        SELECT e."id" INTO v_log_id FROM "EventLog" e
         WHERE e."eventKey" = p_event_key AND e."tenantId" = p_tenant_id;
        SELECT o."id" INTO v_outbox_id FROM "Outbox" o
         WHERE o."eventLogId" = v_log_id ORDER BY o."createdAt" LIMIT 1;
        RETURN QUERY SELECT v_log_id, v_outbox_id, TRUE;
        RETURN;
    END IF;

    v_outbox_id := 'obx_' || replace(gen_random_uuid()::text, '-', '');
    INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "maxRetries",
                          "updatedAt", "orderingKey")
    VALUES (v_outbox_id, v_log_id, p_tenant_id, p_event_type, p_payload,
            COALESCE(p_max_retries, 5), now(), p_ordering_key);
    RETURN QUERY SELECT v_log_id, v_outbox_id, FALSE;
END
$$;

-- Retry from the dead-letter queue, as in 002, now carrying the event's progress: the subscribers
-- that had succeeded are not run again, and an ordered event that still blocks its key goes back
-- to the head of the key (its own number, before the events that waited). One whose key has moved
-- on (dead-lettered under `skip`, or skipped) joins the end of its key as a new event would.
CREATE OR REPLACE FUNCTION outbox_retry_dlq(p_dlq_id TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_dlq         "DlqEventLog"%ROWTYPE;
    v_log_id      TEXT;
    v_max_retries INTEGER;
    v_outbox_id   TEXT;
    v_orig_log_id TEXT;
    v_seq         BIGINT;
BEGIN
    SELECT * INTO v_dlq FROM "DlqEventLog" WHERE "id" = p_dlq_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no dead-letter entry with id "%"', p_dlq_id USING ERRCODE = 'no_data_found';
    END IF;

    SELECT e."id" INTO v_log_id FROM "EventLog" e
     WHERE e."eventKey" = v_dlq."eventKey" AND e."tenantId" = v_dlq."tenantId";
    -- SELECT INTO sets its targets to NULL when no row matches, hence the separate variable.
    SELECT o."maxRetries", o."eventLogId" INTO v_max_retries, v_orig_log_id
      FROM "Outbox" o WHERE o."id" = v_dlq."originalId";
    v_log_id := COALESCE(v_log_id, v_orig_log_id);
    IF v_log_id IS NULL THEN
        RAISE EXCEPTION 'dead-letter entry "%": no EventLog row for eventKey "%" and tenant "%"',
            p_dlq_id, v_dlq."eventKey", v_dlq."tenantId" USING ERRCODE = 'no_data_found';
    END IF;

    IF v_dlq."orderingKey" IS NOT NULL THEN
        -- Locking the key's head row keeps a concurrent skip or release from moving the key on
        -- between this check and the insert.
        SELECT CASE WHEN h.done_seq = v_dlq."orderingSeq" - 1 THEN v_dlq."orderingSeq" END
          INTO v_seq
          FROM outbox_worker_ordering_head h WHERE h.key = v_dlq."orderingKey" FOR UPDATE;
        IF v_seq IS NOT NULL THEN
            UPDATE outbox_worker_ordering_head SET blocked_since = NULL
             WHERE key = v_dlq."orderingKey";
        END IF;
    END IF;

    v_outbox_id := 'obx_' || replace(gen_random_uuid()::text, '-', '');
    -- Tells the insert trigger to keep the number (back at the head), for this transaction only.
    IF v_seq IS NOT NULL THEN
        PERFORM set_config('outbox_worker.keep_seq', 'on', true);
    END IF;
    INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "status",
                          "retryCount", "maxRetries", "nextRetryAt", "updatedAt", "orderingKey",
                          "orderingSeq", "subscribersDone")
    VALUES (v_outbox_id, v_log_id, v_dlq."tenantId", v_dlq."eventType", v_dlq."payload",
            'PENDING', 0, COALESCE(v_max_retries, 5), NULL, now(), v_dlq."orderingKey", v_seq,
            v_dlq."subscribersDone");
    IF v_seq IS NOT NULL THEN
        PERFORM set_config('outbox_worker.keep_seq', 'off', true);
    END IF;
    DELETE FROM "DlqEventLog" WHERE "id" = p_dlq_id;
    RETURN v_outbox_id;
END
$$;

-- `outbox-worker dlq skip ID`: the dead-lettered event stops blocking its key, whose later events
-- continue; the entry stays in the DLQ (and can still be retried: it then joins the end of its key).
-- Returns whether the entry was blocking its key.
CREATE OR REPLACE FUNCTION outbox_skip_dlq(p_dlq_id TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_key TEXT;
    v_seq BIGINT;
BEGIN
    SELECT d."orderingKey", d."orderingSeq" INTO v_key, v_seq
      FROM "DlqEventLog" d WHERE d."id" = p_dlq_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no dead-letter entry with id "%"', p_dlq_id USING ERRCODE = 'no_data_found';
    END IF;
    IF v_key IS NULL THEN
        RETURN FALSE;
    END IF;
    RETURN outbox_worker_ordering_release(v_key, v_seq);
END
$$;
