-- The lease sweep finds expired leases through the application's own ("status", "nextRetryAt")
-- index: it reads the PROCESSING rows, which are only the events running or about to run on the
-- instances (a few thousand at most), and filters them on "leaseExpiresAt". The partial index that
-- migration 002 created for it cost more than it saved: every claim inserted an entry into it,
-- one of five index insertions per claim, and removing it raised the burn-down under production
-- durability by a fifth (docs/PERFORMANCE.md). Dropping an index of our own changes no data; on a
-- large live table the DROP takes a brief exclusive lock, like the CREATE it undoes.
DROP INDEX IF EXISTS "Outbox_worker_lease_idx";
