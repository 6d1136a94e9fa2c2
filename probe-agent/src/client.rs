//! The agent's side of the controller API, over reqwest.
//!
//! Every call carries the agent's bearer token; every error answer is turned into a
//! [`ClientError`] that keeps the controller's stable code, so the run loop can tell
//! "try again later" (network trouble, 5xx) from "this will never work" (4xx).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lastmile_protocol::{
    ApiError, EnrolRequest, EnrolResponse, Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse,
    ResultAck, ResultBatch, ResultBatchAck, ResultSubmission,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use url::Url;

/// A failed call to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached or did not answer in time.
    #[error("controller unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The controller answered with an error.
    #[error("controller refused ({status}): {} - {}", .body.error, .body.message)]
    Refused { status: u16, body: ApiError },
}

impl ClientError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Refused { status, .. } => *status >= 500 || matches!(status, 408 | 429),
        }
    }

    /// Whether the controller refused this very request for good ([`is_rejection`]).
    pub fn is_rejection(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => false,
            ClientError::Refused { status, .. } => is_rejection(*status),
        }
    }
}

/// Whether an answer with `status` refuses the request for good: a 4xx that neither
/// waiting nor new credentials can cure. Not 401 (the token, not the request, is wrong:
/// once the agent has a valid token the same request succeeds), 408 (the request timed
/// out on its way) or 429 (asked to come back later).
pub fn is_rejection(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 408 | 429)
}

/// After the agent listener could not be reached, how long the hot calls go to the
/// controller's URL before the listener is tried again.
pub const LISTENER_RETRY: Duration = Duration::from_secs(300);

/// Whether an agent listener's refusal is the controller refusing the call itself (a
/// result for an expired assignment, a body it cannot take), which the controller's URL
/// would answer the same, rather than the listener failing or not being one: a 4xx in
/// the API's error shape, but not 401 (another deployment's listener does not know the
/// token), 404 `not_found` or 405 (not an agent listener's path), 408 or 429.
fn refuses_the_call(status: u16, body: &ApiError) -> bool {
    (400..500).contains(&status)
        && body.error != UNEXPECTED_ANSWER
        && !matches!(
            (status, body.error.as_str()),
            (401 | 405 | 408 | 429, _) | (404, "not_found")
        )
}

/// The code of an error answer that was not the API's error shape.
const UNEXPECTED_ANSWER: &str = "unexpected_answer";

/// Whether `url`'s host is this machine or a private network (by address; `localhost`).
fn is_local(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(url::Host::Ipv6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || first & 0xfe00 == 0xfc00
                || first & 0xffc0 == 0xfe80
        }
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

/// A connection to one controller.
#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    /// Where the hot calls go (shared by the clones of this client).
    hot: Arc<Mutex<HotRoute>>,
}

/// The agent listener a heartbeat's answer named (`HeartbeatAck::agent_url`): the hot
/// calls (heartbeat, lease, path traces, results) go there, and back to the
/// controller's URL for [`LISTENER_RETRY`] after it could not be reached or answered
/// as no agent listener would.
#[derive(Debug, Default)]
struct HotRoute {
    listener: Option<Url>,
    failed_at: Option<Instant>,
}

