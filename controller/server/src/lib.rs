//! The Lastmile controller as a service: the HTTP API agents, owners, ISPs and operators
//! call, the dashboard's handlers, and the scheduler loop, over [`lastmile_domain`].
//!
//! Layout, from the outside in:
//! - [`api`]: actix-web handlers, thin: extract, authenticate, call one domain function,
//!   answer. All HTTP error mapping of the JSON API lives in [`api::error`].
//! - [`web`]: the dashboard's handlers (browser sessions, forms), equally thin, rendering
//!   `lastmile_dashboard` pages.
//! - [`server`] wires the state ([`AppState`]) and the scheduler loop into a service that
//!   starts and stops cleanly; [`config`] is every setting, from flags, environment and
//!   TOML.
//! - [`agent_listener`]: the agent protocol's hot calls on an address of their own, over
//!   a minimal HTTP/1.1 whose idle connections hold no buffer; they and the actix
//!   handlers answer through [`api::agent_calls`].
//! - [`agent_work`]: agents served from memory (heartbeats, long-polled leases) and the
//!   loop that keeps that memory and the database in step.
//! - [`folding`]: accepted results folded into aggregates and paid in batches (group
//!   commit), and the background pass for what is left.
//! - What only a serving process has: [`metrics`] (Prometheus counters),
//!   [`access_log`] (one line per request; agents' polls at debug),
//!   [`calibration_timing`] (the controller's
//!   own clock on an agent's calibration requests).
//!
//! The rules are in `lastmile_domain`, the storage in `lastmile_storage`; this crate
//! holds no SQL. The demo, which puts the test bed next to the controller, is its own
//! crate (`lastmile-demo`), so nothing of the test bed is in this crate's graph.

pub mod accepting;
pub mod access_log;
pub mod agent_listener;
pub mod agent_work;
pub mod alerting;
pub mod api;
pub mod calibration_timing;
pub mod cli;
pub mod config;
pub mod folding;
pub mod http_status;
pub mod metrics;
pub mod nul_text;
pub mod server;
pub mod smtp;
pub mod state;
pub mod web;

pub use config::ControllerConfig;
pub use lastmile_domain::Error;
pub use server::Controller;
pub use state::AppState;
