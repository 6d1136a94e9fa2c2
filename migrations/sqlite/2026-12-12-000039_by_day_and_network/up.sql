-- Reads that had no index but their table's primary key, which does not start with
-- what they filter on (found by EXPLAIN QUERY PLAN over every statement the demo and the
-- alert, ISP, live, ledger, leaderboard and retention tests send, stop 32):
-- the leaderboard's week and month read agents' uptime and work since a day, and read
-- every day of every agent (100k agents keep 36M uptime rows a year);
CREATE INDEX agent_uptime_day ON agent_uptime (day);
CREATE INDEX agent_work_days_day ON agent_work_days (day);
-- an ISP's views read the cells of its networks in a window, and read every cell of
-- every check.
CREATE INDEX aggregates_asn ON aggregates (asn, bucket_start);
