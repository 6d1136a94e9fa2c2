-- Raw results age out; what was derived from them stays.
--
-- 1. What the leaderboard and the agents page counted by scanning every raw result
--    (each agent's counted results and measuring time) is kept per agent and UTC day,
--    added to by the fold that counts the results (`ingest::fold_pending`). Backfilled
--    here from the results already stored.
CREATE TABLE agent_work_days (
    agent_id TEXT NOT NULL REFERENCES agents(id),
    day BIGINT NOT NULL,
    results BIGINT NOT NULL,
    measuring_us BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, day)
);
INSERT INTO agent_work_days (agent_id, day, results, measuring_us, last_at)
SELECT agent_id, received_at / 86400000000, COUNT(*), COALESCE(SUM(total_us), 0), MAX(received_at)
  FROM results
 WHERE NOT late AND NOT flagged AND assignment_id NOT IN (SELECT assignment_id FROM fold_queue)
 GROUP BY agent_id, received_at / 86400000000;

-- 2. `results` is partitioned by the UTC day it was received on, so that a retention
--    pass drops a whole day at once (`lastmile_domain::retention`) instead of deleting
--    rows. A partitioned table's keys must hold the partition key: the primary key
--    becomes (assignment_id, received_at). One result per assignment is still certain:
--    `ingest::accept` stores a result only for an assignment it has locked and found
--    leased, and closes the assignment in the same transaction. Flags no longer point at
--    their result by a foreign key (PostgreSQL cannot reference a partitioned table
--    without the partition key); they age out with it.
ALTER TABLE result_flags DROP CONSTRAINT result_flags_assignment_id_fkey;
ALTER TABLE results RENAME TO results_unpartitioned;
ALTER INDEX results_pkey RENAME TO results_unpartitioned_pkey;
CREATE TABLE results (
    LIKE results_unpartitioned INCLUDING DEFAULTS,
    PRIMARY KEY (assignment_id, received_at),
    FOREIGN KEY (assignment_id) REFERENCES assignments(id)
) PARTITION BY RANGE (received_at);
-- Rows of a day without its own partition land here (the retention pass creates the
-- coming days' partitions ahead, and moves such rows when it creates one).
CREATE TABLE results_default PARTITION OF results DEFAULT;
DO $$
DECLARE
    d BIGINT;
BEGIN
    FOR d IN
        SELECT DISTINCT received_at / 86400000000 FROM results_unpartitioned
        UNION
        SELECT floor(extract(epoch FROM now()) / 86400)::BIGINT + g FROM generate_series(0, 2) g
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF results FOR VALUES FROM (%s) TO (%s)',
            'results_' || to_char(to_timestamp(d * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD'),
            d * 86400000000, (d + 1) * 86400000000);
    END LOOP;
END
$$;
INSERT INTO results SELECT * FROM results_unpartitioned;
DROP TABLE results_unpartitioned;
CREATE INDEX results_check_time ON results (check_id, started_at);
CREATE INDEX results_fingerprint ON results (total_us, ttfb_us);
CREATE INDEX results_peers ON results (check_id, asn, connection_class, received_at);
CREATE INDEX results_run ON results (run_id);
