//! Serving agents from memory: heartbeats, leases that wait for work, and the loop that
//! keeps [`Presence`] and the database in step.
//!
//! The rules are `lastmile_domain::presence`'s; this module adds what needs the runtime:
//! a lease that waits (a long poll, woken the moment work is planned for the agent),
//! and the presence loop, which every few seconds writes remembered heartbeats, every
//! couple of seconds reads agent rows changed elsewhere, and four times a second reads
//! the work planned since it last looked — by this replica, another one, or an
//! operator's command, so wake-ups cross replicas through the database they share —
//! and the path traces asked for since, and wakes the agents they are for.

use std::sync::Arc;
use std::time::Duration;

use lastmile_domain::agents::{self, Agent};
use lastmile_domain::check_lists::ChangeFeed;
use lastmile_domain::clock::{self, Micros};
use lastmile_domain::error::Error;
use lastmile_domain::path_traces;
use lastmile_domain::presence::{self, Beat};
use lastmile_domain::scheduling;
use lastmile_protocol::trace::TraceTask;
use lastmile_protocol::{Heartbeat, Location, Task};
use tokio::sync::watch;

use crate::state::AppState;

/// How often new work is looked for (the latency it adds to new work reaching an idle
/// agent).
const WORK_POLL: Duration = Duration::from_millis(250);

/// How often writes to checks made elsewhere are looked for (how far behind another
/// replica's write an owner's check list may be).
const CHECKS_POLL: Duration = Duration::from_secs(1);

/// Work planned this long before the last look is looked at again (controllers'
/// clocks, and transactions that committed after a later one).
const WORK_MARGIN_US: Micros = 5_000_000;

/// Wakes the agents the runs this replica just created planned, at once, so an agent
/// leasing right after "run now" answered finds the work (the work feed would within
/// [`WORK_POLL`]; each offer wakes an agent once either way).
pub async fn announce_runs(state: &AppState, run_ids: Vec<String>) {
    if run_ids.is_empty() {
        return;
    }
    match state
        .db
        .run(move |c| scheduling::offers(c, Micros::MIN, Some(&run_ids)))
        .await
    {
        Ok(offers) => state.presence.wake_for(offers),
        Err(e) => tracing::warn!(error = %e, "reading the agents of new runs failed"),
    }
}

/// Records a heartbeat: in memory when it changes nothing, else written through.
pub async fn heartbeat(
    state: &AppState,
    agent: &Agent,
    beat: Heartbeat,
    ip: std::net::IpAddr,
    location: Location,
) -> Result<(), Error> {
    let now = clock::now_us();
    let presence = &state.presence;
    match presence.beat(agent, &beat, ip, &location, now)? {
        Beat::Remembered => Ok(()),
        Beat::WriteThrough { previous } => {
            let (id, window) = (agent.id.clone(), state.policy.online_window_us);
            let row = state
                .db
                .run(move |c| {
                    agents::heartbeat(c, &id, &beat, ip, &location, window, previous, now)
                })
                .await?;
            presence.hold(row);
            Ok(())
        }
    }
}

/// Long polls end on a grid of this step: the ones ending within one step share one
/// timer wake-up of the worker thread instead of one each.
const LEASE_DEADLINE_STEP: Duration = Duration::from_millis(100);

/// `at`, moved back onto the [`LEASE_DEADLINE_STEP`] grid (so a waiting lease ends at
/// most one step before the time the agent asked for, never after it).
fn coalesced(at: tokio::time::Instant) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
    let since = at.saturating_duration_since(origin).as_micros();
    let step = LEASE_DEADLINE_STEP.as_micros();
    origin + Duration::from_micros((since - since % step) as u64)
}

/// What a lease hands an agent: measurement tasks and path traces.
#[derive(Debug, Default)]
pub struct Leased {
    pub tasks: Vec<Task>,
    pub traces: Vec<TraceTask>,
}

/// Leases up to `max` tasks, and the path traces asked of the agent. With neither for
/// the agent, waits up to `wait` for work to be planned for it. An agent a lease found
/// idle is answered from memory until woken; traces are looked for only when one may
/// wait ([`lastmile_domain::presence::Presence::take_traces_due`]), so an idle agent's
/// lease still costs no query.
pub async fn lease(
    state: &AppState,
    agent: Arc<Agent>,
    max: u32,
    wait: Duration,
) -> Result<Leased, Error> {
    if max == 0 {
        // Asks for nothing: there is nothing to wait for (a held answer would only tie
        // up the connection until `wait` ran out).
        return Ok(Leased::default());
    }
    let deadline = coalesced(tokio::time::Instant::now() + wait);
    // Only a lease that may wait can be abandoned while waiting, or find one that was.
    let number = (!wait.is_zero())
        .then(|| state.presence.begin_lease(&agent.id))
        .flatten();
    // Each round either leases from the database or waits for a wake-up; a wake-up
    // without work for this agent (another took it) comes round again, bounded.
    for round in 0..64 {
        if round > 0 && number.is_some_and(|n| !state.presence.is_newest_lease(&agent.id, n)) {
            // The agent leased again meanwhile, so nobody waits for this answer any
            // more (see `Presence::begin_lease`): it takes no work.
            return Ok(Leased::default());
        }
        let waker = state.presence.waker(&agent.id);
        let notified = waker.as_ref().map(|w| w.notified());
        tokio::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            // Registered before the idle check, so a wake-up between the check and the
            // wait is not lost.
            n.enable();
        }
        let idle = state.presence.is_idle(&agent.id, clock::now_us());
        let traces_due = agent.path_trace && state.presence.take_traces_due(&agent.id);
        if !idle || traces_due {
            let (policy, leasing) = (state.policy, agent.clone());
            let found = state
                .db
                .run(move |c| {
                    let now = clock::now_us();
                    let leased = if idle {
                        None
                    } else {
                        Some(scheduling::lease(c, &leasing, max, &policy, now)?)
                    };
                    let traces = if traces_due {
                        path_traces::lease(c, &leasing.id, now)?
                    } else {
                        Vec::new()
                    };
                    Ok::<_, Error>((leased, traces))
                })
                .await;
            let (leased, traces) = match found {
                Ok(found) => found,
                Err(e) => {
                    if traces_due {
                        state.presence.traces_still_due(&agent.id);
                    }
                    return Err(e);
                }
            };
            let mut answer = Leased {
                tasks: Vec::new(),
                traces,
            };
            let mut none_left = true;
            if let Some(leased) = leased {
                state
                    .presence
                    .leased(&agent.id, leased.none_left, clock::now_us());
                answer.tasks = leased.tasks;
                none_left = leased.none_left;
            }
            if !answer.tasks.is_empty() || !answer.traces.is_empty() || !none_left {
                return Ok(answer);
            }
        }
        // No wait asked (every agent from before long polls): answer now, without a
        // timer (tokio's are of 1 ms granularity: it would add a millisecond).
        let Some(notified) = notified.as_pin_mut().filter(|_| !wait.is_zero()) else {
            return Ok(Leased::default());
        };
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Leased::default());
        }
    }
    Ok(Leased::default())
}

