-- Peers (`verification::Verifier::peers_of`): a (check, ASN, class) cell's recent
-- counted successes (not flagged, not late, no error), newest first.
--
-- Keyed by the cell as one expression, not by its three columns: a day's partition has
-- no statistics until autovacuum analyzes it, and PostgreSQL then cannot tell a cell
-- from its check. It read the peers through `results_check_received` and filtered out
-- the check's other cells (2.5 ms a lookup, a third of the database's time in
-- `bench ingest`); no other index has this expression, so the lookup takes this one
-- whatever the statistics say. Partial: failures and late results, never peers, cost
-- no entry. The lookup states the predicate as literals, so that a prepared
-- statement's generic plan can use the index too. Built on every day's partition in
-- this one step: on a large database result writes wait for the build (agents keep
-- their results and send them again).
DROP INDEX results_peers;
CREATE INDEX results_peers
    ON results ((check_id || '|' || asn::text || '|' || connection_class), received_at)
    WHERE NOT flagged AND NOT late AND error_kind IS NULL;
