-- One queue entry per run and accepting transaction, not per result: a batch of 500
-- results spread over 200 runs writes 200 entries, and a run whose results arrive
-- together (the usual case in the field: its agents measure at the same moment)
-- writes one. The queue was a quarter of the rows written per accepted result, each
-- with three index entries, deleted seconds later.
--
-- `assignment_ids`: the entry's results, space-separated (the first is also
-- `first_assignment_id`, which makes the key: each assignment is queued once).
-- `results`: how many, for the readers that count what a run still has queued.
-- `queued_at` is the results' `received_at` (the same transaction's clock), so
-- retention tells a queued result by time, without reading the ids.
CREATE TABLE fold_queue_by_run (
    run_id TEXT NOT NULL,
    first_assignment_id TEXT NOT NULL,
    assignment_ids TEXT NOT NULL,
    results INTEGER NOT NULL CHECK (results > 0),
    queued_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, first_assignment_id)
);
INSERT INTO fold_queue_by_run (run_id, first_assignment_id, assignment_ids, results, queued_at)
    SELECT run_id, assignment_id, assignment_id, 1, queued_at FROM fold_queue;
DROP TABLE fold_queue;
ALTER TABLE fold_queue_by_run RENAME TO fold_queue;
ALTER INDEX fold_queue_by_run_pkey RENAME TO fold_queue_pkey;
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
