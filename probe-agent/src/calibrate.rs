//! Calibration: measuring this machine's line against the controller, so that the
//! controller can classify it (dial-up, DSL, cable, fibre, ...) instead of trusting
//! what the volunteer declared.
//!
//! Like a speed test, but frugal with the volunteer's bytes: round trips are timed with
//! a few tiny pings over one kept-alive connection; then payloads grow eightfold, from
//! 16 KiB, until one transfer takes long enough to time well (250 ms) or the next one
//! would pass the byte budget. A dial-up line is measured with a few dozen kilobytes; a
//! fibre line needs a few megabytes.

use std::time::{Duration, Instant};

use std::sync::Mutex;

use lastmile_protocol::calibration::{
    CalibrationAck, CalibrationReport, ECHO_HEADER, MAX_PAYLOAD_BYTES, NONCE_HEADER, NONCE_LEN,
};
use url::Url;

/// Pings timed per calibration (after one that opens the connection).
const PINGS: usize = 5;
/// First payload size.
const FIRST_PAYLOAD: u64 = 16 * 1024;
/// A transfer at least this long is timed well enough.
const LONG_ENOUGH: Duration = Duration::from_millis(250);

/// A failed calibration.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("controller refused calibration ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the byte budget of {0} bytes is too small to calibrate")]
    NoBudget(u64),
}

/// The nonce of the previous calibration answer, sent back with the next request so
/// that the controller times each round trip and transfer on its own clock (it never
/// takes this agent's figures for it).
#[derive(Default)]
struct Echo(Mutex<Option<String>>);

impl Echo {
    fn attach(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(nonce) => request.header(ECHO_HEADER, nonce),
            None => request,
        }
    }

    fn keep(&self, nonce: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = nonce;
    }
}

/// Where and as whom to calibrate.
pub struct Calibrator<'a> {
    pub http: &'a reqwest::Client,
    /// Base URL of the calibration endpoints (normally the controller).
    pub base: &'a Url,
    pub token: &'a str,
    /// Most bytes this calibration may move, both directions together.
    pub budget: u64,
}

impl Calibrator<'_> {
    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, CalibrationError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(CalibrationError::Refused {
            status: status.as_u16(),
            body: response.text().await.unwrap_or_default(),
        })
    }

    /// Measures the line and reports it; returns the controller's classification,
    /// made from what the controller timed of these same requests.
    pub async fn run(&self) -> Result<CalibrationAck, CalibrationError> {
        let echo = Echo::default();
        let report = self.measure_with(&echo).await?;
        let response = echo
            .attach(self.http.post(self.url("/api/v1/agents/calibration")))
            .bearer_auth(self.token)
            .json(&report)
            .send()
            .await?;
        Ok(Self::check(response).await?.json().await?)
    }

    /// Measures RTT, downstream and upstream rate (the agent's own view).
    pub async fn measure(&self) -> Result<CalibrationReport, CalibrationError> {
        self.measure_with(&Echo::default()).await
    }

    async fn measure_with(&self, echo: &Echo) -> Result<CalibrationReport, CalibrationError> {
        if self.budget < 2 * FIRST_PAYLOAD {
            return Err(CalibrationError::NoBudget(self.budget));
        }
        let rtt = self.rtt(echo).await?;
        let half = self.budget / 2;
        let (down_bps, down_used) = self.grow(half, |size| self.download(size, echo)).await?;
        let (up_bps, up_used) = self
            .grow(self.budget - down_used, |size| self.upload(size, rtt, echo))
            .await?;
        Ok(CalibrationReport {
            rtt_us: rtt.as_micros() as u64,
            down_bps,
            up_bps,
            bytes_used: down_used + up_used,
        })
    }

    async fn rtt(&self, echo: &Echo) -> Result<Duration, CalibrationError> {
        let mut samples = Vec::with_capacity(PINGS);
        for i in 0..=PINGS {
            let started = Instant::now();
            let response = echo
                .attach(self.http.get(self.url("/api/v1/agents/calibration/ping")))
                .bearer_auth(self.token)
                .send()
                .await?;
            let response = Self::check(response).await?;
            echo.keep(
                response
                    .headers()
                    .get(NONCE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            );
            // The first ping pays for the TCP handshake; it is not a round trip sample.
            if i > 0 {
                samples.push(started.elapsed());
            }
        }
        samples.sort();
        Ok(samples[samples.len() / 2])
    }

    /// Repeats a transfer with growing sizes; returns the last rate and bytes used.
    async fn grow<F, Fut>(&self, budget: u64, transfer: F) -> Result<(u64, u64), CalibrationError>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = Result<(u64, Duration), CalibrationError>>,
    {
        let mut size = FIRST_PAYLOAD;
        let mut used = 0u64;
        loop {
            let (bits_per_second, took) = transfer(size).await?;
            used += size;
            let rate = bits_per_second.max(1);
            let next = (size * 8).min(MAX_PAYLOAD_BYTES);
            if took >= LONG_ENOUGH || next == size || used + next > budget {
                return Ok((rate, used));
            }
            size = next;
        }
    }

    /// Downloads `size` bytes; the rate is timed from the first to the last byte, so the
    /// request's round trip is not in it.
    async fn download(&self, size: u64, echo: &Echo) -> Result<(u64, Duration), CalibrationError> {
        let response = echo
            .attach(
                self.http
                    .get(self.url("/api/v1/agents/calibration/download")),
            )
            .query(&[("bytes", size)])
            .bearer_auth(self.token)
            .send()
            .await?;
        let mut body = Self::check(response).await?;
        let mut first: Option<(Instant, u64)> = None;
        let mut received = 0u64;
        // The payload's last bytes are the nonce to echo.
        let mut tail: Vec<u8> = Vec::with_capacity(2 * NONCE_LEN);
        while let Some(chunk) = body.chunk().await? {
            received += chunk.len() as u64;
            if first.is_none() {
                first = Some((Instant::now(), received));
            }
            tail.extend_from_slice(&chunk[chunk.len().saturating_sub(NONCE_LEN)..]);
            let excess = tail.len().saturating_sub(NONCE_LEN);
            tail.drain(..excess);
        }
        echo.keep(String::from_utf8(tail).ok());
        let (started, first_bytes) = first.unwrap_or((Instant::now(), 0));
        let took = started.elapsed();
        let timed_bytes = received.saturating_sub(first_bytes);
        Ok((bits_per_second(timed_bytes, took), took))
    }

    /// Uploads `size` bytes; the rate is timed over the whole request less one round
    /// trip (the controller answers once everything arrived).
    async fn upload(
        &self,
        size: u64,
        rtt: Duration,
        echo: &Echo,
    ) -> Result<(u64, Duration), CalibrationError> {
        let payload = vec![0u8; size as usize];
        let started = Instant::now();
        let response = echo
            .attach(
                self.http
                    .post(self.url("/api/v1/agents/calibration/upload")),
            )
            .bearer_auth(self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(payload)
            .send()
            .await?;
        Self::check(response).await?;
        let took = started.elapsed().saturating_sub(rtt);
        Ok((bits_per_second(size, took), took))
    }
}

fn bits_per_second(bytes: u64, took: Duration) -> u64 {
    let seconds = took.as_secs_f64().max(1e-6);
    ((bytes as f64 * 8.0) / seconds) as u64
}
