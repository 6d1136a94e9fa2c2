//! The agent's life: enrol once, then heartbeat, lease, measure, spool and submit.
//!
//! The loop is written for a volunteer's machine, not a data centre: the controller may
//! be unreachable for hours (backoff with jitter, results kept in the spool), the agent
//! may be stopped at any moment (in-flight measurements finish and are spooled before
//! it exits), and it never runs more measurements at once than the volunteer allowed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lastmile_protocol::{
    AgentLimits, ApiError, CheckKind, ConnectionClass, EnrolRequest, ErrorKind, Heartbeat,
    Measurement, MeasurementError, ResultAck, ResultOutcome, ResultSubmission, Task,
    MAX_RESULTS_PER_BATCH,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use url::Url;
use uuid::Uuid;

use crate::calibrate::Calibrator;
use crate::client::{ClientError, ControllerClient};
use crate::limits::{self, Gate, VolunteerLimits};
use crate::measure::{Engine, EngineConfig, Expectations};
use crate::page::PageLimits;
use crate::spool::{Rejected, Spool};
use crate::trace;

/// Everything the run loop needs, already merged from flags, environment and config file.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub controller: Url,
    /// Needed only for the first start; afterwards the credentials in `state_dir` are used.
    pub enrol_key: Option<String>,
    pub state_dir: PathBuf,
    pub name: String,
    pub declared_class: ConnectionClass,
    pub limits: AgentLimits,
    pub engine: EngineConfig,
    /// How long to wait before asking again when no work was offered.
    pub idle_poll: Duration,
    /// Where to calibrate the line; `None` means the controller itself.
    pub calibration_url: Option<Url>,
    /// Most calibration bytes per day (both directions); 0 turns calibration off.
    pub calibration_bytes_per_day: u64,
    /// Daily bytes and idle-only hours.
    pub volunteer: VolunteerLimits,
    /// Most results kept in the spool while the controller is unreachable.
    pub spool_max_results: usize,
    /// Whether to run the path traces the controller asks for when an incident opens.
    pub path_trace: bool,
}

/// How often the line is calibrated again.
const RECALIBRATE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// What the agent keeps after enrolling: its identity and secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub agent_id: Uuid,
    pub token: String,
    pub controller: Url,
}

const CREDENTIALS_FILE: &str = "credentials.json";

/// Reads the stored credentials, or enrols and stores them.
pub async fn load_or_enrol(
    settings: &AgentSettings,
    client: &ControllerClient,
) -> anyhow::Result<Credentials> {
    let path = settings.state_dir.join(CREDENTIALS_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        let creds: Credentials = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); remove it to enrol again",
                path.display()
            )
        })?;
        return Ok(creds);
    }
    let Some(key) = &settings.enrol_key else {
        anyhow::bail!(
            "this agent is not enrolled yet: pass --enrol-key (or LASTMILE_ENROL_KEY) once; \
             credentials are then kept in {}",
            settings.state_dir.display()
        );
    };
    let response = client
        .enrol(&EnrolRequest {
            enrol_key: key.clone(),
            name: settings.name.clone(),
            declared_class: settings.declared_class,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await?;
    let creds = Credentials {
        agent_id: response.agent_id,
        token: response.token,
        controller: settings.controller.clone(),
    };
    write_private(&path, &serde_json::to_vec_pretty(&creds)?)?;
    tracing::info!(agent_id = %creds.agent_id, "enrolled");
    Ok(creds)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(tmp, path)
}

/// Exponential backoff with full jitter, so that a thousand agents that lost the
/// controller at the same moment do not come back at the same moment.
#[derive(Debug)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(60);

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = Self::BASE
            .saturating_mul(1u32 << self.failures.min(10))
            .min(Self::CAP);
        let millis = rand::thread_rng()
            .gen_range(Self::BASE.as_millis() as u64..=ceiling.as_millis() as u64);
        Duration::from_millis(millis)
    }
}

