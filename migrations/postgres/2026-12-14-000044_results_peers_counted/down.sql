DROP INDEX results_peers;
CREATE INDEX results_peers ON results (check_id, asn, connection_class, received_at);
