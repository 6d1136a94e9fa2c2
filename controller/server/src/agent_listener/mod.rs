//! The agent listener: the agent protocol's hot calls (heartbeat, lease, path traces,
//! results) on an address of their own (`agent_listen`), served by [`http1`], whose
//! idle keep-alive connection costs well under a kilobyte where actix-web's costs ten.
//!
//! Why a second listener: an agent holds its connection for the whole time it runs,
//! so at 100k agents the controller's memory is mostly idle connections. The
//! controller's address (actix-web) still answers every call, these included: agents
//! from before this listener, and agents that cannot reach it, use it as they always
//! did. The heartbeat's answer names this listener (`agent_url`), and agents that know
//! the field send their hot calls here. Everything else (enrolment, calibration, the
//! API, the dashboard) is only on the controller's address; asked here, it is a 404
//! that says so.
//!
//! The calls answer through `api::agent_calls`, as the actix handlers do, and refusals have
//! the API's shape and statuses (`api::error`), so an agent cannot tell the two apart
//! but by their memory.

pub mod http1;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::ResponseError;
use lastmile_domain::error::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::api::agent_calls;
use crate::api::auth::{agent_by_token, bearer_token, origin};
use crate::api::error::Failure;
use crate::metrics::Metrics;
use crate::state::AppState;
use http1::{Limits, Request, Response};

/// Longest a request's head may be, bytes (an agent's is about 300).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A request's head must arrive within this of its first byte.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A request's body must arrive within this of its head: 256 KiB at 56 kbit/s.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// An answer must be written within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopping listener waits for requests in progress.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// After `accept` fails (out of file descriptors), the pause before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The calls served here.
const PATHS: [&str; 5] = [
    "/api/v1/agents/heartbeat",
    "/api/v1/agents/lease",
    "/api/v1/agents/traces",
    "/api/v1/results",
    "/api/v1/results/batch",
];

/// Serves the agent protocol's hot calls on `listener` until `stop` turns true, then
/// waits (at most [`DRAIN_TIMEOUT`]) for the requests in progress.
pub async fn serve(listener: TcpListener, state: AppState, mut stop: watch::Receiver<bool>) {
    let limits = Arc::new(Limits {
        max_head_bytes: MAX_HEAD_BYTES,
        max_body_bytes: state.config.max_body_bytes,
        idle: Duration::from_secs(state.config.keep_alive_s),
        head: HEAD_TIMEOUT,
        body: BODY_TIMEOUT,
        write: WRITE_TIMEOUT,
    });
    let open = Arc::new(Open::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    state: state.clone(),
                    limits: limits.clone(),
                    open: open.clone(),
                };
                open.count.fetch_add(1, Ordering::AcqRel);
                Metrics::add(&state.metrics.agent_listener_connections, 1);
                tokio::spawn(connection.serve(stream, peer, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent listener could not accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    open.drained(DRAIN_TIMEOUT).await;
}

/// The connections open, to wait for when stopping.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

impl Open {
    async fn drained(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        while self.count.load(Ordering::Acquire) > 0 {
            let closed = self.closed.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(until, closed).await.is_err() {
                return;
            }
        }
    }
}

/// What one connection's task holds: three pointers.
struct Connection {
    state: AppState,
    limits: Arc<Limits>,
    open: Arc<Open>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) {
        let state = &self.state;
        http1::serve(stream, &self.limits, stop, |request| {
            // Boxed: a call's future (a long poll's, a submission's) is allocated while
            // it runs, not kept in every idle connection's task.
            Box::pin(answer(state, peer, request))
        })
        .await;
        self.state
            .metrics
            .agent_listener_connections
            .fetch_sub(1, Ordering::Relaxed);
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.closed.notify_waiters();
        }
    }
}

/// Answers one request, logs it and counts its refusal, as the actix middleware does
/// for the controller's address (`access_log`).
async fn answer(state: &AppState, peer: SocketAddr, request: Request) -> Response {
    let started = Instant::now();
    // In a block: the request's room is not kept across the call's awaits.
    let call = {
        let mut request = request;
        match Call::read(&mut request) {
            Ok(call) => call,
            Err(refusal) => {
                let (method, path) = (&request.method, &request.path);
                record(state, method, path, peer, &refusal, started);
                return refusal;
            }
        }
    };
    let path = call.path;
    let response = call
        .make(state, peer)
        .await
        .unwrap_or_else(|refusal| refusal);
    record(state, "POST", path, peer, &response, started);
    response
}

fn record(
    state: &AppState,
    method: &str,
    path: &str,
    peer: SocketAddr,
    response: &Response,
    started: Instant,
) {
    Metrics::inc(&state.metrics.agent_listener_requests);
    crate::access_log::record(
        Some(state.metrics.as_ref()),
        method,
        path,
        Some(peer),
        response.status,
        started,
    );
}

