ALTER TABLE ledger_accounts DROP COLUMN balance_minor;
