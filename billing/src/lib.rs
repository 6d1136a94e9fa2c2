//! Lastmile billing: ledger, crediting rules, leaderboard and payouts. Empty until the marketplace issue lands; the controller does not depend on it yet.
