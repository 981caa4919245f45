-- What outbox-worker adds to the Calibr schema. Strictly additive: nullable columns without
-- defaults (a catalogue-only change, no table rewrite), partial indexes, functions and a trigger.
-- An application that inserts "EventLog"/"Outbox" rows without knowing any of this keeps working.

-- Leases. A claimed event carries its owner (OUTBOX_INSTANCE_ID, for operators), the time its lease
-- runs out, and a token unique to that claim. Completion and failure updates are fenced on the
-- token: an instance whose lease was lost (swept and re-claimed elsewhere) cannot overwrite the
-- newer attempt's outcome, even when the same instance re-claimed the event later.
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "leaseOwner" TEXT;
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "leaseExpiresAt" TIMESTAMPTZ(6);
ALTER TABLE "Outbox" ADD COLUMN IF NOT EXISTS "leaseToken" BIGINT;

-- The claim walks due events oldest first; this partial index holds only PENDING rows, so it stays
-- small however many COMPLETED rows the table keeps.
CREATE INDEX IF NOT EXISTS "Outbox_worker_due_idx" ON "Outbox" ("createdAt") WHERE "status" = 'PENDING';
-- The lease sweep looks for PROCESSING rows whose lease ran out. (Dropped again by migration 003:
-- the sweep does as well without it, and every claim paid for it.)
CREATE INDEX IF NOT EXISTS "Outbox_worker_lease_idx" ON "Outbox" ("leaseExpiresAt") WHERE "status" = 'PROCESSING';
-- The retention sweep deletes old COMPLETED rows in small batches.
CREATE INDEX IF NOT EXISTS "Outbox_worker_retention_idx" ON "Outbox" ("processedAt") WHERE "status" = 'COMPLETED';

-- Wake-up on insert: idle instances LISTEN on outbox_worker and claim at once. One notification per
-- inserting statement (and PostgreSQL folds identical notifications of a transaction into one), so
-- a bulk insert costs one notification, delivered at commit.
CREATE OR REPLACE FUNCTION outbox_worker_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_worker', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "Outbox_worker_notify" ON "Outbox";
CREATE TRIGGER "Outbox_worker_notify" AFTER INSERT ON "Outbox"
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_worker_notify();

-- The writer (SPEC 2, "Writing events"): one "EventLog" row and one "Outbox" row, atomically, in
-- the caller's transaction. A repeated (eventKey, tenantId) writes nothing and returns the existing
-- ids with duplicate = true. ON CONFLICT waits for a concurrent writer of the same key to finish,
-- so two racing writers never both insert.
CREATE OR REPLACE FUNCTION outbox_write_event(
    p_event_key      TEXT,
    p_tenant_id      TEXT,
    p_event_type     TEXT,
    p_payload        JSONB,
    p_project_id     TEXT DEFAULT NULL,
    p_metadata       JSONB DEFAULT NULL,
    p_correlation_id TEXT DEFAULT NULL,
    p_max_retries    INTEGER DEFAULT NULL)
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
                          "updatedAt")
    VALUES (v_outbox_id, v_log_id, p_tenant_id, p_event_type, p_payload,
            COALESCE(p_max_retries, 5), now());
    RETURN QUERY SELECT v_log_id, v_outbox_id, FALSE;
END
$$;

-- Retry from the dead-letter queue (SPEC 2): a new PENDING "Outbox" row for the same event, due
-- now, with a fresh attempt budget, and the DLQ row removed, in one transaction (the caller's, or
-- the statement's own). The DLQ row is locked first so two operators retrying the same entry at
-- once create one row, and the second gets a clear error.
CREATE OR REPLACE FUNCTION outbox_retry_dlq(p_dlq_id TEXT) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_dlq         "DlqEventLog"%ROWTYPE;
    v_log_id      TEXT;
    v_max_retries INTEGER;
    v_outbox_id   TEXT;
    v_orig_log_id TEXT;
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

    v_outbox_id := 'obx_' || replace(gen_random_uuid()::text, '-', '');
    INSERT INTO "Outbox" ("id", "eventLogId", "tenantId", "eventType", "payload", "status",
                          "retryCount", "maxRetries", "nextRetryAt", "updatedAt")
    VALUES (v_outbox_id, v_log_id, v_dlq."tenantId", v_dlq."eventType", v_dlq."payload",
            'PENDING', 0, COALESCE(v_max_retries, 5), NULL, now());
    DELETE FROM "DlqEventLog" WHERE "id" = p_dlq_id;
    RETURN v_outbox_id;
END
$$;
