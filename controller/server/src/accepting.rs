//! Accepting agents' results in batches (`lastmile_domain::ingest::accept_many`), as
//! group commit.
//!
//! Agents send a result when it is measured, mostly one a request, and every accept
//! transaction pays the same fixed price whatever it carries: locking the assignments,
//! looking for earlier results, closing the assignments, queueing the fold, the commit
//! (about 3 ms of CPU a request, PostgreSQL's and the controller's, against ~0.16 ms a
//! result). So a request
//! queues its results here and waits for its answer; a request that finds a writer free
//! takes everything queued (up to [`MAX_RESULTS_PER_BATCH`]) and writes it in one
//! transaction on a task of its own, and requests that arrive meanwhile queue for the
//! next one. An idle controller writes each request at once; a busy one writes many per
//! transaction. Each request is still judged and answered as it would be alone
//! (`accept_many` judges them one after the other in the transaction).
//!
//! The writer runs on its own task, not in the request that started it: a request whose
//! client went away must not take the other requests' answers with it. A request whose
//! client went away while it was still queued is written with the next batch (its
//! answer dropped), like one whose client hung up mid-transaction: the agent sends it
//! again and is answered as for any repeated submission.

use std::sync::{Arc, Mutex};

use lastmile_domain::agents;
use lastmile_domain::error::Error;
use lastmile_domain::ingest::{self, Handoff, Request, Submitted};
use lastmile_protocol::ResultSubmission;
use lastmile_storage::{Db, DbConn};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Results one transaction carries at most (whole requests; one request of up to 100
/// always fits): long enough to share its fixed cost, short enough that it holds its
/// assignments' locks for tens of milliseconds, not seconds.
pub const MAX_RESULTS_PER_BATCH: usize = 500;

/// Batches written at once on a replica: one is between statements (in the
/// controller, or committing) while the other runs in the database. Measured on 2 cores
/// (`bench ingest`, PostgreSQL): 2 writers 10,340 results/s with 50 a request and 1,106
/// with one a request from 64 connections, 4 writers 8,826 and 1,137; more writers only
/// make the batches smaller.
const WRITERS: usize = 2;

/// What one request is answered: each result's outcome, or why the whole request was
/// refused.
pub type Answer = Result<Vec<Result<Submitted, Error>>, Error>;

/// A request waiting to be written.
struct Pending {
    agent_id: String,
    results: Vec<ResultSubmission>,
    answer: oneshot::Sender<Answer>,
}

/// The requests waiting on this replica, and the writers free to take them.
pub struct Acceptor {
    queue: Mutex<Vec<Pending>>,
    writers: Arc<Semaphore>,
}

impl Default for Acceptor {
    fn default() -> Self {
        Acceptor {
            queue: Mutex::new(Vec::new()),
            writers: Arc::new(Semaphore::new(WRITERS)),
        }
    }
}

impl Acceptor {
    /// Accepts `results` from the agent `agent_id`, in a batch with whatever other
    /// requests are waiting, and returns once they are committed (or refused).
    pub async fn accept(
        &self,
        db: &Db,
        metrics: &Arc<Metrics>,
        handoff: &Arc<Handoff>,
        agent_id: String,
        results: Vec<ResultSubmission>,
    ) -> Answer {
        let (answer, mut answered) = oneshot::channel();
        self.lock().push(Pending {
            agent_id,
            results,
            answer,
        });
        loop {
            tokio::select! {
                biased;
                answer = &mut answered => return answer.unwrap_or_else(|_| Err(lost())),
                permit = self.writers.clone().acquire_owned() => {
                    let Ok(permit) = permit else {
                        return Err(lost());
                    };
                    let batch = self.take();
                    if batch.is_empty() {
                        // Another writer took this request: it answers.
                        drop(permit);
                        return answered.await.unwrap_or_else(|_| Err(lost()));
                    }
                    tokio::spawn(write(
                        db.clone(),
                        metrics.clone(),
                        handoff.clone(),
                        batch,
                        permit,
                    ));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        // A panic while the queue was held left it whole (pushes and drains only).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The oldest waiting requests, up to [`MAX_RESULTS_PER_BATCH`] results (at least
    /// one request).
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        let mut results = 0;
        let n = queue
            .iter()
            .take_while(|p| {
                results += p.results.len();
                results <= MAX_RESULTS_PER_BATCH
            })
            .count()
            .max(1)
            .min(queue.len());
        queue.drain(..n).collect()
    }
}

fn lost() -> Error {
    Error::Internal("the batch carrying this request stopped before answering".into())
}

/// Writes one batch and answers its requests.
async fn write(
    db: Db,
    metrics: Arc<Metrics>,
    handoff: Arc<Handoff>,
    batch: Vec<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    let (requests, answers): (Vec<(String, Vec<ResultSubmission>)>, Vec<_>) = batch
        .into_iter()
        .map(|p| ((p.agent_id, p.results), p.answer))
        .unzip();
    let n = requests.len();
    Metrics::inc(&metrics.result_batches);
    Metrics::add(&metrics.result_requests, n as u64);
    let outcomes = db
        .run(move |c| Ok::<_, Error>(write_batch(c, &requests, &handoff)))
        .await;
    let outcomes: Vec<Answer> = match outcomes {
        Ok(outcomes) => outcomes,
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    };
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        // The request may have gone (its client hung up): its results stay stored.
        let _ = answer.send(outcome);
    }
}

/// The batch in one transaction; if the database fails it (a deadlock, a lost
/// connection), each request alone, so that one request's trouble is its own. The
/// results it queues are handed to this replica's folder in memory.
fn write_batch(
    c: &mut DbConn,
    requests: &[(String, Vec<ResultSubmission>)],
    handoff: &Handoff,
) -> Vec<Answer> {
    // The results are judged and paid on the agents' rows as stored now, not as this
    // replica holds them in memory (a calibration written elsewhere reaches memory only
    // with the next refresh).
    let ids: Vec<&str> = requests.iter().map(|(id, _)| id.as_str()).collect();
    let agents = match agents::get_many(c, &ids) {
        Ok(agents) => agents,
        Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
    };
    let requests: Vec<Result<Request<'_>, Error>> = requests
        .iter()
        .map(|(id, subs)| match agents.get(id) {
            Some(agent) => Ok(Request { agent, subs }),
            None => Err(Error::NotFound {
                what: "agent",
                code: "agent_not_found",
            }),
        })
        .collect();
    let known: Vec<Request<'_>> = requests.iter().flatten().copied().collect();
    let outcomes = match ingest::accept_many(c, &known, Some(handoff)) {
        Ok(outcomes) => outcomes,
        Err(e) if known.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::warn!(error = %e, requests = known.len(), "a batch of results failed; writing its requests one by one");
            known
                .iter()
                .map(|r| ingest::accept(c, r.agent, r.subs))
                .collect()
        }
    };
    let mut outcomes = outcomes.into_iter();
    requests
        .into_iter()
        .map(|request| request.and_then(|_| outcomes.next().unwrap_or_else(|| Err(lost()))))
        .collect()
}