impl ControllerClient {
    /// A client for the controller at `base`, sending from `source_addr` if given.
    pub fn new(base: Url, source_addr: Option<IpAddr>) -> Result<ControllerClient, ClientError> {
        let http = reqwest::Client::builder()
            .local_address(source_addr)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("lastmile-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ControllerClient {
            http,
            base,
            token: None,
            hot: Arc::default(),
        })
    }

    /// The agent listener the hot calls go to now, if any.
    pub fn listener(&self) -> Option<Url> {
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let failed_lately = hot
            .failed_at
            .is_some_and(|at| at.elapsed() < LISTENER_RETRY);
        hot.listener.clone().filter(|_| !failed_lately)
    }

    /// Takes the agent listener a heartbeat's answer named (none: the controller's URL
    /// for everything). Refused, with a warning, so the agent's token goes nowhere it
    /// would not have gone: a URL that is not http(s); a plain `http://` one when the
    /// controller's URL is `https://` (the token would travel in the clear); one on this
    /// machine or a private network when the controller is not (a listener address
    /// named by mistake would be some other service of the volunteer's network).
    fn use_listener(&self, named: Option<&str>) {
        let listener = named.and_then(|text| match Url::parse(text) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && !(self.base.scheme() == "https" && url.scheme() == "http")
                    && (!is_local(&url) || is_local(&self.base)) =>
            {
                Some(url)
            }
            _ => {
                tracing::warn!(agent_url = text, "ignoring the agent listener the controller named: not an http(s) URL, plain http for an https controller, or a local address for a remote one");
                None
            }
        });
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.listener != listener {
            tracing::info!(listener = ?listener.as_ref().map(Url::as_str), "hot calls go to the agent listener");
            *hot = HotRoute {
                listener,
                failed_at: None,
            };
        }
    }

    /// A hot call: to the agent listener when there is one, else (and when the listener
    /// fails in any way but a refusal of the call itself) to the controller's URL. Every
    /// hot call is safe to repeat, so a call that may have reached the listener is sent
    /// again; what the controller's URL answers is what counts.
    async fn post_hot<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        if let Some(listener) = self.listener() {
            match self.post_to(&listener, path, body).await {
                Ok(answer) => return Ok(answer),
                Err(ClientError::Refused { status, body }) if refuses_the_call(status, &body) => {
                    return Err(ClientError::Refused { status, body })
                }
                Err(e) => tracing::warn!(error = %e, %listener,
                    "the agent listener failed: hot calls go to the controller's URL for {} s",
                    LISTENER_RETRY.as_secs()),
            }
            self.hot.lock().unwrap_or_else(|e| e.into_inner()).failed_at = Some(Instant::now());
        }
        self.post(path, body).await
    }

    /// The same client, authenticated with an agent token.
    pub fn with_token(mut self, token: String) -> ControllerClient {
        self.token = Some(token);
        self
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.post_to(&self.base, path, body).await
    }

    async fn post_to<B: Serialize, R: DeserializeOwned>(
        &self,
        base: &Url,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let url = base.join(path).unwrap_or_else(|_| base.clone());
        let mut request = self.http.post(url).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(ApiError {
            error: UNEXPECTED_ANSWER.into(),
            message: text,
        });
        Err(ClientError::Refused {
            status: status.as_u16(),
            body,
        })
    }

    /// Enrols with a volunteer's key; the answer holds the agent's token.
    pub async fn enrol(&self, request: &EnrolRequest) -> Result<EnrolResponse, ClientError> {
        self.post("/api/v1/agents/enrol", request).await
    }

    /// Reports that the agent is alive, with its declared class and limits.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        let ack: HeartbeatAck = self.post_hot("/api/v1/agents/heartbeat", beat).await?;
        self.use_listener(ack.agent_url.as_deref());
        Ok(ack)
    }

    /// Leases up to `max` assignments; with `wait_s` > 0 and no work now, the controller
    /// holds the answer up to that long for work planned for this agent (a controller
    /// from before long polls answers at once).
    pub async fn lease(&self, max: u32, wait_s: u32) -> Result<LeaseResponse, ClientError> {
        let request = LeaseRequest {
            max,
            wait_s: (wait_s > 0).then_some(wait_s),
        };
        self.post_hot("/api/v1/agents/lease", &request).await
    }

    /// Reports a path trace; safe to repeat.
    pub async fn report_trace(
        &self,
        report: &lastmile_protocol::trace::TraceReport,
    ) -> Result<lastmile_protocol::trace::TraceAck, ClientError> {
        self.post_hot("/api/v1/agents/traces", report).await
    }

    /// Submits one result; safe to repeat.
    pub async fn submit(&self, result: &ResultSubmission) -> Result<ResultAck, ClientError> {
        self.post_hot("/api/v1/results", result).await
    }

    /// Submits up to `MAX_RESULTS_PER_BATCH` results in one request; safe to repeat.
    /// The answer has one outcome per result, in order. A controller from before batches
    /// answers 404 (no such path): send them one by one.
    pub async fn submit_batch(
        &self,
        results: &[ResultSubmission],
    ) -> Result<ResultBatchAck, ClientError> {
        let batch = ResultBatch {
            results: results.to_vec(),
        };
        self.post_hot("/api/v1/results/batch", &batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> ControllerClient {
        ControllerClient::new(base.parse().unwrap(), None).unwrap()
    }

    #[test]
    fn the_listener_a_heartbeat_names_is_taken_unless_it_would_downgrade() {
        let plain = client("http://controller.test:8080/");
        plain.use_listener(Some("http://agents.test:8081"));
        assert_eq!(
            plain.listener().map(String::from),
            Some("http://agents.test:8081/".to_owned())
        );
        plain.use_listener(None);
        assert_eq!(plain.listener(), None, "the controller stopped naming one");

        let tls = client("https://controller.test/");
        tls.use_listener(Some("http://agents.test:8081"));
        assert_eq!(tls.listener(), None, "the token would travel in the clear");
        tls.use_listener(Some("https://agents.test"));
        assert!(tls.listener().is_some());
        for bad in [
            "ftp://agents.test",
            "agents.test:8081",
            "file:///etc/passwd",
            "",
            "https://127.0.0.1:8081",
            "https://10.0.0.11:8081",
            "https://[fd00::1]:8081",
            "https://localhost:8081",
        ] {
            tls.use_listener(Some(bad));
            assert_eq!(tls.listener(), None, "{bad}");
        }
        // A controller on this machine (a trial, the tests) may name a listener here.
        let local = client("http://127.0.0.1:8080/");
        local.use_listener(Some("http://127.0.0.1:8081"));
        assert!(local.listener().is_some());
    }

    #[test]
    fn only_a_refusal_of_the_call_itself_is_final_from_the_listener() {
        let answer = |error: &str| ApiError {
            error: error.into(),
            message: String::new(),
        };
        assert!(refuses_the_call(404, &answer("assignment_not_found")));
        assert!(refuses_the_call(422, &answer("invalid_result")));
        assert!(refuses_the_call(413, &answer("payload_too_large")));
        for (status, error) in [
            (404, "not_found"),
            (405, "method_not_allowed"),
            (401, "unauthorized"),
            (403, UNEXPECTED_ANSWER),
            (413, UNEXPECTED_ANSWER),
            (408, "request_timeout"),
            (429, "rate_limited"),
            (502, UNEXPECTED_ANSWER),
            (503, "unavailable"),
        ] {
            assert!(
                !refuses_the_call(status, &answer(error)),
                "{status} {error}"
            );
        }
    }

    #[test]
    fn a_listener_that_failed_is_left_alone_for_a_while() {
        let plain = client("http://controller.test:8080/");
        plain.use_listener(Some("http://agents.test:8081"));
        plain.hot.lock().unwrap().failed_at = Some(Instant::now());
        assert_eq!(plain.listener(), None);
        // Named again by the next heartbeat: still failed until LISTENER_RETRY is over.
        plain.use_listener(Some("http://agents.test:8081"));
        assert_eq!(plain.listener(), None);
        plain.hot.lock().unwrap().failed_at = Instant::now().checked_sub(LISTENER_RETRY);
        assert!(plain.listener().is_some());
    }
}
