-- The double-entry ledger (lastmile-billing owns these tables; see billing/src/store.rs).
-- Balances are never stored: an account's balance is the sum of its postings.
CREATE TABLE ledger_accounts (
    -- "<kind>:<holder>:<currency>" or "<kind>:<currency>" for platform accounts.
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    holder TEXT,
    currency TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_accounts_holder ON ledger_accounts (holder);

-- One balanced movement of money. event_key names the event that caused it, so the
-- same event can never post twice.
CREATE TABLE ledger_transactions (
    id TEXT PRIMARY KEY,
    event_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    memo TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Signed amounts in minor units; the postings of one transaction sum to zero per currency.
CREATE TABLE ledger_postings (
    transaction_id TEXT NOT NULL REFERENCES ledger_transactions (id),
    account_id TEXT NOT NULL REFERENCES ledger_accounts (id),
    amount_minor BIGINT NOT NULL,
    PRIMARY KEY (transaction_id, account_id)
);
CREATE INDEX ledger_postings_account ON ledger_postings (account_id);
