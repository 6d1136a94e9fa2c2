-- A result keeps its foreign key to its assignment, but no longer to its run, check and
-- agent. PostgreSQL checks a foreign key by locking the referenced row (FOR KEY SHARE),
-- so every result of one check locked the same `checks` row (and of one run the same
-- `runs` row): concurrent accepts shared those locks through MultiXacts, and an insert
-- into `results` cost 270 µs a row in `bench ingest`. Results are written only by
-- `ingest::accept`, from the assignment it has locked, whose run, check and agent exist
-- and are never deleted; the assignment's own key (already locked by the accept) still
-- ties each result to them.
ALTER TABLE results DROP CONSTRAINT results_run_id_fkey;
ALTER TABLE results DROP CONSTRAINT results_check_id_fkey;
ALTER TABLE results DROP CONSTRAINT results_agent_id_fkey;
