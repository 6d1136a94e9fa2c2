-- PostgreSQL drops the foreign keys of `results` to runs, checks and agents here (their
-- checks locked one shared row per check for every result). SQLite has one writer, so
-- its checks share nothing; dropping a constraint would mean rebuilding the table, and
-- the schema stays as it was.
SELECT 1;
