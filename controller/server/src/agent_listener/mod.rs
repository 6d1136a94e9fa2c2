//! The agent listener: the agent protocol's hot calls (heartbeat, lease, path traces,
//! results) on an address of their own (`agent_listen`), served by [`http1`], whose
//! idle keep-alive connection holds no buffer where actix-web's holds two of 8 KiB: 5-8
//! KiB of controller memory per connected agent instead of 14-23 (`bench agents`).
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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::ResponseError;
use lastmile_domain::agents::Agent;
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
    let open = Arc::new(Open {
        metrics: state.metrics.clone(),
        closed: Notify::new(),
    });
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
                    peer,
                };
                open.count().fetch_add(1, Ordering::AcqRel);
                tokio::spawn(connection.serve(stream, stop.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the agent listener could not accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // Closed at once: an agent connecting now is refused (and goes to the controller's
    // URL) rather than left waiting in the backlog.
    drop(listener);
    open.drained(DRAIN_TIMEOUT).await;
}

/// The connections open, to wait for when stopping: counted by the metrics' gauge
/// (`lastmile_agent_listener_connections`), the one count of them.
struct Open {
    metrics: Arc<Metrics>,
    closed: Notify,
}

impl Open {
    fn count(&self) -> &AtomicU64 {
        &self.metrics.agent_listener_connections
    }

    async fn drained(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        while self.count().load(Ordering::Acquire) > 0 {
            let closed = self.closed.notified();
            if self.count().load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(until, closed).await.is_err() {
                return;
            }
        }
    }
}

/// What one connection's task holds: its peer and three pointers.
struct Connection {
    state: AppState,
    limits: Arc<Limits>,
    open: Arc<Open>,
    peer: SocketAddr,
}

/// Counts the connection closed when its task ends, however it ends (a call that
/// panicked included), so that a stopping listener does not wait for it.
struct Closing<'a>(&'a Connection);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let open = &self.0.open;
        if open.count().fetch_sub(1, Ordering::AcqRel) == 1 {
            open.closed.notify_waiters();
        }
    }
}

impl Connection {
    async fn serve(self, stream: TcpStream, stop: watch::Receiver<bool>) {
        let _closing = Closing(&self);
        http1::serve(stream, &self.limits, stop, &self).await;
    }

    fn record(&self, method: &str, path: &str, status: u16, started: Instant) {
        Metrics::inc(&self.state.metrics.agent_listener_requests);
        crate::access_log::record(
            Some(self.state.metrics.as_ref()),
            method,
            path,
            Some(self.peer),
            status,
            started,
        );
    }
}

/// A request admitted on its head: which call, by which agent, since when.
struct Admitted {
    path: &'static str,
    agent: Arc<Agent>,
    started: Instant,
}

impl http1::Service for Connection {
    type Admitted = Admitted;

    /// One of [`PATHS`] (else 404), by POST (else 405), from an agent (401): all
    /// known before a byte of the body is read.
    fn admit<'a>(
        &'a self,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Result<Admitted, Response>> + Send + 'a>> {
        Box::pin(async move {
            let started = Instant::now();
            let admitted = admit(&self.state, request).await;
            if let Err(refusal) = &admitted {
                self.record(&request.method, &request.path, refusal.status, started);
            }
            admitted.map(|(path, agent)| Admitted {
                path,
                agent,
                started,
            })
        })
    }

    fn answer<'a>(
        &'a self,
        admitted: Admitted,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Response> + Send + 'a>> {
        Box::pin(async move {
            let (path, started) = (admitted.path, admitted.started);
            let response = call(&self.state, self.peer, admitted, request)
                .await
                .unwrap_or_else(|refusal| refusal);
            self.record("POST", path, response.status, started);
            response
        })
    }

    fn refused(&self, request: Option<&Request>, refusal: &Response) {
        let (method, path) = request.map_or(("-", "-"), |r| (r.method.as_str(), r.path.as_str()));
        self.record(method, path, refusal.status, Instant::now());
    }
}

async fn admit(
    state: &AppState,
    request: &Request,
) -> Result<(&'static str, Arc<Agent>), Response> {
    let Some(path) = PATHS.iter().copied().find(|p| *p == request.path) else {
        return Err(Response::error(
            404,
            "not_found",
            format!(
                "{} is not served here: this address serves agents' heartbeats, leases, path \
                 traces and results; the rest of the API is at the controller's address",
                request.path
            ),
        ));
    };
    if request.method != "POST" {
        let mut refusal = Response::error(405, "method_not_allowed", format!("{path} takes POST"));
        refusal.headers.push(("allow", "POST".into()));
        return Err(refusal);
    }
    let token = bearer_token(request.authorization.as_deref()).map_err(refused)?;
    let found = Box::pin(agent_by_token(state, token));
    let agent = found.await.map_err(refused)?;
    Ok((path, agent))
}

/// Reads the body and makes the call. Each call's future is boxed in a statement of
/// its own: this one then holds a pointer to it (a waiting lease holds the lease's
/// state, not the largest of the five calls'), and no temporary keeps room in it
/// across the await. The request (its body included) is dropped before the call.
async fn call(
    state: &AppState,
    peer: SocketAddr,
    admitted: Admitted,
    request: Request,
) -> Result<Response, Response> {
    let Admitted { path, agent, .. } = admitted;
    let body = JsonBody {
        content_type: request.content_type.as_deref(),
        bytes: &request.body,
    };
    match path {
        "/api/v1/agents/heartbeat" => {
            let origin = origin(state, peer.ip(), &request.forwarded_for);
            let beat = body.read()?;
            drop(request);
            let call = Box::pin(agent_calls::heartbeat(state, &agent, beat, origin));
            ok(call.await)
        }
        "/api/v1/agents/lease" => {
            let lease = body.read()?;
            drop(request);
            let call = Box::pin(agent_calls::lease(state, agent, lease));
            ok(call.await)
        }
        "/api/v1/agents/traces" => {
            let report = body.read()?;
            drop(request);
            let call = Box::pin(agent_calls::report_trace(state, &agent, report));
            ok(call.await)
        }
        "/api/v1/results" => {
            let result = body.read()?;
            drop(request);
            let call = Box::pin(agent_calls::submit(state, &agent.id, result));
            ok(call.await)
        }
        _ => {
            let batch = body.read()?;
            drop(request);
            let call = Box::pin(agent_calls::submit_batch(state, &agent.id, batch));
            ok(call.await)
        }
    }
}

/// A request's JSON body, read as actix's `web::Json` reads one (`api::error::json_error`
/// says the same things in the same words).
struct JsonBody<'a> {
    content_type: Option<&'a [u8]>,
    bytes: &'a [u8],
}

impl JsonBody<'_> {
    fn read<T: DeserializeOwned>(&self) -> Result<T, Response> {
        let json = self.content_type.is_some_and(is_json);
        if !json {
            return Err(Response::error(
                415,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        serde_json::from_slice(self.bytes).map_err(|e| {
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