/// Runs the agent until `shutdown` resolves; in-flight measurements are finished and
/// spooled before it returns.
///
/// Only this shim is generic: the agent itself is [`run_until`], compiled once in this
/// crate rather than again in every crate that runs an agent (the demo's build spent
/// a minute compiling the agent's loop a second time).
pub async fn run(
    settings: AgentSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_until(settings, Box::pin(shutdown)).await
}

/// [`run`] with its shutdown signal boxed.
pub async fn run_until(
    settings: AgentSettings,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.state_dir)?;
    let engine = Engine::new(settings.engine.clone())?;
    let spool = Spool::open(settings.state_dir.join("spool"), settings.spool_max_results)?;
    let gate = Arc::new(std::sync::Mutex::new(Gate::open(
        settings.volunteer.clone(),
        &settings.state_dir,
        Box::new(limits::system_load_per_core),
    )));
    let anonymous =
        ControllerClient::new(settings.controller.clone(), settings.engine.source_addr)?;

    let mut shutdown = shutdown;
    let mut backoff = Backoff { failures: 0 };
    let creds = loop {
        match load_or_enrol(&settings, &anonymous).await {
            Ok(c) => break c,
            Err(e) if is_transient(&e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "enrolment failed");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let client = anonymous.with_token(creds.token.clone());
    let mut next_calibration = tokio::time::Instant::now();
    let slots = Arc::new(Semaphore::new(
        settings.limits.max_concurrent.max(1) as usize
    ));
    let line = LineShare::default();
    let mut in_flight = JoinSet::new();
    let mut next_heartbeat = tokio::time::Instant::now();
    // What the controller was last told about pausing; a change is told at once.
    let mut told_paused: Option<Option<String>> = None;
    backoff.reset();

    loop {
        // Reap finished measurements so the set does not grow.
        while in_flight.try_join_next().is_some() {}

        let now = tokio::time::Instant::now();
        if now >= next_calibration && in_flight.is_empty() {
            // Calibration traffic would disturb measurements, so it runs only when none
            // is in flight; a failure is logged and retried on the next schedule.
            calibrate(&settings, &creds).await;
            next_calibration = now + RECALIBRATE_EVERY;
        }
        let paused = pause_reason(&gate, &spool);
        let step = if now >= next_heartbeat || told_paused.as_ref() != Some(&paused) {
            beat(&client, &settings, paused.clone())
                .await
                .map(|interval| {
                    if let Some(why) = &paused {
                        tracing::info!(reason = %why, "taking no work for now");
                    }
                    told_paused = Some(paused);
                    next_heartbeat = now + interval;
                    // Results left from an earlier life (or a failed send) go out with each beat.
                    in_flight.spawn(flush_spool(client.clone(), spool.clone()));
                    Duration::ZERO
                })
        } else if paused.is_some() {
            Ok(settings.idle_poll)
        } else {
            let work = Work {
                client: &client,
                engine: &engine,
                spool: &spool,
                slots: &slots,
                gate: &gate,
                line: &line,
            };
            let until_beat = next_heartbeat.saturating_duration_since(now);
            // A lease may wait at the controller for work: stopping must not wait for it
            // (a lease cut off here expires at the controller and is offered again).
            tokio::select! {
                _ = &mut shutdown => break,
                step = lease_and_start(&work, &mut in_flight, &settings, until_beat) => step,
            }
        };
        let delay = match step {
            // A due heartbeat cuts the wait short; after a failure it must not, or a
            // heartbeat that failed (and so is still due) would be retried at once, in a
            // tight loop, for as long as the controller is away.
            Ok(d) => {
                backoff.reset();
                d.min(next_heartbeat.saturating_duration_since(tokio::time::Instant::now()))
            }
            Err(e) if e.is_transient() => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "controller call failed");
                d
            }
            Err(e) => return Err(e.into()),
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }

    tracing::info!(
        in_flight = in_flight.len(),
        "stopping: finishing in-flight measurements"
    );
    while in_flight.join_next().await.is_some() {}
    Ok(())
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>()
        .is_some_and(ClientError::is_transient)
}

