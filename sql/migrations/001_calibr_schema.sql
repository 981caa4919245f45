-- The Calibr event-bus schema (SPEC section 1), exactly as the application's own migration creates
-- it. Every statement is conditional: on a database where the application already created these
-- objects nothing here changes them. Indexes are only created together with their table, so an
-- existing deployment whose indexes carry other names does not get duplicates.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'OutboxStatus' AND n.nspname = current_schema()) THEN
        CREATE TYPE "OutboxStatus" AS ENUM ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED');
    END IF;
END
$$;

DO $$
BEGIN
    IF to_regclass('"EventLog"') IS NULL THEN
        CREATE TABLE "EventLog" (
            "id"            TEXT NOT NULL,
            "eventKey"      TEXT NOT NULL,
            "tenantId"      TEXT NOT NULL,
            "projectId"     TEXT,
            "eventType"     TEXT NOT NULL,
            "payload"       JSONB NOT NULL,
            "metadata"      JSONB,
            "correlationId" TEXT,
            "createdAt"     TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "version"       INTEGER NOT NULL DEFAULT 1,
            CONSTRAINT "EventLog_pkey" PRIMARY KEY ("id")
        );
        CREATE UNIQUE INDEX "EventLog_eventKey_tenantId_unique" ON "EventLog" ("eventKey", "tenantId");
        CREATE INDEX "EventLog_tenantId_eventType_createdAt_idx" ON "EventLog" ("tenantId", "eventType", "createdAt");
        CREATE INDEX "EventLog_correlationId_idx" ON "EventLog" ("correlationId");
        CREATE INDEX "EventLog_createdAt_idx" ON "EventLog" ("createdAt");
    END IF;

    IF to_regclass('"Outbox"') IS NULL THEN
        CREATE TABLE "Outbox" (
            "id"          TEXT NOT NULL,
            "eventLogId"  TEXT NOT NULL,
            "tenantId"    TEXT NOT NULL,
            "eventType"   TEXT NOT NULL,
            "payload"     JSONB NOT NULL,
            "status"      "OutboxStatus" NOT NULL DEFAULT 'PENDING',
            "retryCount"  INTEGER NOT NULL DEFAULT 0,
            "maxRetries"  INTEGER NOT NULL DEFAULT 5,
            "nextRetryAt" TIMESTAMPTZ(6),
            "lastError"   TEXT,
            "processedAt" TIMESTAMPTZ(6),
            "createdAt"   TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "updatedAt"   TIMESTAMPTZ(6) NOT NULL,
            CONSTRAINT "Outbox_pkey" PRIMARY KEY ("id")
        );
        CREATE INDEX "Outbox_status_nextRetryAt_idx" ON "Outbox" ("status", "nextRetryAt");
        CREATE INDEX "Outbox_tenantId_status_idx" ON "Outbox" ("tenantId", "status");
        CREATE INDEX "Outbox_createdAt_idx" ON "Outbox" ("createdAt");
    END IF;

    IF to_regclass('"DlqEventLog"') IS NULL THEN
        CREATE TABLE "DlqEventLog" (
            "id"            TEXT NOT NULL,
            "originalId"    TEXT NOT NULL,
            "eventKey"      TEXT NOT NULL,
            "tenantId"      TEXT NOT NULL,
            "projectId"     TEXT,
            "eventType"     TEXT NOT NULL,
            "payload"       JSONB NOT NULL,
            "metadata"      JSONB,
            "failureReason" TEXT NOT NULL,
            "retryCount"    INTEGER NOT NULL,
            "failedAt"      TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            CONSTRAINT "DlqEventLog_pkey" PRIMARY KEY ("id")
        );
        CREATE INDEX "DlqEventLog_tenantId_eventType_idx" ON "DlqEventLog" ("tenantId", "eventType");
        CREATE INDEX "DlqEventLog_failedAt_idx" ON "DlqEventLog" ("failedAt");
    END IF;
END
$$;
