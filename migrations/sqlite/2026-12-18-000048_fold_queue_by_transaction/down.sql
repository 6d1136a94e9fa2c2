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
WITH RECURSIVE split(entry, queued_at, id, rest) AS (
    SELECT first_assignment_id, queued_at, '', assignment_ids || ' ' FROM fold_queue
    UNION ALL
    SELECT entry, queued_at, substr(rest, 1, instr(rest, ' ') - 1), substr(rest, instr(rest, ' ') + 1)
      FROM split WHERE rest <> ''
)
INSERT INTO fold_queue_by_run (run_id, first_assignment_id, assignment_ids, results, queued_at)
    SELECT a.run_id, MIN(a.id), group_concat(a.id, ' '), COUNT(*), s.queued_at
      FROM split s JOIN assignments a ON a.id = s.id
     WHERE s.id <> ''
     GROUP BY s.entry, s.queued_at, a.run_id;
DROP TABLE fold_queue;
ALTER TABLE fold_queue_by_run RENAME TO fold_queue;
CREATE INDEX fold_queue_queued ON fold_queue (queued_at);