async fn calibrate(settings: &AgentSettings, creds: &Credentials) {
    if settings.calibration_bytes_per_day == 0 {
        return;
    }
    let http = match reqwest::Client::builder()
        .local_address(settings.engine.source_addr)
        .timeout(Duration::from_secs(120))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build calibration client");
            return;
        }
    };
    let base = settings
        .calibration_url
        .as_ref()
        .unwrap_or(&settings.controller);
    let calibrator = Calibrator {
        http: &http,
        base,
        token: &creds.token,
        budget: settings.calibration_bytes_per_day,
    };
    match calibrator.run().await {
        Ok(ack) if ack.mismatch => tracing::warn!(
            declared = %ack.declared_class,
            measured = %ack.measured_class,
            "this line measures as a different class than declared; the measured class is used"
        ),
        Ok(ack) => tracing::info!(class = %ack.measured_class, "line calibrated"),
        Err(e) => tracing::warn!(error = %e, "calibration failed"),
    }
}

/// Why no work should be taken now: a volunteer limit, or a full spool.
fn pause_reason(gate: &std::sync::Mutex<Gate>, spool: &Spool) -> Option<String> {
    let now = chrono::Utc::now();
    let limit = match gate.lock() {
        Ok(g) => g.pause_reason(now),
        Err(poisoned) => poisoned.into_inner().pause_reason(now),
    };
    limit.or_else(|| {
        spool
            .is_full()
            .unwrap_or(false)
            .then(|| "spool full: waiting to deliver results before measuring more".to_owned())
    })
}

async fn beat(
    client: &ControllerClient,
    settings: &AgentSettings,
    paused: Option<String>,
) -> Result<Duration, ClientError> {
    let ack = client
        .heartbeat(&Heartbeat {
            declared_class: settings.declared_class,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            limits: settings.limits,
            paused,
            kinds: CheckKind::ALL.to_vec(),
            path_trace: settings.path_trace,
        })
        .await?;
    Ok(Duration::from_secs(u64::from(
        ack.heartbeat_interval_s.max(1),
    )))
}

/// What a measurement needs from the run loop.
struct Work<'a> {
    client: &'a ControllerClient,
    engine: &'a Engine,
    spool: &'a Spool,
    slots: &'a Arc<Semaphore>,
    gate: &'a Arc<std::sync::Mutex<Gate>>,
    line: &'a LineShare,
}

/// Who may use the agent's line at once. A throughput load fills the line on purpose,
/// a video session's player judges the line by how fast its segments arrive, and a udp
/// stream's round trips would time the queue of any download beside it, so these run
/// alone: each waits for the measurements in flight to end, and nothing else
/// starts until it is over; the other kinds share the line as the volunteer's
/// concurrency allows. Otherwise the load would read the line slower than it is, a
/// player beside other fetches would stall for their bytes, and a fetch beside either
/// would time their queue instead of its site. Waiters are served in order (tokio's
/// `RwLock` is fair), so a load or a session is not starved by a stream of fetches.
#[derive(Clone, Default)]
pub struct LineShare(Arc<tokio::sync::RwLock<()>>);

/// A measurement's hold on the line; released when dropped.
pub enum LineClaim {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(tokio::sync::OwnedRwLockWriteGuard<()>),
}

impl LineShare {
    /// Waits until a measurement of `kind` may use the line.
    pub async fn claim(&self, kind: CheckKind) -> LineClaim {
        match kind {
            CheckKind::Throughput | CheckKind::Video | CheckKind::Udp => {
                LineClaim::Alone(self.0.clone().write_owned().await)
            }
            CheckKind::Http | CheckKind::Page => {
                LineClaim::Shared(self.0.clone().read_owned().await)
            }
        }
    }
}

