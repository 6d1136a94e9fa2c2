-- Back to an entry per run and transaction: each entry's results split by the run of
-- their assignment.
CREATE TABLE fold_queue_by_run (
    run_id TEXT NOT NULL,
    first_assignment_id TEXT NOT NULL,
    assignment_ids TEXT NOT NULL,
    results INTEGER NOT NULL CHECK (results > 0),
    queued_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, first_assignment_id)
);
INSERT INTO fold_queue_by_run (run_id, first_assignment_id, assignment_ids, results, queued_at)
    SELECT a.run_id, MIN(a.id), string_agg(a.id, ' ' ORDER BY a.id), COUNT(*), q.queued_at
      FROM fold_queue q
      CROSS JOIN unnest(string_to_array(q.assignment_ids, ' ')) AS k (id)
      JOIN assignments a ON a.id = k.id
     GROUP BY q.first_assignment_id, q.queued_at, a.run_id;
DROP TABLE fold_queue;
ALTER TABLE fold_queue_by_run RENAME TO fold_queue;
ALTER INDEX fold_queue_by_run_pkey RENAME TO fold_queue_pkey;
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
