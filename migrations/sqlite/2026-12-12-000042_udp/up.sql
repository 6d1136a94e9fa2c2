-- UDP checks (kind 'udp'): the stream a check asks for, as JSON
-- ({"interval_ms": 20, "duration_ms": 10000, "packet_bytes": 172}); NULL for the other
-- kinds. The reflector's token is its site's verification token, read when a run is
-- made, never copied here. A udp result's figures (round trip, jitter, loss) go into
-- results.figures (000040).
ALTER TABLE checks ADD COLUMN udp TEXT;
