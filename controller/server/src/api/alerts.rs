//! Owner endpoints for alerts: channels (where alerts go) and their delivery logs,
//! rules on checks, and the checks' incidents.

use actix_web::{delete, get, post, web, HttpResponse};
use lastmile_protocol::ApiError;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::AuthOwner;
use crate::api::error::Failure;
use crate::state::AppState;
use lastmile_domain::alert_delivery::{self, DeliveryView};
use lastmile_domain::alerts::{self, ChannelView, NewChannel, NewRule, RuleView};
use lastmile_domain::incidents::{self, IncidentView};

/// Add an alert channel: a webhook (its answer holds the signing secret, shown this
/// once), a Slack-compatible incoming webhook, or an email address.
#[utoipa::path(post, path = "/api/v1/alert-channels", tag = "alerts", request_body = NewChannel, security(("owner_token" = [])),
    responses((status = 201, body = ChannelView), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
#[post("/alert-channels")]
pub async fn create_channel(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    body: web::Json<NewChannel>,
) -> Result<HttpResponse, Failure> {
    let can_email = state.mailer.delivers();
    let channel = state
        .db
        .run(move |c| alerts::create_channel(c, &owner.id, &body, can_email))
        .await?;
    Ok(HttpResponse::Created().json(channel))
}

/// Your alert channels (secrets are not shown again).
#[utoipa::path(get, path = "/api/v1/alert-channels", tag = "alerts", security(("owner_token" = [])),
    responses((status = 200, body = [ChannelView])))]
#[get("/alert-channels")]
pub async fn list_channels(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
) -> Result<web::Json<Vec<ChannelView>>, Failure> {
    let channels = state
        .db
        .run(move |c| alerts::list_channels(c, &owner.id))
        .await?;
    Ok(web::Json(channels.iter().map(|c| c.view()).collect()))
}

/// Delete an alert channel: rules stop sending to it; its delivery log stays.
#[utoipa::path(delete, path = "/api/v1/alert-channels/{id}", tag = "alerts", params(("id" = Uuid, Path, description = "The channel's id")), security(("owner_token" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ApiError)))]
#[delete("/alert-channels/{id}")]
pub async fn delete_channel(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    state
        .db
        .run(move |c| alerts::delete_channel(c, &owner.id, &id.to_string()))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A channel's delivery log, newest first: each alert sent to it, its attempts, and
/// why the last one failed.
#[utoipa::path(get, path = "/api/v1/alert-channels/{id}/deliveries", tag = "alerts", params(("id" = Uuid, Path, description = "The channel's id")), security(("owner_token" = [])),
    responses((status = 200, body = [DeliveryView]), (status = 404, body = ApiError)))]
#[get("/alert-channels/{id}/deliveries")]
pub async fn list_deliveries(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<Vec<DeliveryView>>, Failure> {
    let log = state
        .db
        .run(move |c| alert_delivery::log(c, &owner.id, &id.to_string()))
        .await?;
    Ok(web::Json(log))
}

/// Add an alert rule to one of your checks.
#[utoipa::path(post, path = "/api/v1/checks/{id}/alert-rules", tag = "alerts", params(("id" = Uuid, Path, description = "The check's id")), request_body = NewRule, security(("owner_token" = [])),
    responses((status = 201, body = RuleView), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
#[post("/checks/{id}/alert-rules")]
pub async fn create_rule(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    body: web::Json<NewRule>,
) -> Result<HttpResponse, Failure> {
    let rule = state
        .db
        .run(move |c| alerts::create_rule(c, &owner.id, &id.to_string(), &body))
        .await?;
    Ok(HttpResponse::Created().json(rule))
}

/// The alert rules of one of your checks.
#[utoipa::path(get, path = "/api/v1/checks/{id}/alert-rules", tag = "alerts", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 200, body = [RuleView]), (status = 404, body = ApiError)))]
#[get("/checks/{id}/alert-rules")]
pub async fn list_rules(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<Vec<RuleView>>, Failure> {
    let rules = state
        .db
        .run(move |c| alerts::list_rules(c, &owner.id, &id.to_string()))
        .await?;
    Ok(web::Json(rules))
}

/// Delete an alert rule; its open incident is resolved by the next alert pass.
#[utoipa::path(delete, path = "/api/v1/checks/{id}/alert-rules/{rule_id}", tag = "alerts",
    params(("id" = Uuid, Path, description = "The check's id"), ("rule_id" = Uuid, Path, description = "The rule's id")),
    security(("owner_token" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ApiError)))]
#[delete("/checks/{id}/alert-rules/{rule_id}")]
pub async fn delete_rule(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, Failure> {
    let (check, rule) = path.into_inner();
    state
        .db
        .run(move |c| alerts::delete_rule(c, &owner.id, &check.to_string(), &rule.to_string()))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Which incidents to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// `open` for open incidents only.
    #[serde(default)]
    pub state: Option<String>,
}

/// The incidents of one of your checks, newest first (at most 100).
#[utoipa::path(get, path = "/api/v1/checks/{id}/incidents", tag = "alerts", params(("id" = Uuid, Path, description = "The check's id"), IncidentQuery), security(("owner_token" = [])),
    responses((status = 200, body = [IncidentView]), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
#[get("/checks/{id}/incidents")]
pub async fn list_incidents(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    query: web::Query<IncidentQuery>,
) -> Result<web::Json<Vec<IncidentView>>, Failure> {
    let open_only = match query.state.as_deref() {
        None | Some("all") => false,
        Some("open") => true,
        Some(other) => {
            return Err(lastmile_domain::error::Error::invalid(
                "invalid_state",
                format!("state must be open or all, not {other:?}"),
            )
            .into())
        }
    };
    let list = state
        .db
        .run(move |c| incidents::list(c, &owner.id, &id.to_string(), open_only))
        .await?;
    Ok(web::Json(list))
}

/// One incident of one of your checks.
#[utoipa::path(get, path = "/api/v1/checks/{id}/incidents/{incident_id}", tag = "alerts",
    params(("id" = Uuid, Path, description = "The check's id"), ("incident_id" = Uuid, Path, description = "The incident's id")),
    security(("owner_token" = [])),
    responses((status = 200, body = IncidentView), (status = 404, body = ApiError)))]
#[get("/checks/{id}/incidents/{incident_id}")]
pub async fn get_incident(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<web::Json<IncidentView>, Failure> {
    let (check, incident) = path.into_inner();
    let found = state
        .db
        .run(move |c| incidents::get(c, &owner.id, &check.to_string(), &incident.to_string()))
        .await?;
    Ok(web::Json(found))
}
