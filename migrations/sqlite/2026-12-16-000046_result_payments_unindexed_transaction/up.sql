-- A paid result's link to the ledger transaction that paid it is written once per
-- counted result, in the fold, and read by assignment (a second payment of a result
-- fails on the primary key; archiving a run deletes its results' links). Nothing in
-- the product reads the links by transaction: an operator's audit of one transaction
-- ("which results did it pay") is rare and may read the table. The index by
-- transaction cost every result an entry in a second B-tree (with `bench ingest
-- --in-process`, writing the links was 6.4 µs of PostgreSQL's time a result).
DROP INDEX result_payments_transaction;
