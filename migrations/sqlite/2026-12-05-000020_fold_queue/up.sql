-- Results are appended, then folded: accepting a result stores it and queues it here
-- in one short transaction; a folder takes queued results in batches, merges them into
-- their aggregate cells (one write per cell, not per result), pays for them in one
-- ledger transaction per batch and deletes them from the queue in the same
-- transaction. So results of one check no longer serialise on their aggregate row, run
-- or ledger accounts, and a result the API acknowledged is never lost: it is either
-- queued or folded. `run_id`: a run is finished only when none of its results is
-- still queued.
CREATE TABLE fold_queue (
    assignment_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    queued_at BIGINT NOT NULL
);
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
CREATE INDEX fold_queue_run ON fold_queue (run_id);

-- Which ledger transaction paid for each counted result, and how much: the primary key
-- makes paying a result twice impossible, and an audit can match every counted result
-- to its payment although results are paid in batches (one ledger transaction each).
CREATE TABLE result_payments (
    assignment_id TEXT PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    price_minor BIGINT NOT NULL
);
CREATE INDEX result_payments_transaction ON result_payments (transaction_id);
