//! The agent's side of the controller API, over reqwest.
//!
//! Every call carries the agent's bearer token; every error answer is turned into a
//! [`ClientError`] that keeps the controller's stable code, so the run loop can tell
//! "try again later" (network trouble, 5xx) from "this will never work" (4xx).

use std::net::IpAddr;
use std::time::Duration;

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

/// A connection to one controller.
#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
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
        })
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
        let url = self.base.join(path).unwrap_or_else(|_| self.base.clone());
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
            error: "unexpected_answer".into(),
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
        self.post("/api/v1/agents/heartbeat", beat).await
    }

    /// Leases up to `max` assignments; with `wait_s` > 0 and no work now, the controller
    /// holds the answer up to that long for work planned for this agent (a controller
    /// from before long polls answers at once).
    pub async fn lease(&self, max: u32, wait_s: u32) -> Result<LeaseResponse, ClientError> {
        let request = LeaseRequest {
            max,
            wait_s: (wait_s > 0).then_some(wait_s),
        };
        self.post("/api/v1/agents/lease", &request).await
    }

    /// Reports a path trace; safe to repeat.
    pub async fn report_trace(
        &self,
        report: &lastmile_protocol::trace::TraceReport,
    ) -> Result<lastmile_protocol::trace::TraceAck, ClientError> {
        self.post("/api/v1/agents/traces", report).await
    }

    /// Submits one result; safe to repeat.
    pub async fn submit(&self, result: &ResultSubmission) -> Result<ResultAck, ClientError> {
        self.post("/api/v1/results", result).await
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
        self.post("/api/v1/results/batch", &batch).await
    }
}
