//! Integration tests: the controller's storage and HTTP API on both database backends,
//! and the whole system end to end. One test binary for all of them (link time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod support;

mod agent_lifecycle;
mod api_errors;
mod calibration;
mod dashboard;
mod end_to_end;
mod isp;
mod leaderboard;
mod leasing;
mod ledger;
mod reports;
mod results;
mod stripe;
