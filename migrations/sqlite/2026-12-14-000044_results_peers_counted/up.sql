-- Peers (`verification::Verifier::peers_of`): a (check, ASN, class) cell's recent
-- counted successes (not flagged, not late, no error), newest first. Partial: failures
-- and late results, never peers, cost no entry. (PostgreSQL keys its index by the cell
-- as one expression, for want of statistics on a new day's partition; SQLite plans by
-- the statement's shape and takes this index for the cell's three columns.)
DROP INDEX results_peers;
CREATE INDEX results_peers ON results (check_id, asn, connection_class, received_at)
    WHERE NOT flagged AND NOT late AND error_kind IS NULL;
