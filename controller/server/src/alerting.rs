//! The alert loop: judges alert rules every `alert_interval_ms`
//! (`incidents::evaluate`) and sends due deliveries every second or sooner
//! (`alert_delivery::deliver_due`), and expires path traces nobody reported
//! (`path_traces::expire`). Every replica runs it: rules are judged under their
//! row's lock and deliveries claimed with `SKIP LOCKED`, so they share the work.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::state::AppState;
use lastmile_domain::alert_delivery::{self, Sender};
use lastmile_domain::clock;
use lastmile_domain::incidents;
use lastmile_domain::path_traces;

pub async fn alert_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    if state.config.alert_interval_ms == 0 {
        return;
    }
    let judge_every = Duration::from_millis(state.config.alert_interval_ms);
    let tick = judge_every.min(Duration::from_secs(1));
    let sender = Sender {
        policy: state.config.site_fetch_policy(),
        mailer: state.mailer.clone(),
        retry_base_us: i64::try_from(state.config.alert_retry_ms.max(1))
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    };
    let mut judged_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        if judged_at.is_none_or(|t| t.elapsed() >= judge_every) {
            judged_at = Some(Instant::now());
            let judged = state
                .db
                .run(|c| {
                    let now = clock::now_us();
                    // Traces nobody reported in time go first: they are not waited for.
                    path_traces::expire(c, now)?;
                    incidents::evaluate(c, now)
                })
                .await;
            match judged {
                Ok(done) if done == incidents::Evaluated::default() => {}
                Ok(done) => tracing::info!(
                    opened = done.opened,
                    updated = done.updated,
                    resolved = done.resolved,
                    "incidents changed"
                ),
                Err(e) => tracing::warn!(error = %e, "alert pass failed"),
            }
        }
        // Work off what is due, a claim at a time, within the tick's bounds.
        for _ in 0..50 {
            match alert_delivery::deliver_due(&state.db, &sender).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "alert delivery pass failed");
                    break;
                }
            }
        }
    }
}
