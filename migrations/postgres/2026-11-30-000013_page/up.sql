-- A page check's summary (JSON of the protocol's PageSummary: sub-resources, bytes,
-- connections, counts per type, the slowest resource, the failed ones); NULL for http
-- checks. The result's phases stay in their columns: for a page, total_us is the
-- page total and the other phases are the HTML document's.
ALTER TABLE results ADD COLUMN page TEXT;