/// Longest this agent asks a lease to wait for work (the controller caps it too).
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(20);

/// How long a lease asks to wait, in the protocol's whole seconds: up to the next
/// heartbeat, rounded up (a heartbeat is at most a second late; rounded down, the last
/// second before each heartbeat would be spent asleep, not waiting at the controller,
/// and work planned then would wait for the next lease), and at most
/// [`MAX_LEASE_WAIT`].
pub fn lease_wait_s(until_beat: Duration) -> u32 {
    let whole = until_beat.min(MAX_LEASE_WAIT);
    (whole.as_secs() + u64::from(whole.subsec_nanos() > 0)) as u32
}

/// Leases as many tasks as there are free slots and starts them; returns how long to
/// wait before asking again. With no work, the lease waits at the controller for some
/// (a long poll, at most until the next heartbeat is due), so new work starts at once;
/// a controller that answered sooner than asked (one from before long polls) is asked
/// again only after the idle poll.
async fn lease_and_start(
    work: &Work<'_>,
    in_flight: &mut JoinSet<()>,
    settings: &AgentSettings,
    until_beat: Duration,
) -> Result<Duration, ClientError> {
    let Work {
        client,
        engine,
        spool,
        slots,
        gate,
        line,
    } = *work;
    let free = slots.available_permits() as u32;
    if free == 0 {
        return Ok(settings.idle_poll.min(Duration::from_millis(100)));
    }
    let wait = lease_wait_s(until_beat);
    let asked = tokio::time::Instant::now();
    let leased = client.lease(free, wait).await?;
    let got_work = !leased.tasks.is_empty() || !leased.traces.is_empty();
    for task in leased.traces {
        let (client, engine) = (client.clone(), engine.clone());
        // Not spooled: a trace is evidence for an incident now, worth nothing later.
        in_flight.spawn(async move {
            let report = trace::run(&engine, &task).await;
            tracing::info!(
                url = %task.url,
                hops = report.hops.len(),
                reached = report.reached,
                error = report.error.as_ref().map(|e| e.message.as_str()).unwrap_or(""),
                "path traced"
            );
            if let Err(e) = client.report_trace(&report).await {
                tracing::warn!(error = %e, "path trace report not delivered");
            }
        });
    }
    for task in leased.tasks {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Cannot happen (we asked for no more than were free), but never overcommit.
            break;
        };
        let (client, engine, spool) = (client.clone(), engine.clone(), spool.clone());
        let gate = gate.clone();
        let line = line.clone();
        let url = task.url.clone();
        let probe_bytes = task.udp.as_ref().map(|u| u.packet_bytes);
        in_flight.spawn(async move {
            let claim = line.claim(task.kind).await;
            let result = execute_on_own_thread(engine, task).await;
            drop(claim);
            log_measurement(&url, &result);
            drop(permit);
            if let Ok(mut g) = gate.lock() {
                g.record(
                    line_bytes(&result.measurement, probe_bytes),
                    chrono::Utc::now(),
                );
            }
            deliver(&client, &spool, result).await;
        });
    }
    Ok(if got_work {
        Duration::ZERO
    } else {
        settings.idle_poll.saturating_sub(asked.elapsed())
    })
}

/// Measures one task on a thread of its own with a single-threaded runtime, as
/// `lastmile-agent measure` does: on the agent's multi-threaded runtime hyper's connection
/// task and the body reader wake each other across worker threads, which the fidelity
/// bench measured as ~0.1 ms more connect and transfer time than curl. The number of
/// such threads is bounded by the agent's concurrency slots. If no thread or runtime
/// can be had, or the measurement thread died without a result, the task is measured
/// here rather than lost.
async fn execute_on_own_thread(engine: Engine, task: Task) -> ResultSubmission {
    let (done, result) = tokio::sync::oneshot::channel();
    let job = {
        let (engine, task) = (engine.clone(), task.clone());
        move || match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                let _ = done.send(runtime.block_on(execute(&engine, &task)));
            }
            Err(e) => tracing::warn!(error = %e, "no runtime for a measurement thread"),
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("measure".into())
        .spawn(job)
    {
        tracing::warn!(error = %e, "no measurement thread; measuring on the agent's runtime");
    }
    match result.await {
        Ok(submission) => submission,
        Err(_) => execute(&engine, &task).await,
    }
}

