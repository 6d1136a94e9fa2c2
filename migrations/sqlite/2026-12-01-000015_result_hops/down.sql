ALTER TABLE results DROP COLUMN redirect_hops;
