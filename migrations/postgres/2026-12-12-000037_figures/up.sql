-- The figures of a cell that are not timing phases (goodput now; jitter, loss, stall
-- time with the streaming and gaming kinds), one HdrHistogram each, keyed by the
-- figure's wire name in one value (`figures.rs` in the domain crate reads and writes
-- it). NULL while the cell has none, which is most http cells: a new figure needs no
-- new column, and a replica that does not know a figure keeps its histogram as it is.
ALTER TABLE aggregates ADD COLUMN figures BYTEA;
ALTER TABLE rollup_cells ADD COLUMN figures BYTEA;
ALTER TABLE rollup_cells ALTER COLUMN figures SET COMPRESSION lz4;
