-- The redirects an agent followed before the final response, as JSON of the protocol's
-- `Vec<Hop>` (URL, status, Location, address and timings of each hop), so that an owner
-- can see where a result went; NULL when there were none (and for results stored before
-- this migration, which kept only the count in `redirects`). Bounded at ingest.
ALTER TABLE results ADD COLUMN redirect_hops TEXT;
