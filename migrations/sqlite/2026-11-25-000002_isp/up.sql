-- Checks may share their results (never their URLs) with the ISPs whose networks the
-- measuring agents sit in; and may require the body to contain a string.
ALTER TABLE checks ADD COLUMN isp_sharing BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE checks ADD COLUMN body_contains TEXT;

-- ISP accounts and the autonomous systems they have shown to be theirs.
CREATE TABLE isps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE isp_asns (
    isp_id TEXT NOT NULL REFERENCES isps(id),
    asn BIGINT NOT NULL,
    -- 'admin' (set by an operator) or 'email' (a code sent to the ASN's contact).
    proven_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (isp_id, asn)
);
CREATE INDEX isp_asns_asn ON isp_asns (asn);

-- Where ownership proofs for an ASN are sent; kept by the operator.
CREATE TABLE asn_contacts (
    asn BIGINT PRIMARY KEY,
    email TEXT NOT NULL
);

-- A pending proof: a code mailed to the ASN's contact address.
CREATE TABLE asn_claims (
    id TEXT PRIMARY KEY,
    isp_id TEXT NOT NULL REFERENCES isps(id),
    asn BIGINT NOT NULL,
    code_hash TEXT NOT NULL,
    sent_to TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    confirmed_at BIGINT
);
