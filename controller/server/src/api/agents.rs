//! Agent endpoints: enrol, heartbeat, lease, submit results.

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use lastmile_protocol::calibration::{CalibrationAck, CalibrationReport, MAX_PAYLOAD_BYTES};
use lastmile_protocol::trace::{TraceAck, TraceReport};
use lastmile_protocol::{
    ApiError, EnrolRequest, EnrolResponse, Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse,
    ResultAck, ResultBatch, ResultBatchAck, ResultSubmission,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::agent_calls;
use super::auth::{AuthAgent, AuthVolunteer, Origin};
use crate::agent_work;
use crate::api::error::Failure;
use crate::calibration_timing;
use crate::state::AppState;
use lastmile_domain::error::Error;
use lastmile_domain::{agents, calibration};
use uuid::Uuid;

/// Enrol a new agent with a volunteer's enrolment key.
#[utoipa::path(post, path = "/api/v1/agents/enrol", tag = "agents", request_body = EnrolRequest,
    responses((status = 201, body = EnrolResponse), (status = 401, body = ApiError), (status = 422, body = ApiError)))]
#[post("/agents/enrol")]
pub async fn enrol(
    state: web::Data<AppState>,
    origin: Origin,
    body: web::Json<EnrolRequest>,
) -> Result<HttpResponse, Failure> {
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
) -> Result<web::Json<HeartbeatAck>, Failure> {
    let ack = agent_calls::heartbeat(&state, &agent, body.into_inner(), origin).await?;
    Ok(web::Json(ack))
}

/// Lease up to `max` assignments (fewer if the agent's concurrency limit is reached).
/// With `wait_s`, and no work now, the answer waits up to that long (capped by the
/// controller) for work planned for this agent.
#[utoipa::path(post, path = "/api/v1/agents/lease", tag = "agents", request_body = LeaseRequest,
    security(("agent_token" = [])),
    responses((status = 200, body = LeaseResponse), (status = 401, body = ApiError)))]
#[post("/agents/lease")]
pub async fn lease(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<LeaseRequest>,
) -> Result<web::Json<LeaseResponse>, Failure> {
    Ok(web::Json(
        agent_calls::lease(&state, agent, body.into_inner()).await?,
    ))
}

/// Report a path trace the agent was handed in a lease (`traces`). Idempotent by trace
/// id: the same report again is acknowledged and changes nothing.
#[utoipa::path(post, path = "/api/v1/agents/traces", tag = "agents", request_body = TraceReport,
    security(("agent_token" = [])),
    responses((status = 200, body = TraceAck), (status = 401, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError)))]
#[post("/agents/traces")]
pub async fn report_trace(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<TraceReport>,
) -> Result<web::Json<TraceAck>, Failure> {
    Ok(web::Json(
        agent_calls::report_trace(&state, &agent, body.into_inner()).await?,
    ))
}

/// Submit the result of an assignment. Idempotent by assignment id. When the answer
/// arrives the result is stored and (normally) already in the check's report.
#[utoipa::path(post, path = "/api/v1/results", tag = "agents", request_body = ResultSubmission,
    security(("agent_token" = [])),
    responses((status = 200, body = ResultAck), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 422, body = ApiError)))]
#[post("/results")]
pub async fn submit(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<ResultSubmission>,
) -> Result<web::Json<ResultAck>, Failure> {
    Ok(web::Json(
        agent_calls::submit(&state, &agent.id, body.into_inner()).await?,
    ))
}

/// Submit several results at once (up to 100), e.g. a spool after an outage: one
/// answer per result, in order, each either its acknowledgement or why it was refused
/// (the status and error a single submission would have got). Idempotent by
/// assignment id, like single submissions.
#[utoipa::path(post, path = "/api/v1/results/batch", tag = "agents", request_body = ResultBatch,
    security(("agent_token" = [])),
    responses((status = 200, body = ResultBatchAck), (status = 422, body = ApiError)))]