/// Runs until `stop`: flushes remembered heartbeats every `presence_flush_ms` (and
/// once more when stopping), reads changed agent rows every `agent_refresh_ms`, wakes
/// the agents new work was planned for every [`WORK_POLL`], and forgets the owners'
/// check lists whose checks were written elsewhere every [`CHECKS_POLL`].
pub async fn presence_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let every = |ms: u64| {
        let mut i = tokio::time::interval(Duration::from_millis(ms.max(10)));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut flush = every(state.config.presence_flush_ms);
    let mut refresh = every(state.config.agent_refresh_ms);
    let mut work = every(WORK_POLL.as_millis() as u64);
    let mut feed = WorkFeed::new(clock::now_us());
    let mut checks = every(CHECKS_POLL.as_millis() as u64);
    let check_feed = Arc::new(std::sync::Mutex::new(ChangeFeed::new()));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = flush.tick() => flush_presence(&state).await,
            _ = refresh.tick() => {
                let presence = state.presence.clone();
                if let Err(e) = state.db.run(move |c| presence.refresh(c)).await {
                    tracing::warn!(error = %e, "reading changed agents failed");
                }
            }
            _ = work.tick() => feed.poll(&state).await,
            _ = checks.tick() => {
                let (feed, lists) = (check_feed.clone(), state.check_lists.clone());
                let looked = state
                    .db
                    .run(move |c| feed.lock().unwrap_or_else(|p| p.into_inner()).poll(c, &lists))
                    .await;
                if let Err(e) = looked {
                    tracing::warn!(error = %e, "reading changed checks failed");
                }
            }
        }
    }
    flush_presence(&state).await;
}

async fn flush_presence(state: &AppState) {
    let pending = state.presence.take_pending();
    if pending.is_empty() {
        return;
    }
    let written = pending.clone();
    if let Err(e) = state.db.run(move |c| presence::flush(c, &written)).await {
        tracing::warn!(error = %e, "writing heartbeats failed; kept for the next flush");
        state.presence.restore(pending);
    }
}

/// Revokes one of the volunteer's agents (`agents::revoke`) and refreshes this
/// replica's agents in the same call, so that this replica refuses the token at once;
/// the others at their next refresh. For the API and the dashboard alike.
pub async fn revoke(
    state: &AppState,
    volunteer_id: String,
    agent_id: String,
) -> Result<(), lastmile_domain::Error> {
    let presence = state.presence.clone();
    state
        .db
        .run(move |c| {
            agents::revoke(c, &volunteer_id, &agent_id)?;
            presence.refresh(c).map(|_| ())
        })
        .await
}

/// Where the work feed reads from: offers made at or after `since`.
struct WorkFeed {
    since: Micros,
}

impl WorkFeed {
    fn new(now: Micros) -> WorkFeed {
        WorkFeed {
            since: now - WORK_MARGIN_US,
        }
    }

    async fn poll(&mut self, state: &AppState) {
        let (since, now) = (self.since, clock::now_us());
        match state
            .db
            .run(move |c| {
                Ok::<_, Error>((
                    scheduling::offers(c, since, None)?,
                    path_traces::offers(c, since)?,
                ))
            })
            .await
        {
            Ok((offers, traces)) => {
                state.presence.wake_for(offers);
                state.presence.wake_for_traces(traces);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading new work failed");
                return;
            }
        }
        // Work committed more than the margin before this look has been seen.
        self.since = since.max(now - WORK_MARGIN_US);
        state.presence.forget_offers_before(self.since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_deadlines_share_a_grid_and_never_come_later() {
        let now = tokio::time::Instant::now();
        let step = LEASE_DEADLINE_STEP;
        let at = coalesced(now + Duration::from_secs(20));
        assert!(at <= now + Duration::from_secs(20));
        assert!(now + Duration::from_secs(20) - at < step);
        // Deadlines within one step of each other end together (one timer wake-up).
        let mut ends: Vec<_> = (0..10).map(|i| coalesced(at + step * i / 10)).collect();
        ends.dedup();
        assert_eq!(ends, vec![at], "on the grid: {at:?}");
        assert_eq!(coalesced(at + step), at + step);
    }
}
