CREATE TABLE fold_queue_by_result (
    assignment_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    queued_at BIGINT NOT NULL
);
INSERT INTO fold_queue_by_result (assignment_id, run_id, queued_at)
    SELECT id, q.run_id, q.queued_at
      FROM fold_queue q CROSS JOIN unnest(string_to_array(q.assignment_ids, ' ')) AS id;
DROP TABLE fold_queue;
ALTER TABLE fold_queue_by_result RENAME TO fold_queue;
ALTER INDEX fold_queue_by_result_pkey RENAME TO fold_queue_pkey;
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
CREATE INDEX fold_queue_run ON fold_queue (run_id);
