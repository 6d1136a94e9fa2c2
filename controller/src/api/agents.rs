//! Agent endpoints: enrol, heartbeat, lease, submit results.

use actix_web::{post, web, HttpResponse};
use lastmile_protocol::{
    ApiError, EnrolRequest, EnrolResponse, Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse,
    ResultAck, ResultDisposition, ResultSubmission,
};

use super::auth::{AuthAgent, Origin};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::server::AppState;
use crate::{agents, clock, ingest, scheduling};

/// Enrol a new agent with a volunteer's enrolment key.
#[utoipa::path(post, path = "/api/v1/agents/enrol", tag = "agents", request_body = EnrolRequest,
    responses((status = 201, body = EnrolResponse), (status = 401, body = ApiError), (status = 422, body = ApiError)))]
#[post("/agents/enrol")]
pub async fn enrol(
    state: web::Data<AppState>,
    origin: Origin,
    body: web::Json<EnrolRequest>,
) -> Result<HttpResponse, Error> {
    let response = state
        .db
        .run(move |c| agents::enrol(c, &body, origin.ip, &origin.location))
        .await?;
    Ok(HttpResponse::Created().json(response))
}

/// Report that the agent is alive; the answer says where the controller places it.
#[utoipa::path(post, path = "/api/v1/agents/heartbeat", tag = "agents", request_body = Heartbeat,
    security(("agent_token" = [])),
    responses((status = 200, body = HeartbeatAck), (status = 401, body = ApiError)))]
#[post("/agents/heartbeat")]
pub async fn heartbeat(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    origin: Origin,
    body: web::Json<Heartbeat>,
) -> Result<web::Json<HeartbeatAck>, Error> {
    let location = origin.location.clone();
    state
        .db
        .run(move |c| agents::heartbeat(c, &agent.id, &body, origin.ip, &origin.location))
        .await?;
    Ok(web::Json(HeartbeatAck {
        server_time: chrono::Utc::now(),
        location,
        heartbeat_interval_s: state.config.heartbeat_interval_s,
    }))
}

/// Lease up to `max` assignments (fewer if the agent's concurrency limit is reached).
#[utoipa::path(post, path = "/api/v1/agents/lease", tag = "agents", request_body = LeaseRequest,
    security(("agent_token" = [])),
    responses((status = 200, body = LeaseResponse), (status = 401, body = ApiError)))]
#[post("/agents/lease")]
pub async fn lease(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<LeaseRequest>,
) -> Result<web::Json<LeaseResponse>, Error> {
    let policy = state.policy;
    let tasks = state
        .db
        .run(move |c| scheduling::lease(c, &agent, body.max, &policy, clock::now_us()))
        .await?;
    for _ in &tasks {
        Metrics::inc(&state.metrics.assignments_leased);
    }
    Ok(web::Json(LeaseResponse { tasks }))
}

/// Submit the result of an assignment. Idempotent by assignment id.
#[utoipa::path(post, path = "/api/v1/results", tag = "agents", request_body = ResultSubmission,
    security(("agent_token" = [])),
    responses((status = 200, body = ResultAck), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 422, body = ApiError)))]
#[post("/results")]
pub async fn submit(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<ResultSubmission>,
) -> Result<web::Json<ResultAck>, Error> {
    let submitted = state
        .db
        .run(move |c| ingest::submit(c, &agent, &body))
        .await?;
    let counter = match (submitted.duplicate, submitted.ack.disposition) {
        (true, _) => &state.metrics.results_duplicate,
        (false, ResultDisposition::Accepted) => &state.metrics.results_accepted,
        (false, ResultDisposition::Late) => &state.metrics.results_late,
    };
    Metrics::inc(counter);
    Ok(web::Json(submitted.ack))
}
