-- One queue entry per accepting transaction, not per run and transaction. In the field
-- a group commit of many agents' results holds results of many runs, a run's agents
-- seldom in the same few milliseconds, so an entry held one result or two: with
-- `bench ingest --in-process` 200 entries for 500 results, a row, a key and a time
-- entry each, written and deleted seconds later (3.4 µs of PostgreSQL's time a result
-- for the `COPY`, 1.5 µs for the take).
--
-- `assignment_ids`: the entry's results, space-separated (the first is also
-- `first_assignment_id`, the key: each assignment is queued once).
-- `runs`: the runs the results belong to, as a JSON object of run id to how many of
-- the entry's results are that run's, for the readers that ask what a run still has
-- queued (a run's status, settling, held credit): they read it with `json_each`, as
-- both backends spell it.
-- `results`: how many in all.
-- `queued_at` is the results' `received_at` (the same transaction's clock), so
-- retention tells a queued result by time, without reading the ids.
CREATE TABLE fold_queue_by_transaction (
    first_assignment_id TEXT PRIMARY KEY,
    assignment_ids TEXT NOT NULL,
    runs JSON NOT NULL,
    results INTEGER NOT NULL CHECK (results > 0),
    queued_at BIGINT NOT NULL
);
INSERT INTO fold_queue_by_transaction (first_assignment_id, assignment_ids, runs, results, queued_at)
    SELECT first_assignment_id, assignment_ids, json_build_object(run_id, results), results, queued_at
      FROM fold_queue;
DROP TABLE fold_queue;
ALTER TABLE fold_queue_by_transaction RENAME TO fold_queue;
ALTER INDEX fold_queue_by_transaction_pkey RENAME TO fold_queue_pkey;
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
-- A group commit's entry holds hundreds of ids (37 bytes each) and runs: kept out of
-- line (TOAST), and not compressed. UUIDs in hex do not compress, and trying cost
-- 0.4 ms an entry of 500 ids (a `COPY` of 300 such rows: 178 ms, 51 ms without).
ALTER TABLE fold_queue
    ALTER COLUMN assignment_ids SET STORAGE EXTERNAL,
    ALTER COLUMN runs SET STORAGE EXTERNAL;
