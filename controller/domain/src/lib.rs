//! The Lastmile domain: what the product does, as functions over a database connection
//! (or a transaction) from `lastmile_storage`, with no HTTP and no server state. The
//! controller's handlers call these; so do the command line, the demo and the tests.
//!
//! One idea per module: [`accounts`] (owners, volunteers, secrets), [`agents`],
//! [`sites`] (and their verification), [`checks`], [`scheduling`] (runs, leases,
//! expiry), [`ingest`] (results and aggregation), [`verification`] (judging a result
//! before it counts), [`calibration`], [`run_results`], [`reports`] with
//! [`confidence`] and [`objectives`], [`isp`] (ISP accounts and their scoped views),
//! [`leaderboard`], [`logins`] and [`api_tokens`], and money: [`billing`] (prices,
//! admitting runs, paying results), [`payments`] (Stripe Checkout and webhooks),
//! [`payouts`] (Stripe Connect), [`stripe_api`]. Small helpers: [`clock`], [`geo`],
//! [`histogram`], [`countries`], [`dns_verify`]. [`error`] is the domain's one error
//! type, which the HTTP layer maps to answers.

pub mod accounts;
pub mod agent_choice;
pub mod agents;
pub mod alert_delivery;
pub mod alerts;
pub mod api_tokens;
pub mod billing;
pub mod calibration;
pub mod check_health;
pub mod check_lists;
pub mod check_terms;
pub mod checks;
pub mod confidence;
pub mod countries;
pub mod deletions;
pub mod dns_verify;
pub mod error;
pub mod figures;
pub mod fold_handoff;
pub mod geo;
pub mod histogram;
pub mod incidents;
pub mod ingest;
pub mod isp;
pub mod leaderboard;
pub mod live;
pub mod logins;
pub mod objectives;
pub mod path_traces;
pub mod payments;
pub mod payouts;
pub mod presence;
pub mod rate_limit;
pub mod recent;
pub mod reflectors;
pub mod reports;
pub mod retention;
pub mod rollups;
pub mod run_history;
pub mod run_results;
pub mod scheduling;
pub mod sites;
pub mod stripe_api;
pub mod token_cache;
pub mod verification;

pub use error::Error;
/// Time as the database keeps it (integer microseconds), from the storage layer.
pub use lastmile_storage::clock;
