-- PostgreSQL drops the foreign key of `results` to `assignments` here (see its
-- migration). SQLite's one writer shares no lock through it, dropping it would mean
-- rebuilding the table, and the schema stays as it was.
SELECT 1;