/// The bytes a measurement put through the volunteer's line, for the daily allowance:
/// what it fetched, and for a udp stream its probes of `probe_bytes` too (a metered
/// line counts both ways, and the probes went up whether or not any came back).
fn line_bytes(m: &Measurement, probe_bytes: Option<u32>) -> u64 {
    match (&m.udp, probe_bytes) {
        (Some(stream), Some(each)) => m.bytes + u64::from(stream.sent) * u64::from(each),
        _ => m.bytes,
    }
}

/// Measures one task.
pub async fn execute(engine: &Engine, task: &Task) -> ResultSubmission {
    let started_at = chrono::Utc::now();
    let expect = Expectations {
        status: task.expected_status.clone(),
        body_contains: task.body_contains.clone(),
        max_bytes: task.max_bytes,
        timeout: Duration::from_millis(task.timeout_ms),
        max_redirects: task.max_redirects,
    };
    let measurement = match task.kind {
        CheckKind::Http => engine.measure(&task.url, &expect).await,
        CheckKind::Page => {
            engine
                .measure_page(&task.url, &expect, PageLimits::default())
                .await
        }
        CheckKind::Throughput => {
            engine
                .measure_throughput(&task.url, &expect, task.throughput.unwrap_or_default())
                .await
        }
        CheckKind::Video => {
            engine
                .measure_video(&task.url, &expect, task.video.unwrap_or_default())
                .await
        }
        CheckKind::Udp => match &task.udp {
            Some(stream) => engine.measure_udp(&task.url, &expect, stream).await,
            // Without its stream the agent has no token to hold the reflector to.
            None => Measurement {
                error: Some(MeasurementError {
                    kind: ErrorKind::InvalidTask,
                    message: "a udp task without its stream".into(),
                }),
                ..Measurement::default()
            },
        },
    };
    ResultSubmission {
        assignment_id: task.assignment_id,
        started_at,
        measurement,
    }
}

/// One line per measurement at `info`: what was measured and how it went, so a
/// volunteer's log shows the agent working (it measures a few times an hour).
fn log_measurement(url: &str, result: &ResultSubmission) {
    let m = &result.measurement;
    let total_ms = m.timings_us.total as f64 / 1000.0;
    match &m.error {
        Some(e) => tracing::info!(
            %url, error = e.kind.as_str(), total_ms, assignment = %result.assignment_id,
            "measured: failed"
        ),
        None => tracing::info!(
            %url, status = m.status.unwrap_or(0), bytes = m.bytes, total_ms,
            assignment = %result.assignment_id, "measured"
        ),
    }
}

/// Spools a result, then submits it; it leaves the spool only once acknowledged.
async fn deliver(client: &ControllerClient, spool: &Spool, result: ResultSubmission) {
    if let Err(e) = spool.put(&result) {
        tracing::error!(error = %e, assignment = %result.assignment_id, "cannot spool result; sending it unspooled");
    }
    submit_from_spool(client, spool, &result).await;
}

async fn submit_from_spool(client: &ControllerClient, spool: &Spool, result: &ResultSubmission) {
    let answer = client.submit(result).await;
    settle(spool, result, answer);
}

