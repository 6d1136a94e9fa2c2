DROP INDEX runs_archived;
