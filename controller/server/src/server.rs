//! The controller as a service: shared state, the HTTP server and the scheduler loop,
//! started together and stopped together.
//!
//! [`run`] takes a bound listener and a shutdown future, so `main` passes Ctrl-C and a
//! test or the demo passes its own signal. [`Controller::start`] wraps that for
//! in-process use (tests, demo): it binds, starts, and hands back the address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Service;
use actix_web::{web, App, HttpServer};
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::config::ControllerConfig;
use crate::db::Db;
use crate::geo::Geo;
use crate::isp::{LogMailer, Mailer};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::scheduling::{self, SchedulingPolicy};
use crate::stripe_api::StripeApi;
use crate::{api, clock};

/// Everything a request handler or the scheduler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub geo: Arc<Geo>,
    pub config: Arc<ControllerConfig>,
    pub metrics: Arc<Metrics>,
    pub policy: SchedulingPolicy,
    /// Request quotas of ISP tokens.
    pub isp_quota: Arc<RateLimiter>,
    /// Dashboard sign-in attempts (guessing passwords is slow on purpose).
    pub sign_in_quota: Arc<RateLimiter>,
    /// Delivers ASN ownership codes.
    pub mailer: Arc<dyn Mailer>,
    /// Stripe's API, when a secret key is configured.
    pub stripe: Option<Arc<StripeApi>>,
    /// Agents' calibrations in progress, as this replica timed them.
    pub calibrations: Arc<crate::calibration_timing::Sessions>,
}

impl AppState {
    /// Opens the database (running migrations) and the geo databases. Blocking.
    pub fn open(config: ControllerConfig) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display())
        })?;
        let db = Db::open(&config.effective_database_url(), config.max_db_connections)?;
        let geo = Geo::open(&config.geo)?;
        let stripe = StripeApi::from_config(&config.stripe)?.map(Arc::new);
        Ok(AppState {
            stripe,
            db,
            geo: Arc::new(geo),
            policy: SchedulingPolicy::from_config(&config),
            isp_quota: Arc::new(RateLimiter::new(config.isp_requests_per_minute)),
            sign_in_quota: Arc::new(RateLimiter::new(config.sign_in_attempts_per_minute)),
            mailer: Arc::new(LogMailer),
            calibrations: Arc::default(),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
        })
    }
}

/// Serves the API on `listener` and runs the scheduler until `shutdown` resolves.
pub async fn run(
    listener: std::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max_body = state.config.max_body_bytes;
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        let metrics = app_state.metrics.clone();
        App::new()
            .app_data(web::Data::new(app_state.clone()))
            .wrap(tracing_actix())
            .wrap_fn(move |req, srv| {
                let metrics = metrics.clone();
                srv.call(req).map(move |res| {
                    if let Ok(r) = &res {
                        match r.status().as_u16() {
                            400..=499 => Metrics::inc(&metrics.http_errors_4xx),
                            500..=599 => Metrics::inc(&metrics.http_errors_5xx),
                            _ => {}
                        }
                    }
                    res
                })
            })
            .configure(crate::web::configure)
            .configure(|cfg| api::configure(cfg, max_body))
    })
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);

    let (stop_tx, stop_rx) = watch::channel(false);
    let payouts = tokio::spawn(payout_loop(state.clone(), stop_rx.clone()));
    let scheduler = tokio::spawn(scheduler_loop(state, stop_rx));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    handle.stop(true).await;
    let _ = scheduler.await;
    let _ = payouts.await;
    serving
        .await
        .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))?
}

fn tracing_actix() -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms").log_target("lastmile::http")
}

/// Every tick: expire overdue leases (re-offering them) and create runs of due checks.
async fn scheduler_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(state.config.scheduler_tick_ms.max(10));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let policy = state.policy;
        let outcome = state
            .db
            .run(move |c| {
                let now = clock::now_us();
                let expired = scheduling::expire(c, &policy, now)?;
                let runs = scheduling::run_due_checks(c, &policy, now)?;
                Ok::<_, crate::Error>((expired, runs.len()))
            })
            .await;
        match outcome {
            Ok((expired, runs)) => {
                for _ in 0..expired.expired_leases {
                    Metrics::inc(&state.metrics.leases_expired);
                }
                for _ in 0..runs {
                    Metrics::inc(&state.metrics.runs_created);
                }
                if expired.expired_leases > 0 || expired.abandoned > 0 {
                    tracing::info!(?expired, "leases expired");
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
        }
    }
}

/// Every `stripe.payout_interval_s` (when Stripe is configured): a payout pass. The
/// first pass waits one interval, so a restart does not pay out at once.
async fn payout_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(stripe) = state.stripe.clone() else {
        return;
    };
    if state.config.stripe.payout_interval_s == 0 {
        return;
    }
    let every = Duration::from_secs(state.config.stripe.payout_interval_s);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let threshold = crate::payouts::threshold(&state);
        match crate::payouts::run_pass(&state.db, &stripe, threshold).await {
            Ok(summary) => tracing::info!(?summary, "payout pass"),
            Err(e) => tracing::warn!(error = %e, "payout pass failed"),
        }
    }
}

/// A controller running inside this process (tests, demo).
pub struct Controller {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Controller {
    /// Opens the state and serves it on `listen` (use port 0 for any free port).
    pub async fn start(config: ControllerConfig, listen: SocketAddr) -> anyhow::Result<Controller> {
        let state = tokio::task::spawn_blocking(move || AppState::open(config)).await??;
        Controller::serve(state, listen).await
    }

    /// Serves an already opened state on `listen`.
    pub async fn serve(state: AppState, listen: SocketAddr) -> anyhow::Result<Controller> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, state.clone(), stopped.map(|_| ())));
        Ok(Controller {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The base URL of the API, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and the scheduler and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}