#[post("/results/batch")]
pub async fn submit_batch(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<ResultBatch>,
) -> Result<web::Json<ResultBatchAck>, Failure> {
    Ok(web::Json(
        agent_calls::submit_batch(&state, &agent.id, body.into_inner()).await?,
    ))
}

/// Revoke one of your agents (a lost or retired machine): its token stops working on
/// every controller within seconds (the controllers' refresh of agents). Send your
/// enrolment key or one of your agents' tokens. Revoking again changes nothing.
#[utoipa::path(post, path = "/api/v1/volunteer/agents/{id}/revoke", tag = "agents",
    params(("id" = Uuid, Path, description = "The agent's id")),
    security(("agent_token" = [])),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
#[post("/volunteer/agents/{id}/revoke")]
pub async fn revoke(
    state: web::Data<AppState>,
    AuthVolunteer(volunteer): AuthVolunteer,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    agent_work::revoke(&state, volunteer, id.into_inner().to_string()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Calibration: a tiny round trip for timing.
#[utoipa::path(get, path = "/api/v1/agents/calibration/ping", tag = "agents", security(("agent_token" = [])),
    responses((status = 204), (status = 401, body = ApiError)))]
#[get("/agents/calibration/ping")]
pub async fn calibration_ping(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    request: HttpRequest,
) -> HttpResponse {
    let peer = request.peer_addr();
    state
        .calibrations
        .arrived(&agent.id, peer, calibration_echo(&request));
    let nonce = state.calibrations.ping_sent(&agent.id, peer);
    HttpResponse::NoContent()
        .insert_header((calibration_timing::NONCE_HEADER, nonce))
        .finish()
}

/// The nonce an agent echoes from the previous calibration answer, if it sent one.
fn calibration_echo(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(calibration_timing::ECHO_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// How many bytes a calibration download asks for.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    /// Payload size, 1 byte to 8 MiB.
    pub bytes: u64,
}

/// Calibration: a payload of the asked size, to time the downstream rate. Counts
/// against the agent's daily calibration cap (429 when spent).
#[utoipa::path(get, path = "/api/v1/agents/calibration/download", tag = "agents", params(DownloadParams),
    security(("agent_token" = [])),
    responses((status = 200, content_type = "application/octet-stream"), (status = 422, body = ApiError),
        (status = 429, body = ApiError)))]
#[get("/agents/calibration/download")]
pub async fn calibration_download(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    params: web::Query<DownloadParams>,
    request: HttpRequest,
) -> Result<HttpResponse, Failure> {
    let peer = request.peer_addr();
    state
        .calibrations
        .arrived(&agent.id, peer, calibration_echo(&request));
    let bytes = params.bytes;
    if bytes == 0 || bytes > MAX_PAYLOAD_BYTES {
        return Err(Failure(Error::invalid(
            "invalid_payload_size",
            format!("bytes must be between 1 and {MAX_PAYLOAD_BYTES}"),
        )));
    }
    let cap = state.config.calibration_bytes_per_day;
    let agent_id = agent.id.clone();
    state
        .db
        .run(move |c| calibration::reserve_bytes(c, &agent_id, bytes, cap))
        .await?;
    // The payload ends with the nonce the agent's next request echoes: only an agent
    // that has received the whole body can send it (see `calibration_timing`).
    let mut payload = vec![0u8; bytes as usize];
    let nonce = state.calibrations.download_sent(&agent.id, peer, bytes);
    if payload.len() >= nonce.len() {
        let start = payload.len() - nonce.len();
        payload[start..].copy_from_slice(nonce.as_bytes());
    }
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(payload))
}

/// What the controller received of an upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadReceipt {
    pub received_bytes: u64,
}

/// Calibration: accepts a payload, to time the upstream rate. Counts against the
/// daily calibration cap.
#[utoipa::path(post, path = "/api/v1/agents/calibration/upload", tag = "agents",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"), security(("agent_token" = [])),
    responses((status = 200, body = UploadReceipt),
        (status = 422, body = ApiError, description = "no Content-Length, or more than 8 MiB declared"),
        (status = 429, body = ApiError)))]
