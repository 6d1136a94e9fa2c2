//! Folding accepted results into aggregates and paying for them, in batches
//! (`lastmile_domain::ingest::fold_pending`), as group commit.
//!
//! A request that accepted results takes a ticket and waits for a fold pass that
//! started after its results were stored. Only one pass runs at a time on a replica:
//! requests that arrive while one runs wait for it, and the next pass folds all their
//! results at once. So under load each pass folds many results per aggregate write and
//! ledger posting, and an acknowledged result is already in its report when the agent
//! gets the answer. A background pass every `fold_interval_ms` folds what is left: results
//! queued by a replica that died, or by a request whose pass failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lastmile_domain::billing::RunTermsCache;
use lastmile_domain::ingest::{self, Folded, Handoff, FOLD_BATCH};
use lastmile_storage::Db;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Most batches one pass folds before it lets others run: a pass stays bounded even
/// when results arrive faster than they fold.
const MAX_BATCHES_PER_PASS: usize = 50;

/// The folder's bookkeeping on this replica.
#[derive(Debug, Default)]
pub struct Folder {
    /// Tickets handed out: one per request that queued results, taken after its
    /// transaction committed.
    issued: AtomicU64,
    /// Every ticket up to this one has been folded.
    folded_through: AtomicU64,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
    /// Results this replica accepted, handed over in memory (see `ingest::Handoff`).
    pub handoff: Arc<Handoff>,
    /// The terms of runs this replica has paid for (see `billing::RunTermsCache`).
    pub run_terms: Arc<RunTermsCache>,
}

impl Folder {
    /// A ticket for results that have just been queued (their transaction committed).
    pub fn ticket(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once the results queued before `ticket` was taken have been folded (by a
    /// pass this call runs or one that started after the ticket). A failed pass is
    /// logged and left to the background pass: the results are stored and queued, so
    /// nothing is lost, and the agent's answer does not depend on it.
    pub async fn settle(&self, db: &Db, metrics: &Metrics, ticket: u64) {
        if self.folded_through.load(Ordering::SeqCst) >= ticket {
            return;
        }
        let _pass = self.pass.lock().await;
        if self.folded_through.load(Ordering::SeqCst) >= ticket {
            return;
        }
        self.run_pass(db, metrics).await;
    }

    /// One pass, the caller holding the pass lock: folds batches until the queue is
    /// empty (or the bound is reached), then marks every ticket issued before it
    /// started.
    async fn run_pass(&self, db: &Db, metrics: &Metrics) {
        // Every ticket up to here belongs to a committed transaction, whose results
        // this pass will find queued.
        let through = self.issued.load(Ordering::SeqCst);
        for _ in 0..MAX_BATCHES_PER_PASS {
            let (handoff, run_terms) = (self.handoff.clone(), self.run_terms.clone());
            match db
                .run(move |c| ingest::fold_pending(c, FOLD_BATCH, Some(&handoff), Some(&run_terms)))
                .await
            {
                Ok(Folded {
                    results,
                    unpaid,
                    missing,
                }) => {
                    Metrics::add(&metrics.results_folded, results as u64);
                    Metrics::add(&metrics.results_unpaid, unpaid as u64);
                    Metrics::add(&metrics.results_missing, missing as u64);
                    // Fewer taken than a batch: the queue is empty.
                    if results + missing < FOLD_BATCH as usize {
                        self.folded_through.fetch_max(through, Ordering::SeqCst);
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "folding results failed; they stay queued for the next pass");
                    return;
                }
            }
        }
    }
}

/// Every `every`: a pass for whatever is still queued; a last one when stopped.
pub async fn fold_loop(
    folder: Arc<Folder>,
    db: Db,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let _pass = folder.pass.lock().await;
                folder.run_pass(&db, &metrics).await;
            }
        }
    }
    // What requests queued just before the stop.
    let _pass = folder.pass.lock().await;
    folder.run_pass(&db, &metrics).await;
}