/// What the controller's answer to a result means for the spool: acknowledged results
/// leave it, refused ones move to `rejected/`, the rest wait for the next attempt.
fn settle(spool: &Spool, result: &ResultSubmission, answer: Result<ResultAck, ClientError>) {
    match answer {
        Ok(ack) => {
            if let Err(e) = spool.remove(ack.assignment_id) {
                tracing::warn!(error = %e, "acknowledged result stays in the spool");
            }
        }
        Err(ClientError::Refused { status, body }) if crate::client::is_rejection(status) => {
            // The controller will never take it (e.g. an unknown assignment, a text it
            // refuses): retrying would go on forever, so it moves to `rejected/` with the
            // controller's answer, for a person to look at.
            let assignment = result.assignment_id;
            match spool.reject(result, status, &body) {
                Ok(Rejected::Kept { rejected }) => tracing::warn!(
                    %assignment, status, error = %body.error, message = %body.message,
                    rejected_total = rejected, folder = %spool.rejected_dir().display(),
                    "controller rejected result; moved it out of the spool"
                ),
                Ok(Rejected::Dropped) => tracing::warn!(
                    %assignment, status, error = %body.error, message = %body.message,
                    "controller rejected result; the rejected folder is full, so it is dropped"
                ),
                Err(e) => tracing::warn!(
                    %assignment, error = %e,
                    "controller rejected result; cannot move it out of the spool"
                ),
            }
        }
        Err(e) => {
            // Network trouble, 5xx, 401/408/429: a later attempt (after a backoff, or a new
            // token) may succeed, so it waits in the spool.
            tracing::warn!(error = %e, assignment = %result.assignment_id, "result kept in spool for later");
        }
    }
}

/// One result's outcome in a batch answer, as the answer a single submission gets.
fn outcome_answer(outcome: ResultOutcome) -> Result<ResultAck, ClientError> {
    match (outcome.disposition, outcome.error) {
        (Some(disposition), _) => Ok(ResultAck {
            assignment_id: outcome.assignment_id,
            disposition,
        }),
        (None, body) => Err(ClientError::Refused {
            status: outcome.status.unwrap_or(500),
            body: body.unwrap_or_else(|| ApiError {
                error: "unexpected_answer".into(),
                message: "the batch answer gave neither a disposition nor an error".into(),
            }),
        }),
    }
}

/// Delivers what the spool holds (after an outage or a restart): in batches of up to
/// `MAX_RESULTS_PER_BATCH` results, one request each. A batch refused as a whole (a
/// controller from before batches answers 404; one result the controller refuses
/// before reading the batch, such as a NUL in a text, makes the whole body a 422) is
/// sent one by one, so that each result gets its own answer. Stops at the first batch
/// that cannot be delivered (the controller is unreachable again): the rest waits in
/// the spool.
async fn flush_spool(client: ControllerClient, spool: Spool) {
    let pending = match spool.pending() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read spool");
            return;
        }
    };
    for batch in pending.chunks(MAX_RESULTS_PER_BATCH) {
        if let [result] = batch {
            submit_from_spool(&client, &spool, result).await;
            continue;
        }
        match client.submit_batch(batch).await {
            Ok(answer) if answer.results.len() == batch.len() => {
                tracing::info!(results = batch.len(), "delivered spooled results");
                for (result, outcome) in batch.iter().zip(answer.results) {
                    settle(&spool, result, outcome_answer(outcome));
                }
            }
            Err(e) if e.is_rejection() => {
                for result in batch {
                    submit_from_spool(&client, &spool, result).await;
                }
            }
            Ok(answer) => {
                tracing::warn!(
                    sent = batch.len(),
                    answered = answer.results.len(),
                    "the controller answered a different number of results; they stay in the spool"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, results = batch.len(), "spooled results kept for later");
                return;
            }
        }
    }
}

/// The default state directory for a volunteer's machine.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/lastmile-agent"))
        })
        .unwrap_or_else(|| PathBuf::from(".lastmile-agent"))
}

