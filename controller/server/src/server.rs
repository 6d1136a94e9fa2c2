//! The controller as a service: shared state, the HTTP server and the scheduler loop,
//! started together and stopped together.
//!
//! [`run`] takes a bound listener and a shutdown future, so `main` passes Ctrl-C and a
//! test or the demo passes its own signal. [`Controller::start`] wraps that for
//! in-process use (tests, demo): it binds, starts, and hands back the address.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::api;
use crate::config::ControllerConfig;
use crate::metrics::Metrics;
use crate::state::AppState;
use lastmile_domain::clock;
use lastmile_domain::scheduling;

/// Serves the API on `listener` (and the agent listener on `agent_listener`, from
/// [`bind_agent_listener`]) and runs the scheduler until `shutdown` resolves.
pub async fn run(
    listener: std::net::TcpListener,
    agent_listener: Option<std::net::TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_until(listener, agent_listener, state, Box::pin(shutdown)).await
}

/// Binds the agent listener when the config asks for one (`agent_listen`), and notes its
/// address in `state` (for the URL heartbeats name).
pub fn bind_agent_listener(state: &AppState) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(listen) = state.config.agent_listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen for agents on {listen}: {e}"))?;
    listener.set_nonblocking(true)?;
    let _ = state.agent_listener.set(listener.local_addr()?);
    Ok(Some(listener))
}

/// [`run`] for one type of shutdown future: the server (actix's app factory, the
/// middleware, every route) is compiled once, not again for each caller's future.
async fn serve_until(
    listener: std::net::TcpListener,
    agent_listener: Option<std::net::TcpListener>,
    state: AppState,
    shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>,
) -> std::io::Result<()> {
    let max_body = state.config.max_body_bytes;
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_state.clone()))
            .wrap(actix_web::middleware::from_fn(
                crate::access_log::log_and_count,
            ))
            .configure(crate::web::configure)
            .configure(|cfg| api::configure(cfg, max_body))
    })
    .disable_signals()
    .shutdown_timeout(5)
    .keep_alive(Duration::from_secs(state.config.keep_alive_s))
    .listen(listener)?
    .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);

    let (stop_tx, stop_rx) = watch::channel(false);
    let agents = match agent_listener {
        Some(listener) => Some(tokio::spawn(crate::agent_listener::serve(
            tokio::net::TcpListener::from_std(listener)?,
            state.clone(),
            stop_rx.clone(),
        ))),
        None => None,
    };
    let payouts = tokio::spawn(payout_loop(state.clone(), stop_rx.clone()));
    let presence = tokio::spawn(crate::agent_work::presence_loop(
        state.clone(),
        stop_rx.clone(),
    ));
    let folder = tokio::spawn(crate::folding::fold_loop(
        state.folder.clone(),
        state.db.clone(),
        state.metrics.clone(),
        Duration::from_millis(state.config.fold_interval_ms),
        stop_rx.clone(),
    ));
    let rollups = tokio::spawn(rollup_loop(state.clone(), stop_rx.clone()));
    let alerts = tokio::spawn(crate::alerting::alert_loop(state.clone(), stop_rx.clone()));
    let held_agents = state.presence.clone();
    let scheduler = tokio::spawn(scheduler_loop(state, stop_rx));

    shutdown.await;
    tracing::info!("shutting down");
    // Leases waiting for work answer now, so the graceful stop does not wait for them.
    held_agents.close();
    let _ = stop_tx.send(true);
    handle.stop(true).await;
    if let Some(agents) = agents {
        let _ = agents.await;
    }
    let _ = scheduler.await;
    let _ = payouts.await;
    let _ = rollups.await;
    let _ = alerts.await;
    // After the server stopped: results accepted last are folded.
    let _ = folder.await;
    // After the server stopped: the last heartbeats it took are written.
    let _ = presence.await;
    serving
        .await
        .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))?
}

/// Every tick: expire overdue leases (re-offering them), create runs of due checks and
/// settle the runs that are over (`run_history::settle`).
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
                let expired = scheduling::expire_backlog(
                    c,
                    &policy,
                    now,
                    scheduling::EXPIRY_BATCH,
                    scheduling::EXPIRY_PASSES_PER_TICK,
                )?;
                let runs = scheduling::run_due_checks(c, &policy, now)?;
                // Its own step: a failure to settle is logged, and the runs just
                // created are announced all the same.
                let settled = lastmile_domain::run_history::settle(c, now);
                Ok::<_, lastmile_domain::Error>((expired, runs, settled))
            })
            .await;
        match outcome {
            Ok((expired, runs, settled)) => {
                if let Err(e) = settled {
                    tracing::warn!(error = %e, "settling runs that are over failed");
                }
                for _ in 0..expired.expired_leases {
                    Metrics::inc(&state.metrics.leases_expired);
                }
                for _ in &runs {
                    Metrics::inc(&state.metrics.runs_created);
                }
                let ids = runs.iter().map(|r| r.id.to_string()).collect();
                crate::agent_work::announce_runs(&state, ids).await;
                if expired.expired_leases > 0 || expired.abandoned > 0 {
                    tracing::info!(?expired, "leases expired");
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
        }
    }
}

/// Every `rollup_interval_s`, the first time soon after start: rolls up the complete
/// days' hour cells into day cells (`rollups::roll_up`), creates the coming days'
/// results partitions and removes results past `result_retention_days`
/// (`retention::maintain`). 0 turns it off.
async fn rollup_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    if state.config.rollup_interval_s == 0 {
        return;
    }
    let every = Duration::from_secs(state.config.rollup_interval_s);
    let keep_days = Some(state.config.result_retention_days).filter(|d| *d > 0);
    let mut wait = Duration::from_secs(5).min(every);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = every;
        let rolled = state
            .db
            .run(|c| lastmile_domain::rollups::roll_up(c, clock::now_us()))
            .await;
        match rolled {
            Ok(0) => {}
            Ok(days) => tracing::info!(days, "rolled up days of hour cells"),
            Err(e) => tracing::warn!(error = %e, "rollup pass failed"),
        }
        let kept = state
            .db
            .run(move |c| lastmile_domain::retention::maintain(c, clock::now_us(), keep_days))
            .await;
        match kept {
            Ok((_, aged)) if aged == Default::default() => {}
            Ok((_, aged)) => tracing::info!(
                days_dropped = aged.days_dropped,
                results_deleted = aged.results_deleted,
                flags_deleted = aged.flags_deleted,
                runs_archived = aged.runs.runs_deleted + aged.runs.runs_kept,
                assignments_deleted = aged.runs.assignments_deleted,
                "raw results past retention removed"
            ),
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
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
        let threshold = lastmile_domain::payouts::threshold(&state.config.stripe);
        match lastmile_domain::payouts::run_pass(&state.db, &stripe, threshold).await {
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
        let agent_listener = bind_agent_listener(&state)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            listener,
            agent_listener,
            state.clone(),
            stopped.map(|_| ()),
        ));
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

    /// The agent listener's URL, when the config asked for one (`agent_listen`).
    pub fn agent_url(&self) -> Option<String> {
        self.state
            .agent_listener
            .get()
            .map(|a| format!("http://{a}"))
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
