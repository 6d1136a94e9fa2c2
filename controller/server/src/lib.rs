//! The Lastmile controller: the API agents and site owners talk to, the scheduler that
//! turns checks into runs and assignments, geo resolution of agents, aggregation of
//! results into HdrHistograms, and SLA reports.
//!
//! Layout, from the outside in:
//! - [`api`]: actix-web handlers, thin: extract, authenticate, call one domain function,
//!   answer. All HTTP error mapping lives in [`api::error`].
//! - [`web`]: the dashboard's handlers (browser sessions, forms), equally thin, rendering
//!   `lastmile_dashboard` pages.
//! - domain modules, one idea each: [`accounts`] (owners, volunteers, tokens),
//!   [`agents`], [`sites`], [`checks`], [`scheduling`] (runs, leases, expiry),
//!   [`ingest`] (results and aggregation), [`run_results`] (one run's results as its
//!   owner reads them), [`reports`], [`geo`], [`metrics`],
//!   [`api_tokens`] (named owner tokens), [`dns_verify`] (DNS TXT ownership proofs).
//!   [`payments`] (buying credit with Stripe Checkout, Stripe's webhooks),
//!   [`payouts`] (Connect accounts and payouts), [`stripe_api`] (the Stripe client and
//!   webhook signatures).
//! - [`db`]: the diesel layer over PostgreSQL and SQLite.
//! - [`server`] wires the state and the scheduler loop into a service that starts and
//!   stops cleanly; [`demo`] runs the whole product on one machine.

pub mod accounts;
pub mod agents;
pub mod api;
pub mod api_tokens;
pub mod billing;
pub mod calibration;
pub mod calibration_timing;
pub mod checks;
pub mod clock;
pub mod confidence;
pub mod config;
pub mod countries;
pub mod db;
pub mod demo;
pub mod dns_verify;
pub mod error;
pub mod geo;
pub mod histogram;
pub mod ingest;
pub mod isp;
pub mod leaderboard;
pub mod logins;
pub mod metrics;
pub mod objectives;
pub mod payments;
pub mod payouts;
pub mod rate_limit;
pub mod reports;
pub mod run_results;
pub mod scheduling;
pub mod server;
pub mod sites;
pub mod stripe_api;
pub mod verification;
pub mod web;

pub use config::ControllerConfig;
pub use error::Error;
pub use server::{AppState, Controller};
