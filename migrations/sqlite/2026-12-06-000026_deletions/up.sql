-- Owners delete checks and sites (`DELETE /api/v1/checks/{id}`, `/sites/{id}`). The
-- rows stay, marked: runs, results, aggregates, payments and the ledger refer to them
-- and are kept; a deleted check or site is gone from the owner's lists and lookups,
-- is never scheduled again, and its open runs stop.
ALTER TABLE checks ADD COLUMN deleted_at BIGINT;
ALTER TABLE sites ADD COLUMN deleted_at BIGINT;