/// A call of one of [`PATHS`], with what it needs of its request: the rest of the
/// request is dropped before the call begins, so a waiting long poll does not keep it.
struct Call {
    path: &'static str,
    token: String,
    forwarded_for: String,
    content_type: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl Call {
    /// The call `request` makes; or the answer to a request for something this listener
    /// does not serve (404 for a path not in [`PATHS`], 405 for a method other than
    /// POST), or without a bearer token (401). Takes what the call needs out of
    /// `request`, leaving its method and path (for the log).
    fn read(request: &mut Request) -> Result<Call, Response> {
        let Some(path) = PATHS.iter().copied().find(|p| *p == request.path) else {
            let refusal = Response::error(
                404,
                "not_found",
                format!(
                    "{} is not served here: this address serves agents' heartbeats, leases, \
                     path traces and results; the rest of the API is at the controller's address",
                    request.path
                ),
            );
            return Err(refusal);
        };
        if request.method != "POST" {
            let mut refusal =
                Response::error(405, "method_not_allowed", format!("{path} takes POST"));
            refusal.headers.push(("allow", "POST".into()));
            return Err(refusal);
        }
        let token = bearer_token(request.authorization.as_deref()).map_err(refused)?;
        Ok(Call {
            path,
            token,
            forwarded_for: std::mem::take(&mut request.forwarded_for),
            content_type: request.content_type.take(),
            body: std::mem::take(&mut request.body),
        })
    }

    /// Authenticates the agent, reads the body and makes the call. Each step's future
    /// is boxed in a statement of its own: this one then holds a pointer to the step
    /// under way (a waiting lease holds the lease's state only, not the largest of the
    /// five calls'), and no temporary keeps room in it across an await.
    async fn make(self, state: &AppState, peer: SocketAddr) -> Result<Response, Response> {
        let agent = {
            let found = Box::pin(agent_by_token(state, self.token));
            found.await.map_err(refused)?
        };
        let body = JsonBody {
            content_type: self.content_type,
            bytes: self.body,
        };
        match self.path {
            "/api/v1/agents/heartbeat" => {
                let origin = origin(state, peer.ip(), &self.forwarded_for);
                let call = Box::pin(agent_calls::heartbeat(state, &agent, body.read()?, origin));
                ok(call.await)
            }
            "/api/v1/agents/lease" => {
                let call = Box::pin(agent_calls::lease(state, agent, body.read()?));
                ok(call.await)
            }
            "/api/v1/agents/traces" => {
                let call = Box::pin(agent_calls::report_trace(state, &agent, body.read()?));
                ok(call.await)
            }
            "/api/v1/results" => {
                let call = Box::pin(agent_calls::submit(state, &agent.id, body.read()?));
                ok(call.await)
            }
            _ => {
                let call = Box::pin(agent_calls::submit_batch(state, &agent.id, body.read()?));
                ok(call.await)
            }
        }
    }
}

/// A request's JSON body, read as actix's `web::Json` reads one (`api::error::json_error`
/// says the same things in the same words).
struct JsonBody {
    content_type: Option<Vec<u8>>,
    bytes: Vec<u8>,
}

impl JsonBody {
    fn read<T: DeserializeOwned>(&self) -> Result<T, Response> {
        let json = self.content_type.as_deref().is_some_and(is_json);
        if !json {
            return Err(Response::error(
                415,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        serde_json::from_slice(&self.bytes).map_err(|e| {
            if e.is_data() {
                Response::error(
                    422,
                    "invalid_body",
                    format!("the JSON does not have the expected shape: {e}"),
                )
            } else {
                Response::error(
                    400,
                    "invalid_json",
                    format!("the body is not valid JSON: {e}"),
                )
            }
        })
    }
}

/// `application/json`, or a `+json` type, with any parameters (actix's rule).
fn is_json(content_type: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

fn ok<T: Serialize>(outcome: Result<T, Error>) -> Result<Response, Response> {
    let value = outcome.map_err(refused)?;
    Ok(Response {
        status: 200,
        headers: Vec::new(),
        body: serde_json::to_vec(&value).map_err(|e| refused(Error::Internal(e.to_string())))?,
    })
}

/// A domain error as the API answers it (`api::error::Failure`): its status, its
/// headers and its body.
fn refused(error: Error) -> Response {
    let failure = Failure(error);
    Response {
        status: failure.status_code().as_u16(),
        headers: failure.header().into_iter().collect(),
        body: serde_json::to_vec(&failure.body()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting long poll holds its connection's task and this future (boxed), so
    /// what the calls need must not all be laid out in it.
    #[tokio::test]
    async fn an_answer_in_progress_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::ControllerConfig {
            data_dir: dir.path().to_owned(),
            ..crate::ControllerConfig::default()
        };
        let state = tokio::task::spawn_blocking(|| AppState::open(config))
            .await
            .unwrap()
            .unwrap();
        let request = Request {
            method: "POST".into(),
            path: "/api/v1/agents/lease".into(),
            authorization: None,
            forwarded_for: String::new(),
            content_type: None,
            body: Vec::new(),
        };
        let answering = answer(&state, SocketAddr::from(([127, 0, 0, 1], 1)), request);
        // 640 bytes in a debug build, the call under way (a waiting lease) boxed apart;
        // 2,432 in release when every call's state was laid out in it.
        let size = std::mem::size_of_val(&answering);
        assert!(size <= 768, "an answer's future is {size} bytes");
    }

    #[test]
    fn json_bodies_are_told_by_their_content_type() {
        for t in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(t.as_bytes()), "{t}");
        }
        for t in [
            "text/plain",
            "application/jsonx",
            "json",
            "",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json(t.as_bytes()), "{t}");
        }
    }
}
