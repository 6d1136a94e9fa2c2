//! The HTTP API: routes, the OpenAPI document, and extractor configuration.
//!
//! **Architecture Invariant:** handlers are thin. Each one extracts its inputs,
//! authenticates, calls one domain function through `Db::run` (so diesel never blocks
//! an actix worker), and answers. Handlers hold no SQL and no business rules.

pub mod agent_calls;
pub mod agents;
pub mod alerts;
pub mod auth;
pub mod error;
pub mod events;
pub mod isp;
pub mod ops;
pub mod owners;
pub mod payments;
pub mod public;

use actix_web::web;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ArrayItems, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// The generated OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Lastmile controller API", description = "Agents enrol, lease and report; owners schedule checks and read SLA reports."),
    paths(
        ops::healthz, ops::metrics, ops::openapi,
        agents::enrol, agents::heartbeat, agents::lease, agents::report_trace, agents::submit, agents::submit_batch, agents::revoke,
        agents::calibration_ping, agents::calibration_download, agents::calibration_upload,
        agents::calibration_report,
        owners::me, owners::balance, owners::create_site, owners::list_sites, owners::get_site, owners::verify_site,
        owners::create_check, owners::list_checks, owners::get_check, owners::update_check,
        owners::patch_check, owners::delete_check, owners::delete_site, events::check_events,
        owners::pause_check, owners::resume_check, owners::run_now, owners::list_runs,
        owners::get_run, owners::list_run_results, owners::report,
        isp::list_asns, isp::start_claim, isp::confirm_claim, isp::summary, isp::destinations, isp::series,
        public::leaderboard, ops::flags,
        payments::checkout, payments::webhook, payments::onboarding, payments::list_payouts,
        alerts::create_channel, alerts::list_channels, alerts::delete_channel, alerts::list_deliveries,
        alerts::create_rule, alerts::list_rules, alerts::delete_rule, alerts::list_incidents, alerts::get_incident,
    ),
    components(schemas(
        lastmile_protocol::ApiError, lastmile_protocol::Location, lastmile_protocol::Phase,
        lastmile_protocol::Figure, lastmile_protocol::Unit,
        lastmile_domain::reports::Percentiles, lastmile_domain::reports::Group, lastmile_domain::reports::ReportRow,
        lastmile_domain::reports::FigurePercentiles, lastmile_domain::reports::FigurePercentile,
    )),
    modifiers(&BearerTokens, &StandardErrors, &Bounds),
    tags(
        (name = "agents", description = "Probe agents: enrolment, heartbeats, leases, results"),
        (name = "owners", description = "Owner accounts"),
        (name = "billing", description = "Balances of owners and volunteers, in integer minor units"),
        (name = "sites", description = "Sites and their ownership verification"),
        (name = "checks", description = "Checks and their runs"),
        (name = "reports", description = "SLA reports"),
        (name = "alerts", description = "Alert channels, rules on checks, incidents"),
        (name = "leaderboard", description = "Volunteers ranked by points, public"),
        (name = "isp", description = "ISPs: SLA views of their own networks, rate limited, with ETags"),
        (name = "ops", description = "Health, metrics, this document; operators (admin token): flagged results"),
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

/// The error answers every operation of a kind can give, added to each operation
/// from what its own description says (security, request body, parameters), so a new
/// handler cannot forget them: the extractors in `auth` answer 401 to any
/// authenticated operation, `error::json_error` 400/413/415/422 to any JSON body,
/// `error::path_error` 404 to an unparsable path segment, `error::query_error` 400 to
/// a bad query string. A response an attribute already declares is kept as written.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in standard_errors(operation) {
                    add_error(operation, status, description);
                }
            }
        }
    }
}

/// Which standard errors `operation` can answer, by what it declares.
fn standard_errors(operation: &Operation) -> Vec<(&'static str, &'static str)> {
    let mut errors = Vec::new();
    let authenticated = operation
        .security
        .as_ref()
        .is_some_and(|s| s.iter().any(|r| *r != SecurityRequirement::default()));
    if authenticated {
        errors.push((
            "401",
            "no bearer token, or one that is unknown, revoked or of another kind",
        ));
    }
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    if json_body {
        errors.extend([
            ("400", "the body is not valid JSON"),
            ("413", "the body is over the size limit"),
            ("415", "the body is not sent as application/json"),
            (
                "422",
                "the JSON does not have the expected shape, or a value breaks a rule",
            ),
        ]);
    }
    let params = operation.parameters.as_deref().unwrap_or_default();
    if params.iter().any(|p| p.parameter_in == ParameterIn::Path) {
        errors.push(("404", "nothing by that id (or the id is malformed)"));
    }
    if params.iter().any(|p| p.parameter_in == ParameterIn::Query) {
        errors.push(("400", "the query string does not parse"));
    }
    errors
}

