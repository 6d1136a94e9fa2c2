//! The agent protocol's hot calls — heartbeat, lease, path trace, results — whichever
//! listener they arrive on: the API's actix handlers (`api::agents`) and the agent
//! listener (`agent_listener`) both answer through these, so the two cannot drift.

use std::sync::Arc;
use std::time::Duration;

use actix_web::ResponseError;
use lastmile_domain::agents::Agent;
use lastmile_domain::error::Error;
use lastmile_domain::{ingest, path_traces};
use lastmile_protocol::trace::{TraceAck, TraceReport};
use lastmile_protocol::{
    Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse, ResultAck, ResultBatch, ResultBatchAck,
    ResultDisposition, ResultOutcome, ResultSubmission,
};

use crate::agent_work;
use crate::api::auth::Origin;
use crate::api::error::Failure;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Records a heartbeat; the answer says where the controller places the agent and, when
/// this controller has an agent listener, where to send the hot calls from now on.
pub async fn heartbeat(
    state: &AppState,
    agent: &Agent,
    beat: Heartbeat,
    origin: Origin,
) -> Result<HeartbeatAck, Error> {
    let location = origin.location.clone();
    agent_work::heartbeat(state, agent, beat, origin.ip, origin.location).await?;
    Ok(HeartbeatAck {
        server_time: chrono::Utc::now(),
        location,
        heartbeat_interval_s: state.config.heartbeat_interval_s,
        agent_url: state.agent_url(),
    })
}

/// Leases up to `max` tasks; with `wait_s` and no work now, waits for some (capped by
/// `max_lease_wait_s`).
pub async fn lease(
    state: &AppState,
    agent: Arc<Agent>,
    request: LeaseRequest,
) -> Result<LeaseResponse, Error> {
    let wait = request
        .wait_s
        .unwrap_or(0)
        .min(state.config.max_lease_wait_s);
    let leased =
        agent_work::lease(state, agent, request.max, Duration::from_secs(wait.into())).await?;
    for _ in &leased.tasks {
        Metrics::inc(&state.metrics.assignments_leased);
    }
    Ok(LeaseResponse {
        tasks: leased.tasks,
        traces: leased.traces,
    })
}

/// Records a path trace the agent was handed; the same report again changes nothing.
pub async fn report_trace(
    state: &AppState,
    agent: &Agent,
    report: TraceReport,
) -> Result<TraceAck, Error> {
    let trace_id = report.trace_id;
    let agent_id = agent.id.clone();
    state
        .db
        .run(move |c| path_traces::record(c, &agent_id, &report, lastmile_domain::clock::now_us()))
        .await?;
    Ok(TraceAck { trace_id })
}

/// Accepts one result (idempotent by assignment id).
pub async fn submit(
    state: &AppState,
    agent_id: &str,
    result: ResultSubmission,
) -> Result<ResultAck, Error> {
    let mut outcomes = accept(state, agent_id, vec![result]).await?;
    let submitted = outcomes
        .pop()
        .unwrap_or_else(|| Err(Error::Internal("no outcome".into())))?;
    Ok(submitted.ack)
}

/// Accepts up to 100 results: one outcome per result, in order, each its acknowledgement
/// or the status and error a single submission would have got.
pub async fn submit_batch(
    state: &AppState,
    agent_id: &str,
    batch: ResultBatch,
) -> Result<ResultBatchAck, Error> {
    let batch = batch.results;
    if batch.is_empty() {
        return Err(Error::invalid(
            "no_results",
            "results is empty: send 1 to 100 results",
        ));
    }
    let ids: Vec<_> = batch.iter().map(|r| r.assignment_id).collect();
    let outcomes = accept(state, agent_id, batch).await?;
    let results = ids
        .into_iter()
        .zip(outcomes)
        .map(|(assignment_id, outcome)| match outcome {
            Ok(submitted) => ResultOutcome {
                assignment_id,
                disposition: Some(submitted.ack.disposition),
                status: None,
                error: None,
            },
            Err(e) => {
                let refused = Failure(e);
                ResultOutcome {
                    assignment_id,
                    disposition: None,
                    status: Some(refused.status_code().as_u16()),
                    error: Some(refused.body()),
                }
            }
        })
        .collect();
    Ok(ResultBatchAck { results })
}

/// Accepts results for the agent (in a transaction shared with other agents' requests,
/// see `accepting`), counts them, and waits until they are folded into their
/// aggregates (group commit, see `folding`).
async fn accept(
    state: &AppState,
    agent_id: &str,
    batch: Vec<ResultSubmission>,
) -> Result<Vec<Result<ingest::Submitted, Error>>, Error> {
    let outcomes = state
        .acceptor
        .accept(
            &state.db,
            &state.metrics,
            &state.folder.handoff,
            agent_id.to_owned(),
            batch,
        )
        .await?;
    let mut queued = false;
    for submitted in outcomes.iter().flatten() {
        queued |= submitted.queued;
        let counter = match (submitted.duplicate, submitted.ack.disposition) {
            (true, _) => &state.metrics.results_duplicate,
            (false, _) if submitted.flagged => &state.metrics.results_flagged,
            (false, ResultDisposition::Accepted) => &state.metrics.results_accepted,
            (false, ResultDisposition::Late) => &state.metrics.results_late,
        };
        Metrics::inc(counter);
    }
    if queued {
        let ticket = state.folder.ticket();
        state.folder.settle(&state.db, &state.metrics, ticket).await;
    }
    Ok(outcomes)
}
