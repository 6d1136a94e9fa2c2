//! One line per HTTP request, and the 4xx/5xx counters, in one middleware.
//!
//! Agents poll: at the agent's cadence a network of 100k agents makes ~23k requests a
//! second, nearly all of them an idle lease or a heartbeat that changed nothing. Those
//! are logged at `debug` (`RUST_LOG=lastmile::http=debug` shows them); everything else,
//! and any agent request that failed, at `info`, so an operator's log shows what people
//! did and what went wrong rather than the network breathing.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::metrics::Metrics;
use crate::state::AppState;

/// The paths agents poll at their cadence (see the module doc).
fn is_agent_poll(path: &str) -> bool {
    matches!(path, "/api/v1/agents/heartbeat" | "/api/v1/agents/lease")
}

/// Logs the request when the response is ready and counts client and server errors.
pub async fn log_and_count(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<actix_web::web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let method = req.method().clone();
    let path = req.path().to_owned();
    let peer = req.peer_addr();
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    record(
        metrics.as_deref(),
        method.as_str(),
        &path,
        peer,
        status.as_u16(),
        started,
    );
    res
}

/// Counts an answered request's refusal (4xx, 5xx) and logs it: agents' polls that
/// succeeded at `debug`, everything else at `info`. The agent listener records its
/// requests here too.
pub fn record(
    metrics: Option<&Metrics>,
    method: &str,
    path: &str,
    peer: Option<std::net::SocketAddr>,
    status: u16,
    started: Instant,
) {
    if let Some(metrics) = metrics {
        match status {
            400..=499 => Metrics::inc(&metrics.http_errors_4xx),
            500..=599 => Metrics::inc(&metrics.http_errors_5xx),
            _ => {}
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let peer = peer.map(|p| p.ip());
    if is_agent_poll(path) && (200..300).contains(&status) {
        tracing::debug!(target: "lastmile::http", peer = ?peer, %method, %path, status, ms);
    } else {
        tracing::info!(target: "lastmile::http", peer = ?peer, %method, %path, status, ms);
    }
}