#[post("/agents/calibration/upload")]
pub async fn calibration_upload(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    request: HttpRequest,
    mut body: web::Payload,
) -> Result<web::Json<UploadReceipt>, Failure> {
    state
        .calibrations
        .arrived(&agent.id, request.peer_addr(), calibration_echo(&request));
    // The allowance is charged before a byte is read, so a spent allowance costs the
    // volunteer nothing more; that needs the size up front.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::invalid(
                "content_length_required",
                "a calibration upload must carry Content-Length",
            )
        })?;
    if declared > MAX_PAYLOAD_BYTES {
        return Err(Failure(Error::invalid(
            "invalid_payload_size",
            format!("uploads are at most {MAX_PAYLOAD_BYTES} bytes, this one declares {declared}"),
        )));
    }
    let cap = state.config.calibration_bytes_per_day;
    let agent_id = agent.id.clone();
    state
        .db
        .run(move |c| calibration::reserve_bytes(c, &agent_id, declared, cap))
        .await?;
    // Only the size and the timing matter: count the bytes as they stream in, keep
    // none, and time them from the first chunk to the last on our own clock.
    let mut received = 0u64;
    let mut first: Option<(std::time::Instant, u64)> = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Failure(Error::invalid(
                "invalid_body",
                format!("upload broke off: {e}"),
            ))
        })?;
        received += chunk.len() as u64;
        first.get_or_insert((std::time::Instant::now(), received));
    }
    if let Some((at, first_bytes)) = first {
        state
            .calibrations
            .uploaded(&agent.id, received - first_bytes, at.elapsed());
    }
    Ok(web::Json(UploadReceipt {
        received_bytes: received,
    }))
}

/// Calibration: say it is done; the answer is the class the controller will use, from
/// the figures the controller timed itself (the report's own figures are only logged).
/// 422 `calibration_incomplete` when the controller timed too little of it.
#[utoipa::path(post, path = "/api/v1/agents/calibration", tag = "agents", request_body = CalibrationReport,
    security(("agent_token" = [])),
    responses((status = 200, body = CalibrationAck), (status = 422, body = ApiError)))]
#[post("/agents/calibration")]
pub async fn calibration_report(
    state: web::Data<AppState>,
    AuthAgent(agent): AuthAgent,
    body: web::Json<CalibrationReport>,
) -> Result<web::Json<CalibrationAck>, Failure> {
    let timed = state.calibrations.finish(&agent.id).map_err(|i| {
        Error::invalid(
            "calibration_incomplete",
            format!(
                "the controller timed {} ping(s), {} download(s) and {} upload(s) of this \
                 calibration; it needs at least {} pings and one of each transfer over one \
                 connection, each request echoing the previous answer's nonce",
                i.pings,
                i.downloads,
                i.uploads,
                calibration_timing::MIN_PINGS
            ),
        )
    })?;
    tracing::info!(agent = %agent.id, reported_rtt_us = body.rtt_us, reported_down_bps = body.down_bps,
        reported_up_bps = body.up_bps, rtt_us = timed.rtt_us, down_bps = timed.down_bps,
        up_bps = timed.up_bps, "calibration timed");
    let measured = CalibrationReport {
        rtt_us: timed.rtt_us,
        down_bps: timed.down_bps,
        up_bps: timed.up_bps,
        bytes_used: body.bytes_used,
    };
    let (ack, row) = state
        .db
        .run(move |c| {
            let ack = calibration::record(c, &agent, &measured)?;
            Ok::<_, Error>((ack, agents::get(c, &agent.id)?))
        })
        .await?;
    // This replica serves the agent's next requests with its new class at once (others
    // read it with their next refresh).
    state.presence.hold(row);
    Ok(web::Json(ack))
}
