DROP TABLE payouts;
DROP TABLE stripe_accounts;
DROP TABLE stripe_events;
DROP TABLE stripe_checkouts;
