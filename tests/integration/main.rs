//! Integration tests: the controller's storage and HTTP API on both database backends,
//! and the whole system end to end. One test binary for all of them (link time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod cheater;
mod controller_process;
mod scene;
mod support;

mod agent_choice;
mod agent_lifecycle;
mod agent_rejections;
mod alerts;
mod api_errors;
mod batch_results;
mod calibration;
mod cheating;
mod check_changes;
mod crash;
mod currency;
mod dashboard;
mod dashboard_alerts;
mod dashboard_money;
mod dashboard_pages;
mod dashboard_runs;
mod dns;
mod end_to_end;
mod isp;
mod isp_claims;
mod layering;
mod leaderboard;
mod leasing;
mod ledger;
mod nul_text;
mod openapi;
mod page_checks;
mod presence;
mod readme;
mod replicas;
mod reports;
mod results;
mod retention;
mod run_results;
mod run_terms;
mod site_verification;
mod stripe;
mod verification;
