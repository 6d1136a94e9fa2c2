//! Test support: a cheating agent. It speaks the agent protocol like the real agent
//! (enrols, calibrates its line honestly through the same calibration endpoints,
//! heartbeats, leases) but never measures: for every task it submits made-up fast
//! timings at once. Deliberately not in the shipped agent.

use std::net::Ipv4Addr;
use std::time::Duration;

use lastmile_agent::calibrate::Calibrator;
use lastmile_protocol::calibration::CalibrationAck;
use serde_json::{json, Value};

use crate::support::TestApp;

pub struct Cheater {
    http: reqwest::Client,
    base: String,
    pub token: String,
    class: String,
}

impl Cheater {
    /// Enrols from `source` with the volunteer's key, declaring `class`.
    pub async fn enrol(app: &TestApp, source: Ipv4Addr, key: &str, class: &str) -> Cheater {
        Cheater {
            token: app.agent(source, key, class, 4).await,
            http: TestApp::client_from(source),
            base: app.base.clone(),
            class: class.to_owned(),
        }
    }

    /// Calibrates like everyone: through `calibration_base` (an emulated link to the
    /// controller), so the controller records its real line.
    pub async fn calibrate(&self, calibration_base: &url::Url) -> CalibrationAck {
        Calibrator {
            http: &self.http,
            base: calibration_base,
            token: &self.token,
            budget: 20 * 1024 * 1024,
        }
        .run()
        .await
        .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap()
    }

    /// One round: heartbeat, lease what is offered, submit a fabricated result for
    /// each task without fetching anything. Returns how many it "measured".
    pub async fn round(&self, n: &mut u64) -> usize {
        self.post(
            "/api/v1/agents/heartbeat",
            json!({"declared_class": self.class, "version": "1.0.0", "limits": {"max_concurrent": 4}}),
        )
        .await;
        let lease = self.post("/api/v1/agents/lease", json!({"max": 4})).await;
        let tasks = lease["tasks"].as_array().cloned().unwrap_or_default();
        for task in &tasks {
            *n += 1;
            // A snappy page: 1.2 ms to the first byte, 8 KiB in 0.3 ms.
            let (dns, connect, ttfb, transfer) = (150 + *n, 400 + *n, 1_200 + *n, 300 + *n);
            self.post(
                "/api/v1/results",
                json!({
                    "assignment_id": task["assignment_id"],
                    "started_at": chrono::Utc::now().to_rfc3339(),
                    "measurement": {
                        "status": 200, "bytes": 8192, "error": null,
                        "timings_us": {"dns": dns, "connect": connect, "tls": 0, "ttfb": ttfb,
                            "transfer": transfer, "total": dns + connect + ttfb + transfer}
                    }
                }),
            )
            .await;
        }
        tasks.len()
    }

    /// Keeps cheating until `stop` says so (at most ten minutes of rounds).
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> usize {
        let (mut n, mut done) = (0, 0);
        for _ in 0..3_000 {
            if *stop.borrow() {
                break;
            }
            done += self.round(&mut n).await;
            let _ = tokio::time::timeout(Duration::from_millis(200), stop.changed()).await;
        }
        done
    }
}
