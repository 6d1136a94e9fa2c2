ALTER TABLE runs DROP COLUMN price_currency;
ALTER TABLE runs DROP COLUMN price_minor;
ALTER TABLE runs DROP COLUMN task;
