DROP INDEX agents_volunteer_ip;
DROP INDEX results_run;
DROP INDEX results_peers;
DROP INDEX results_fingerprint;
DROP TABLE result_flags;
ALTER TABLE results DROP COLUMN flagged;
