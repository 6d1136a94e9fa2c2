//! Operations endpoints: health, metrics, the OpenAPI document, and the operators'
//! admin views (admin token): flagged results.

use actix_web::{get, web, HttpResponse};
use diesel::prelude::*;
use utoipa::OpenApi;

use crate::metrics::Gauges;
use crate::state::AppState;
use lastmile_domain::clock;
use lastmile_domain::error::Error;
use lastmile_domain::scheduling::state as assignment_state;
use lastmile_domain::verification::{self, FlagList};
use lastmile_storage::schema::{agents, open_assignments};

use super::auth::AuthAdmin;
use crate::api::error::Failure;

/// Which flagged results to list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FlagParams {
    /// Only this agent's results.
    pub agent: Option<uuid::Uuid>,
    /// How many results, newest first (1 to 1000, default 100).
    pub limit: Option<i64>,
}

/// Results flagged by verification (kept, not counted, not paid), with their reasons
/// and evidence, and how many each agent has.
#[utoipa::path(get, path = "/api/v1/ops/flags", tag = "ops", params(FlagParams),
    security(("admin_token" = [])),
    responses((status = 200, body = FlagList), (status = 401, body = lastmile_protocol::ApiError),
        (status = 422, body = lastmile_protocol::ApiError)))]
#[get("/ops/flags")]
pub async fn flags(
    state: web::Data<AppState>,
    _admin: AuthAdmin,
    query: web::Query<FlagParams>,
) -> Result<web::Json<FlagList>, Failure> {
    let FlagParams { agent, limit } = query.into_inner();
    let list = state
        .db
        .run(move |c| {
            verification::list(
                c,
                agent.map(|a| a.to_string()).as_deref(),
                limit.unwrap_or(100),
            )
        })
        .await?;
    Ok(web::Json(list))
}

/// Liveness and database reachability: `{"status": "ok", "database": "sqlite"}` (or
/// `"postgres"`).
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, content_type = "application/json", description = "the controller and its database answer"),
        (status = 503, body = lastmile_protocol::ApiError, description = "the database does not answer")))]
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, Failure> {
    let backend = state.db.backend().name();
    state
        .db
        .run(|c| {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                .execute(c)
                .map_err(Error::from)
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok", "database": backend})))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain; version=0.0.4", description = "Prometheus text format"),
        (status = 503, body = lastmile_protocol::ApiError, description = "the database does not answer")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, Failure> {
    let since = clock::now_us() - state.policy.online_window_us;
    let gauges = state
        .db
        .run(move |c| {
            let count_state = |c: &mut lastmile_storage::DbConn, s: &'static str| {
                open_assignments::table
                    .filter(lastmile_storage::assignments::in_state(s))
                    .count()
                    .get_result::<i64>(c)
            };
            Ok::<_, Error>(Gauges {
                agents_online: agents::table
                    .filter(agents::last_heartbeat_at.ge(since))
                    .count()
                    .get_result(c)?,
                assignments_pending: count_state(c, assignment_state::PENDING)?,
                assignments_leased: count_state(c, assignment_state::LEASED)?,
            })
        })
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&gauges)))
}

/// The OpenAPI document, generated from the handlers and types.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops",
    responses((status = 200, content_type = "application/json", description = "this document")))]
#[get("/api/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(super::ApiDoc::openapi())
}
