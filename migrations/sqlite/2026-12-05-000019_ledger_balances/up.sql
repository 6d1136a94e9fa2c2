-- Each account keeps its running balance beside its postings, updated in the
-- transaction that posts them: reading or checking a balance is one row, not a sum over
-- all history. The postings stay the truth: `ledger::audit` recomputes every balance
-- from them and reports any difference.
ALTER TABLE ledger_accounts ADD COLUMN balance_minor BIGINT NOT NULL DEFAULT 0;
UPDATE ledger_accounts SET balance_minor = COALESCE(
    (SELECT SUM(p.amount_minor) FROM ledger_postings p WHERE p.account_id = ledger_accounts.id), 0);