/// Parses an IP for `--source-addr`.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|e| format!("invalid IP address {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `claim` is granted within a short wait.
    async fn granted(line: &LineShare, kind: CheckKind) -> Option<LineClaim> {
        tokio::time::timeout(Duration::from_millis(50), line.claim(kind))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_throughput_load_or_a_video_session_has_the_line_to_itself() {
        let line = LineShare::default();
        // Fetches share the line.
        let fetch = granted(&line, CheckKind::Http)
            .await
            .expect("a first fetch");
        let page = granted(&line, CheckKind::Page)
            .await
            .expect("a fetch beside it");
        // A load waits for them; and once it waits, a new fetch waits behind it.
        let waiting_load = tokio::spawn({
            let line = line.clone();
            async move { line.claim(CheckKind::Throughput).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting_load.is_finished(),
            "the load started beside fetches"
        );
        assert!(
            granted(&line, CheckKind::Http).await.is_none(),
            "a fetch jumped the waiting load"
        );
        drop((fetch, page));
        let load = tokio::time::timeout(Duration::from_secs(5), waiting_load)
            .await
            .expect("the load starts once the fetches end")
            .unwrap();
        // Nothing starts beside the load, not even another load.
        assert!(granted(&line, CheckKind::Http).await.is_none());
        assert!(granted(&line, CheckKind::Throughput).await.is_none());
        drop(load);
        assert!(granted(&line, CheckKind::Http).await.is_some());

        // A video session waits for a fetch in flight, then has the line alone.
        let fetch = granted(&line, CheckKind::Http)
            .await
            .expect("a fetch on an idle line");
        assert!(
            granted(&line, CheckKind::Video).await.is_none(),
            "a session started beside a fetch"
        );
        drop(fetch);
        let video = granted(&line, CheckKind::Video)
            .await
            .expect("a session once the fetch ended");
        for kind in CheckKind::ALL {
            assert!(
                granted(&line, kind).await.is_none(),
                "{kind:?} started beside a video session"
            );
        }
        drop(video);
        assert!(granted(&line, CheckKind::Page).await.is_some());
    }

    #[test]
    fn a_udp_stream_counts_what_it_sent_against_the_allowance_too() {
        let fetch = Measurement {
            bytes: 5_000,
            ..Measurement::default()
        };
        assert_eq!(line_bytes(&fetch, None), 5_000);
        // 100 probes of 172 bytes sent, 90 echoed.
        let stream = Measurement {
            bytes: 90 * 172,
            udp: Some(lastmile_protocol::UdpSummary {
                sent: 100,
                received: 90,
                lost_up: 4,
                rtt_us: vec![40_000; 90],
            }),
            ..Measurement::default()
        };
        assert_eq!(line_bytes(&stream, Some(172)), 190 * 172);
        // A reflector that never echoes: the probes still went up the line.
        let unanswered = Measurement {
            bytes: 0,
            udp: Some(lastmile_protocol::UdpSummary {
                sent: 100,
                received: 0,
                lost_up: 0,
                rtt_us: vec![],
            }),
            ..Measurement::default()
        };
        assert_eq!(line_bytes(&unanswered, Some(172)), 100 * 172);
    }

    #[test]
    fn backoff_grows_with_failures_and_stays_capped() {
        let mut b = Backoff { failures: 0 };
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d >= Backoff::BASE && d <= Backoff::CAP, "{d:?}");
        }
        b.reset();
        // After a reset the first delay is at most twice the base again.
        assert!(b.next_delay() <= Backoff::BASE * 2);
    }

    #[test]
    fn a_lease_waits_until_the_heartbeat_rounded_up_and_at_most_twenty_seconds() {
        let ms = Duration::from_millis;
        // The last second before a heartbeat is spent waiting at the controller too.
        assert_eq!(lease_wait_s(ms(300)), 1);
        assert_eq!(lease_wait_s(ms(1_000)), 1);
        assert_eq!(lease_wait_s(ms(1_900)), 2);
        assert_eq!(lease_wait_s(ms(29_500)), 20);
        // Due now: the heartbeat goes first, the lease does not wait.
        assert_eq!(lease_wait_s(Duration::ZERO), 0);
    }
}
