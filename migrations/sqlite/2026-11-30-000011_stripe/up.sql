-- Stripe: Checkout sessions owners opened to buy credit, webhook events already
-- processed, volunteers' Connect accounts, and payouts (Stripe Transfers).

-- A Checkout session we created; the webhook that completes it credits the amount
-- recorded here to the owner recorded here (never what the event claims).
CREATE TABLE stripe_checkouts (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES owners(id),
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX stripe_checkouts_owner ON stripe_checkouts (owner_id);

-- Each webhook event is processed once: its id is written in the same transaction as
-- its effect on the ledger.
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

-- A volunteer's Connect Express account (one per volunteer).
CREATE TABLE stripe_accounts (
    volunteer_id TEXT PRIMARY KEY REFERENCES volunteers(id),
    account_id TEXT NOT NULL UNIQUE,
    payouts_enabled BOOLEAN NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One payout: a Stripe Transfer to the volunteer's account, sent with the idempotency
-- key "payout-<id>". status: in_transit (sent or being retried), completed, failed,
-- reversed.
CREATE TABLE payouts (
    id TEXT PRIMARY KEY,
    volunteer_id TEXT NOT NULL REFERENCES volunteers(id),
    account_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    transfer_id TEXT UNIQUE,
    failure_reason TEXT,
    attempts INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payouts_volunteer ON payouts (volunteer_id, created_at);
CREATE INDEX payouts_status ON payouts (status);
