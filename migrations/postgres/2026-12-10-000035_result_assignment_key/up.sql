-- A result no longer has a foreign key to its assignment (its keys to runs, checks and
-- agents went in migration 000021, for the same reason). Checking it cost 6.3 µs of
-- the accept path's ~70 µs of PostgreSQL time a result (a key-share lock and a probe
-- of `assignments` per row, measured with `pg_stat_statements.track = all` in `bench
-- ingest`), and two thirds of a run-history archive batch (each deleted assignment
-- checked against the index of every day's partition of `results`). What it guarded
-- holds without it: results are written only by `ingest::accept`, from an assignment
-- it has locked, and `run_history::archive` deletes a run's assignments only once no
-- result of the run is left (one lookup for its batch).
DO $$
DECLARE c record;
BEGIN
  FOR c IN SELECT conname FROM pg_constraint
           WHERE conrelid = 'results'::regclass AND contype = 'f'
             AND confrelid = 'assignments'::regclass LOOP
    EXECUTE format('ALTER TABLE results DROP CONSTRAINT %I', c.conname);
  END LOOP;
END $$;
