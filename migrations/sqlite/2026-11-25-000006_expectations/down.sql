ALTER TABLE results DROP COLUMN redirect_us;
ALTER TABLE results DROP COLUMN redirects;
ALTER TABLE results DROP COLUMN bytes_decoded;
ALTER TABLE results DROP COLUMN http_version;
ALTER TABLE results DROP COLUMN ip_version;
ALTER TABLE results DROP COLUMN remote_addr;
ALTER TABLE checks DROP COLUMN max_redirects;
