-- Day and week cells: the hour cells of one UTC day (`span_us` one day), and the day
-- cells of one week (`span_us` seven days), merged per (country, region, ASN, class),
-- so that a report over 30 days reads a few cells per group instead of 720. Written by
-- the rollup pass (`lastmile_domain::rollups`) once a day is complete;
-- `aggregate_rollups` says up to when each check's hours are rolled up (all days before
-- `rolled_until`, and every week that ends by then).
CREATE TABLE rollup_cells (
    check_id TEXT NOT NULL,
    span_us BIGINT NOT NULL,
    bucket_start BIGINT NOT NULL,
    country TEXT NOT NULL,
    region TEXT NOT NULL,
    asn BIGINT NOT NULL,
    connection_class TEXT NOT NULL,
    successes BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    dns_hist BLOB NOT NULL,
    connect_hist BLOB NOT NULL,
    tls_hist BLOB NOT NULL,
    ttfb_hist BLOB NOT NULL,
    transfer_hist BLOB NOT NULL,
    total_hist BLOB NOT NULL,
    PRIMARY KEY (check_id, span_us, bucket_start, country, region, asn, connection_class)
);
CREATE TABLE aggregate_rollups (
    check_id TEXT PRIMARY KEY,
    rolled_until BIGINT NOT NULL
);
