-- Raw results age out; what was derived from them stays. SQLite keeps one table and
-- deletes old results in bounded batches (`lastmile_domain::retention`), by the day
-- they were received on.
--
-- What the leaderboard and the agents page counted by scanning every raw result (each
-- agent's counted results and measuring time) is kept per agent and UTC day, added to
-- by the fold that counts the results (`ingest::fold_pending`). Backfilled here.
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
CREATE INDEX results_received ON results (received_at);
