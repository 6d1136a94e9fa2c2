DROP TABLE asn_claims;
DROP TABLE asn_contacts;
DROP TABLE isp_asns;
DROP TABLE isps;
ALTER TABLE checks DROP COLUMN body_contains;
ALTER TABLE checks DROP COLUMN isp_sharing;