/// Adds an `ApiError` answer for `status` unless the operation already has one.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ApiError"))),
                    )
                    .build(),
            )
        });
}

/// A rule the server enforces on a value, as JSON Schema says it.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// `minimum`..=`maximum` (either may be absent).
    Range(Option<i64>, Option<i64>),
    /// `minLength`..=`maxLength`, in characters.
    Length(usize, usize),
    /// A regular expression the text must match somewhere (JSON Schema `pattern`).
    Pattern(&'static str),
}

/// The bounds of request fields whose types live outside the API module (where
/// `#[schema(...)]` could only repeat numbers as literals): (schema, property, bound),
/// `property[]` meaning the property's array items. Taken from the constants the
/// validation code uses, so the document and the server cannot disagree; the
/// OpenAPI test checks that every entry lands in the served document.
pub const SCHEMA_BOUNDS: &[(&str, &str, Bound)] = &[
    (
        "NewCheckout",
        "amount_minor",
        Bound::Range(
            Some(lastmile_domain::payments::MIN_PURCHASE_MINOR),
            Some(lastmile_domain::payments::MAX_PURCHASE_MINOR),
        ),
    ),
    ("NewCheck", "name", Bound::Length(1, 200)),
    ("NewCheck", "name", Bound::Pattern(r"\S")),
    (
        "NewCheck",
        "expected_status[]",
        Bound::Range(Some(100), Some(599)),
    ),
    (
        "NewCheck",
        "max_bytes",
        Bound::Range(Some(1), Some(100 * 1024 * 1024)),
    ),
    (
        "NewCheck",
        "timeout_ms",
        Bound::Range(Some(1), Some(120_000)),
    ),
    (
        "NewCheck",
        "max_redirects",
        Bound::Range(Some(0), Some(lastmile_domain::checks::MAX_REDIRECTS as i64)),
    ),
    ("NewCheck", "body_contains", Bound::Length(1, 1024)),
    (
        "Selection",
        "agents_per_run",
        Bound::Range(Some(1), Some(1000)),
    ),
    (
        "Selection",
        "countries[]",
        Bound::Pattern(r"^\s*[A-Za-z]{2}\s*$"),
    ),
    ("Selection", "asns[]", Bound::Range(Some(1), None)),
    (
        "Schedule",
        "every_seconds",
        Bound::Range(Some(1), Some(31 * 24 * 3600)),
    ),
    ("NewClaim", "asn", Bound::Range(Some(1), None)),
    (
        "AgentLimits",
        "max_concurrent",
        Bound::Range(Some(1), Some(64)),
    ),
    ("Measurement", "status", Bound::Range(Some(100), Some(599))),
];

/// Writes [`SCHEMA_BOUNDS`] into the component schemas.
struct Bounds;

impl Modify for Bounds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (schema, property, bound) in SCHEMA_BOUNDS {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*schema) else {
                continue;
            };
            let (name, items) = match property.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (*property, false),
            };
            let Some(RefOr::T(field)) = object.properties.get_mut(name) else {
                continue;
            };
            let field = match (items, field) {
                (false, Schema::Object(field)) => field,
                (true, Schema::Array(array)) => match &mut array.items {
                    ArrayItems::RefOrSchema(inner) => match inner.as_mut() {
                        RefOr::T(Schema::Object(field)) => field,
                        _ => continue,
                    },
                    _ => continue,
                },
                _ => continue,
            };
            match *bound {
                Bound::Range(min, max) => {
                    if let Some(min) = min {
                        field.minimum = Some(utoipa::Number::Int(min as isize));
                    }
                    if let Some(max) = max {
                        field.maximum = Some(utoipa::Number::Int(max as isize));
                    }
                }
                Bound::Length(min, max) => {
                    field.min_length = Some(min);
                    field.max_length = Some(max);
                }
                Bound::Pattern(p) => field.pattern = Some(p.to_owned()),
            }
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
            .service(agents::report_trace)
            .service(agents::submit)
            .service(agents::submit_batch)
            .service(agents::revoke)
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
            .service(owners::patch_check)
            .service(owners::delete_check)
            .service(owners::delete_site)
            .service(events::check_events)
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
            .service(alerts::create_channel)
            .service(alerts::list_channels)
            .service(alerts::delete_channel)
            .service(alerts::list_deliveries)
            .service(alerts::create_rule)
            .service(alerts::list_rules)
            .service(alerts::delete_rule)
            .service(alerts::list_incidents)
            .service(alerts::get_incident)
            .wrap(actix_web::middleware::from_fn(crate::nul_text::json_bodies)),
    )
    .default_service(web::to(error::no_route));
}
