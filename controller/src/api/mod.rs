//! The HTTP API: routes, the OpenAPI document, and extractor configuration.
//!
//! **Architecture Invariant:** handlers are thin. Each one extracts its inputs,
//! authenticates, calls one domain function through `Db::run` (so diesel never blocks
//! an actix worker), and answers. Handlers hold no SQL and no business rules.

pub mod agents;
pub mod auth;
pub mod error;
pub mod isp;
pub mod nul_text;
pub mod ops;
pub mod owners;
pub mod payments;
pub mod public;

use actix_web::web;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The generated OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Lastmile controller API", description = "Agents enrol, lease and report; owners schedule checks and read SLA reports."),
    paths(
        agents::enrol, agents::heartbeat, agents::lease, agents::submit,
        agents::calibration_ping, agents::calibration_download, agents::calibration_upload,
        agents::calibration_report,
        owners::me, owners::balance, owners::create_site, owners::list_sites, owners::get_site, owners::verify_site,
        owners::create_check, owners::list_checks, owners::get_check, owners::update_check,
        owners::pause_check, owners::resume_check, owners::run_now, owners::list_runs,
        owners::get_run, owners::list_run_results, owners::report,
        isp::list_asns, isp::start_claim, isp::confirm_claim, isp::summary, isp::destinations, isp::series,
        public::leaderboard, ops::flags,
        payments::checkout, payments::webhook, payments::onboarding, payments::list_payouts,
    ),
    components(schemas(
        lastmile_protocol::ApiError, lastmile_protocol::Location, lastmile_protocol::Phase,
        crate::reports::Percentiles, crate::reports::Group, crate::reports::ReportRow,
    )),
    modifiers(&BearerTokens),
    tags(
        (name = "agents", description = "Probe agents: enrolment, heartbeats, leases, results"),
        (name = "owners", description = "Owner accounts"),
        (name = "billing", description = "Balances of owners and volunteers, in integer minor units"),
        (name = "sites", description = "Sites and their ownership verification"),
        (name = "checks", description = "Checks and their runs"),
        (name = "reports", description = "SLA reports"),
        (name = "leaderboard", description = "Volunteers ranked by points, public"),
        (name = "isp", description = "ISPs: SLA views of their own networks, rate limited, with ETags"),
        (name = "ops", description = "Operators (admin token): flagged results"),
    )
)]
pub struct ApiDoc;

struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["owner_token", "agent_token", "isp_token", "admin_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// Mounts every route. `max_body_bytes` caps JSON bodies.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body_bytes)
            .error_handler(error::json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(error::query_error))
    .app_data(web::PathConfig::default().error_handler(error::path_error))
    .service(ops::healthz)
    .service(ops::metrics)
    .service(ops::openapi)
    .service(
        web::scope("/api/v1")
            .service(agents::enrol)
            .service(agents::heartbeat)
            .service(agents::lease)
            .service(agents::submit)
            .service(agents::calibration_ping)
            .service(agents::calibration_download)
            .service(agents::calibration_upload)
            .service(agents::calibration_report)
            .service(owners::balance)
            .service(owners::me)
            .service(owners::create_site)
            .service(owners::list_sites)
            .service(owners::get_site)
            .service(owners::verify_site)
            .service(owners::create_check)
            .service(owners::list_checks)
            .service(owners::get_check)
            .service(owners::update_check)
            .service(owners::pause_check)
            .service(owners::resume_check)
            .service(owners::run_now)
            .service(owners::list_runs)
            .service(owners::get_run)
            .service(owners::list_run_results)
            .service(owners::report)
            .service(isp::list_asns)
            .service(isp::start_claim)
            .service(isp::confirm_claim)
            .service(isp::summary)
            .service(isp::destinations)
            .service(isp::series)
            .service(public::leaderboard)
            .service(ops::flags)
            .service(payments::checkout)
            .service(payments::webhook)
            .service(payments::onboarding)
            .service(payments::list_payouts)
            .wrap(actix_web::middleware::from_fn(nul_text::json_bodies)),
    )
    .default_service(web::to(error::no_route));
}
