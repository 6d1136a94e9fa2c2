-- Throughput checks (kind 'throughput'): the load a check asks for, as JSON
-- ({"connections": 4, "duration_ms": 10000}); NULL for the other kinds.
ALTER TABLE checks ADD COLUMN throughput TEXT;
-- The figures a result's measurement gave besides its phases, as the controller
-- derived them at ingest from the kind's summary: a JSON object of figure wire name
-- to value in the figure's unit ({"goodput": 15872, "idle_latency": 41000,
-- "loaded_latency": 288000}). NULL for kinds whose figures come from the phases alone
-- (an http body's goodput is derived from bytes and transfer at the fold). A new kind's
-- figures (jitter, loss, stall time) go here too: no new column.
ALTER TABLE results ADD COLUMN figures TEXT;
