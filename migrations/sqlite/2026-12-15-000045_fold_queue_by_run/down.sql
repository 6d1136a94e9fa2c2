CREATE TABLE fold_queue_by_result (
    assignment_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    queued_at BIGINT NOT NULL
);
WITH RECURSIVE split(run_id, queued_at, id, rest) AS (
    SELECT run_id, queued_at, '', assignment_ids || ' ' FROM fold_queue
    UNION ALL
    SELECT run_id, queued_at, substr(rest, 1, instr(rest, ' ') - 1), substr(rest, instr(rest, ' ') + 1)
      FROM split WHERE rest <> ''
)
INSERT INTO fold_queue_by_result (assignment_id, run_id, queued_at)
    SELECT id, run_id, queued_at FROM split WHERE id <> '';
DROP TABLE fold_queue;
ALTER TABLE fold_queue_by_result RENAME TO fold_queue;
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
CREATE INDEX fold_queue_run ON fold_queue (run_id);
