//! Runs, assignments and leases.
//!
//! A **run** is one execution of a check. When it is created, its agents are chosen
//! from the online agents that match the check's selection ([`agent_choice`]: spread
//! over countries, networks and classes, least recently used by the check first) and
//! recorded as the run's planned agents (`run_agents`); it fans out into one **assignment**
//! per chosen agent, each `pending`. A planned agent may lease a pending assignment of
//! its run, but never two of the same run: `pending -> leased -> done | expired`. An
//! expired lease is re-offered as a new pending assignment (attempt + 1), up to
//! `max_attempts`, and the best eligible agent not yet in the run is planned in for it;
//! an assignment no planned agent came for within the offer window is offered to one
//! more agent the same way. Pending assignments still unfilled at the run's deadline
//! expire.
//!
//! **Architecture Invariant:** no assignment is ever leased to two agents. On
//! PostgreSQL the lease picks its row with `FOR UPDATE SKIP LOCKED`, so concurrent
//! agents each lock a different row; on SQLite the lease runs inside the single-writer
//! `BEGIN IMMEDIATE` transaction of [`write_tx`]. In both, the `UPDATE` re-checks
//! `state = 'pending'`, and a unique index on `(run_id, agent_id)` backs the
//! one-per-run rule.
//!
//! Open assignments (pending or leased) are found through `open_assignments`, which
//! holds their lookup columns again with the indexes of open work
//! ([`lastmile_storage::assignments`]): every change of an open assignment writes its
//! `assignments` row first, which takes its row lock, then its open row (inserted with
//! it, updated by the lease and the offer window, deleted when it closes).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use lastmile_protocol::{CheckKind, Task};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::agent_choice::{self, Census, Pool};
use crate::agents::Agent;
use crate::billing;
use crate::check_terms::{Selection, StoredCheck, TaskSpec};
use crate::clock::{to_datetime, Micros};
use crate::error::{Error, Result};
use lastmile_storage::checks::{self as check_records, Check};
use lastmile_storage::prepared::Prepared;
use lastmile_storage::schema::{
    assignments, checks as checks_t, open_assignments, run_agents, runs,
};
use lastmile_storage::{write_tx, DbConn};

/// Knobs of the scheduler, from the controller config.
#[derive(Debug, Clone, Copy)]
pub struct SchedulingPolicy {
    pub lease_us: Micros,
    pub online_window_us: Micros,
    pub max_attempts: i32,
    pub run_deadline_us: Micros,
    /// How long a pending assignment waits for its run's planned agents before one more
    /// agent is planned in for it.
    pub offer_us: Micros,
}

use lastmile_storage::assignments::in_state;
pub use lastmile_storage::assignments::{state, Assignment};
use lastmile_storage::runs::{RunRow, RunSettlement};

/// A run and how far it has got, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub check_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub deadline_at: DateTime<Utc>,
    /// Online agents that matched the selection when the run was created.
    pub eligible_agents: u32,
    /// Measurements asked for: `min(agents_per_run, eligible_agents)`.
    pub requested: u32,
    /// Measurements completed in time.
    pub done: u32,
    /// Slots waiting for an agent, or being measured now.
    pub pending: u32,
    pub leased: u32,
    /// Leases that ran out (each re-offered while attempts remain).
    pub expired: u32,
    /// Of `done`, results flagged by verification: stored, left out of reports and not
    /// charged.
    #[serde(default)]
    pub flagged: u32,
    /// True when nothing more will happen: every slot is done or given up, and every
    /// counted result is in the check's aggregates.
    pub finished: bool,
    /// Why the run measured nothing, when it cannot: `no_eligible_agents` (no online
    /// agent matched the selection when it was created; nothing was charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<RunProblem>,
}

/// Why a run measured nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunProblem {
    /// No online agent matched the check's selection and kind when the run was created.
    NoEligibleAgents,
}

/// How many agents a run of a `kind` check with `selection` created now could choose
/// from (see [`agent_choice`] for who is eligible).
pub fn count_eligible(
    conn: &mut DbConn,
    selection: &Selection,
    kind: CheckKind,
    policy: &SchedulingPolicy,
    now: Micros,
) -> Result<usize> {
    let pool = Pool {
        check_id: "",
        selection,
        kind,
        since: now - policy.online_window_us,
        run_id: None,
    };
    Ok(Census::take(conn, pool.since)?.count(&pool) as usize)
}

/// Creates a run of `check` now: chooses its agents and creates their pending
/// assignments, all in one transaction. Refused with [`Error::PaymentRequired`] (and
/// nothing written) when the owner's available credit cannot pay for every assignment
/// (`billing::admit_run`). The run keeps the task and the price it was admitted with:
/// its agents measure, and its results are paid, as admitted, whatever edits follow.
/// A run that finds no eligible agent is still recorded (so the owner sees it, with
/// [`RunProblem::NoEligibleAgents`]) but has no assignment and costs nothing.
pub fn create_run(
    conn: &mut DbConn,
    check: &Check,
    policy: &SchedulingPolicy,
    now: Micros,
) -> Result<RunView> {
    create_run_claiming(conn, check, policy, now, None, &mut None)?
        .ok_or_else(|| Error::Internal("a run without a claim was not made".into()))
}

/// [`create_run`], and with `claim: Some(next)` first, in the same transaction, the
/// scheduler's claim on the due check (its next run time moved on to `next`). `None`
/// (and nothing written) when the claim found the check already claimed. `census`: the
/// eligible agents counted at `now`, taken (in the run's transaction) when `None`, for
/// the next runs of the same pass to share.
fn create_run_claiming(
    conn: &mut DbConn,
    check: &Check,
    policy: &SchedulingPolicy,
    now: Micros,
    claim: Option<Option<Micros>>,
    census: &mut Option<Census>,
) -> Result<Option<RunView>> {
    let selection = check.selection();
    let spec = spec_of(conn, check)?;
    let task = serde_json::to_string(&spec)
        .map_err(|e| Error::Internal(format!("task of check {}: {e}", check.id)))?;
    let price = billing::price_of(check);
    let run_id = Uuid::new_v4().to_string();
    let made = write_tx(conn, |c| {
        if let Some(next) = claim {
            if !claim_slot(c, check, next)? {
                return Ok(false);
            }
        }
        let pool = Pool {
            check_id: &check.id,
            selection: &selection,
            kind: spec.kind,
            since: now - policy.online_window_us,
            run_id: None,
        };
        let census = taken(census, c, pool.since)?;
        let chosen = agent_choice::choose(c, census, &pool, u64::from(selection.agents_per_run))?;
        let requested = chosen.agents.len();
        billing::admit_run(c, &check.owner_id, price, requested as u32)?;
        if chosen.eligible == 0 {
            tracing::info!(check = %check.id, "run created with no eligible agent");
        }
        let run = RunRow {
            id: run_id.clone(),
            check_id: check.id.clone(),
            created_at: now,
            deadline_at: now + policy.run_deadline_us,
            eligible_agents: i32::try_from(chosen.eligible).unwrap_or(i32::MAX),
            requested: requested as i32,
            task: Some(task.clone()),
            price_minor: Some(price.minor),
            price_currency: Some(price.currency.to_string()),
        };
        diesel::insert_into(runs::table).values(&run).execute(c)?;
        // The plans, the rotation's marks and the slots a statement each for the run
        // (a statement per agent and slot was four round trips an agent: ~33 ms of
        // PostgreSQL's time for a run of 200 agents in `bench ingest`'s set-up).
        let plans: Vec<Plan> = chosen
            .agents
            .iter()
            .map(|agent| Plan::new(&run_id, run.deadline_at, agent))
            .collect();
        lastmile_storage::insert_rows!(c, run_agents::table, &plans);
        agent_choice::record_use(c, &check.id, &chosen, now)?;
        let slots: Vec<Assignment> = (0..requested)
            .map(|_| Assignment::new_pending(&run_id, &check.id, 1, now))
            .collect();
        lastmile_storage::assignments::insert_pending(c, &slots)?;
        Ok::<_, Error>(true)
    })?;
    if !made {
        return Ok(None);
    }
    run_view(conn, &run_id).map(Some)
}

/// The pass's census, taken now if this is the pass's first need of it.
fn taken<'a>(
    census: &'a mut Option<Census>,
    conn: &mut DbConn,
    since: Micros,
) -> Result<&'a Census> {
    Ok(match census {
        Some(taken) => taken,
        None => census.insert(Census::take(conn, since)?),
    })
}

/// An agent planned into a run, whose deadline it carries: it may lease one of the
/// run's pending assignments until then.
#[derive(Insertable)]
#[diesel(table_name = run_agents)]
struct Plan {
    run_id: String,
    agent_id: String,
    deadline_at: Micros,
}

impl Plan {
    fn new(run_id: &str, deadline_at: Micros, agent: &str) -> Plan {
        Plan {
            run_id: run_id.to_owned(),
            agent_id: agent.to_owned(),
            deadline_at,
        }
    }
}

/// Plans one more agent into the run for a slot `failed` (the agent that let a lease
/// expire, or a planned agent that never came) did not fill: the best eligible agent not
/// yet in the run, from `failed`'s group when it has one left. Returns the agent, if
/// any is eligible.
fn plan_replacement(
    conn: &mut DbConn,
    run_id: &str,
    failed: Option<&str>,
    policy: &SchedulingPolicy,
    now: Micros,
    census: &mut Option<Census>,
) -> Result<Option<String>> {
    let run: RunRow = runs::table
        .find(run_id)
        .select(RunRow::as_select())
        .first(conn)?;
    let check = check_records::get_any(conn, &run.check_id)?;
    let kind = match &run.task {
        Some(json) => {
            serde_json::from_str::<TaskSpec>(json)
                .map_err(|e| Error::Internal(format!("task of run {run_id}: {e}")))?
                .kind
        }
        None => check.check_kind()?,
    };
    let selection = check.selection();
    let pool = Pool {
        check_id: &check.id,
        selection: &selection,
        kind,
        since: now - policy.online_window_us,
        run_id: Some(run_id),
    };
    let census = taken(census, conn, pool.since)?;
    let found = agent_choice::replacement(conn, census, &pool, failed)?;
    let Some(agent) = found.agents.first() else {
        return Ok(None);
    };
    diesel::insert_into(run_agents::table)
        .values(&Plan::new(run_id, run.deadline_at, agent))
        .execute(conn)?;
    agent_choice::record_use(conn, &check.id, &found, now)?;
    Ok(Some(agent.clone()))
}

/// Moves a due check's next run time on to `next` if it is still the time `check` was
/// read with (no other controller replica claimed it); returns whether this claimed it.
fn claim_slot(conn: &mut DbConn, check: &Check, next: Option<Micros>) -> Result<bool> {
    let claimed = diesel::update(checks_t::table.find(&check.id))
        .filter(checks_t::next_run_at.eq(check.next_run_at))
        .set(checks_t::next_run_at.eq(next))
        .execute(conn)?;
    Ok(claimed == 1)
}

/// The owner's run with this id and its progress.
pub fn get_run(conn: &mut DbConn, owner_id: &str, check_id: &str, run_id: &str) -> Result<RunView> {
    check_records::get(conn, owner_id, check_id)?;
    let view = run_view(conn, run_id)?;
    if view.check_id.to_string() != check_id {
        return Err(Error::NotFound {
            what: "run",
            code: "run_not_found",
        });
    }
    Ok(view)
}

/// The check's most recent runs, newest first.
pub fn list_runs(
    conn: &mut DbConn,
    owner_id: &str,
    check_id: &str,
    limit: i64,
) -> Result<Vec<RunView>> {
    check_records::get(conn, owner_id, check_id)?;
    let ids: Vec<String> = runs::table
        .filter(runs::check_id.eq(check_id))
        .order(runs::created_at.desc())
        .limit(limit)
        .select(runs::id)
        .load(conn)?;
    ids.iter().map(|id| run_view(conn, id)).collect()
}

fn run_view(conn: &mut DbConn, run_id: &str) -> Result<RunView> {
    let (run, settled): (RunRow, RunSettlement) = runs::table
        .find(run_id)
        .select((RunRow::as_select(), RunSettlement::as_select()))
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound {
            what: "run",
            code: "run_not_found",
        })?;
    let view = |done: i64, pending, leased, expired: i64, flagged: i64, finished| RunView {
        id: run.id.parse().unwrap_or_default(),
        check_id: run.check_id.parse().unwrap_or_default(),
        created_at: to_datetime(run.created_at),
        deadline_at: to_datetime(run.deadline_at),
        eligible_agents: run.eligible_agents.max(0) as u32,
        requested: run.requested.max(0) as u32,
        done: done.max(0) as u32,
        pending,
        leased,
        expired: expired.max(0) as u32,
        flagged: flagged.max(0) as u32,
        finished,
        problem: (run.eligible_agents == 0).then_some(RunProblem::NoEligibleAgents),
    };
    // A settled run's counts are on the run (its assignments and results may be gone).
    if let RunSettlement {
        settled_at: Some(_),
        settled_done: Some(done),
        settled_expired: Some(expired),
        settled_flagged: Some(flagged),
    } = settled
    {
        return Ok(view(
            done.into(),
            0,
            0,
            expired.into(),
            flagged.into(),
            true,
        ));
    }
    let states: Vec<(String, i64)> = assignments::table
        .filter(assignments::run_id.eq(run_id))
        .group_by(assignments::state)
        .select((assignments::state, diesel::dsl::count_star()))
        .load(conn)?;
    // Pending and leased are the open rows; an assignment closed by its result keeps
    // `leased` in `assignments` without one (see `lastmile_storage::assignments`). By
    // check and run: the index of open work by check (`open_assignments_check`).
    let open: Vec<(String, i64)> = open_assignments::table
        .filter(open_assignments::check_id.eq(&run.check_id))
        .filter(open_assignments::run_id.eq(run_id))
        .group_by(open_assignments::state)
        .select((open_assignments::state, diesel::dsl::count_star()))
        .load(conn)?;
    let count = |s: &str| count_in(&states, s);
    let (pending, leased) = (
        count_in(&open, state::PENDING),
        count_in(&open, state::LEASED),
    );
    let done = count(state::DONE) + count(state::LEASED).saturating_sub(leased);
    // A run is finished once its results are in its report: none still being folded.
    let folding = lastmile_storage::fold_queue::queued_in_run(conn, run_id)?;
    let flagged = crate::verification::flagged_in_run(conn, run_id)?;
    Ok(view(
        done.into(),
        pending,
        leased,
        count(state::EXPIRED).into(),
        flagged,
        pending == 0 && leased == 0 && folding == 0,
    ))
}

/// The count of state `s` among `(state, count)` rows, 0 if it has none.
fn count_in(states: &[(String, i64)], s: &str) -> u32 {
    states
        .iter()
        .find(|(name, _)| name == s)
        .map_or(0, |(_, n)| u32::try_from(*n).unwrap_or(u32::MAX))
}

/// The check's latest run, if it has had one.
pub fn latest_run(conn: &mut DbConn, check_id: &str) -> Result<Option<RunView>> {
    let id: Option<String> = runs::table
        .filter(runs::check_id.eq(check_id))
        .order((runs::created_at.desc(), runs::id.desc()))
        .select(runs::id)
        .first(conn)
        .optional()?;
    id.map(|id| run_view(conn, &id)).transpose()
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: String,
}

/// Leases up to `max` assignments to `agent`, never more than its free concurrency
/// and never two of one run. Each lease is its own short transaction.
pub fn lease(
    conn: &mut DbConn,
    agent: &Agent,
    max: u32,
    policy: &SchedulingPolicy,
    now: Micros,
) -> Result<Leased> {
    let busy = leases_in_flight(conn, &agent.id, now)?;
    let free = if agent.paused_reason.is_some() {
        0
    } else {
        (i64::from(agent.max_concurrent) - busy).max(0)
    };
    let want = i64::from(max.min(64)).min(free);
    let expires = now + policy.lease_us;
    let mut tasks = Vec::new();
    let mut none_left = false;
    for _ in 0..want {
        match write_tx(conn, |c| lease_one(c, &agent.id, now, expires)) {
            Ok(Some(id)) => tasks.push(task_for(conn, &id)?),
            Ok(None) => {
                none_left = true;
                break;
            }
            // The same agent leasing concurrently from two connections: the unique
            // (run, agent) index refused the second pick. What it already has stands.
            Err(Error::Conflict { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Leased { tasks, none_left })
}

/// What a lease handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub tasks: Vec<Task>,
    /// The agent had room for more and no pending assignment was left for it: until new
    /// work is planned for it, asking again finds nothing.
    pub none_left: bool,
}

/// New work, as agents see it: each agent planned into a run that has a pending
/// assignment created at or after `since` (and, given `runs`, in one of them), with the
/// newest such assignment's creation time (a re-offer is newer than the run's first
/// offers, so it wakes the run's agents again). Whoever created it (this controller,
/// another replica, an operator's command), its agents can be woken from this.
///
/// Two queries: the runs with new pending work (by the index of pending work, or
/// the runs' keys), then their planned agents. One join would pair every pending
/// assignment of a run with every agent planned into it: assignments x agents rows per
/// run (40,000 for a run of 200 slots over 200 agents) before `DISTINCT`.
pub fn offers(
    conn: &mut DbConn,
    since: Micros,
    runs: Option<&[String]>,
) -> Result<Vec<(String, Micros)>> {
    let mut pending = open_assignments::table
        .filter(in_state(state::PENDING))
        .filter(open_assignments::created_at.ge(since))
        .group_by(open_assignments::run_id)
        .select((
            open_assignments::run_id,
            diesel::dsl::max(open_assignments::created_at),
        ))
        .into_boxed();
    if let Some(runs) = runs {
        pending = pending.filter(open_assignments::run_id.eq_any(runs));
    }
    let newest: HashMap<String, Micros> = pending
        .load::<(String, Option<Micros>)>(conn)?
        .into_iter()
        .filter_map(|(run, at)| Some((run, at?)))
        .collect();
    let run_ids: Vec<&String> = newest.keys().collect();
    let mut offers = Vec::new();
    for chunk in run_ids.chunks(lastmile_storage::agents::BATCH_ROWS) {
        let planned: Vec<(String, String)> = run_agents::table
            .filter(run_agents::run_id.eq_any(chunk))
            .select((run_agents::run_id, run_agents::agent_id))
            .load(conn)?;
        offers.extend(
            planned
                .into_iter()
                .map(|(run, agent)| (agent, newest[&run])),
        );
    }
    offers.sort_unstable();
    offers.dedup();
    Ok(offers)
}

/// How many of the agent's leases have not run out at `now`, through the index of
/// leases by agent ([`in_state`]: the state written into the statement).
fn leases_in_flight(conn: &mut DbConn, agent_id: &str, now: Micros) -> Result<i64> {
    Ok(Prepared(
        open_assignments::table
            .filter(open_assignments::agent_id.eq(agent_id))
            .filter(in_state(state::LEASED))
            .filter(open_assignments::lease_expires_at.gt(now))
            .count(),
    )
    .get_result(conn)?)
}

/// Leases the oldest pending assignment this agent may take; returns its id.
///
/// Two steps. First the runs it may take a slot of, oldest pending slot first: live
/// runs it is planned into (its live plans: an index range by agent and deadline, kept
/// apart by `OFFSET 0` so that no plan starts from all the network's pending work
/// instead; SQLite keeps the `CROSS JOIN`s' order) and has not had an assignment in
/// (whatever became of it), each run's oldest pending slot one probe of the index of
/// pending work by run. Then, run after run, the first of its pending slots in offer
/// order that no other transaction holds (PostgreSQL skips those a lease, a close or an
/// expiry holds; SQLite has one writer, so none can be), read lazily through that index.
/// As one statement ordered over every candidate slot, a lease read and sorted every
/// pending slot of the agent's live runs: a run of n slots leased by its n agents cost
/// n²/2 slot reads, 2.4 ms of PostgreSQL's time a lease with 40 live runs of 200 in
/// `bench ingest --lease` (`SchedulingPolicy` one hour). SQLite reads `$1` as a
/// parameter too: one SQL text for both.
fn lease_one(
    conn: &mut DbConn,
    agent_id: &str,
    now: Micros,
    expires: Micros,
) -> Result<Option<String>> {
    let (fence, lock) = match conn {
        DbConn::Pg(_) => ("OFFSET 0", "FOR UPDATE OF a SKIP LOCKED"),
        DbConn::Sqlite(_) => ("", ""),
    };
    let runs: Vec<IdRow> = diesel::sql_query(format!(
        "SELECT c.id FROM (\
           SELECT r.id, (SELECT o.created_at FROM open_assignments o \
               WHERE o.run_id = r.id AND o.state = 'pending' \
               ORDER BY o.created_at LIMIT 1) AS oldest \
           FROM (SELECT ra.run_id FROM run_agents ra \
             WHERE ra.agent_id = $1 AND ra.deadline_at > $2 \
               AND NOT EXISTS (SELECT 1 FROM assignments b \
                 WHERE b.run_id = ra.run_id AND b.agent_id = $1) {fence}) live \
           CROSS JOIN runs r \
           WHERE r.id = live.run_id AND r.deadline_at > $2) c \
         WHERE c.oldest IS NOT NULL \
         ORDER BY c.oldest, c.id"
    ))
    .bind::<Text, _>(agent_id)
    .bind::<BigInt, _>(now)
    .load(conn)?;
    let take = format!(
        "UPDATE assignments SET state = 'leased', agent_id = $1, leased_at = $2, lease_expires_at = $3 \
         WHERE id = (\
           SELECT a.id FROM open_assignments o CROSS JOIN assignments a \
           WHERE o.run_id = $4 AND o.state = 'pending' \
             AND a.id = o.assignment_id AND a.state = 'pending' \
           ORDER BY o.created_at LIMIT 1 {lock}) \
         AND state = 'pending' \
         RETURNING id"
    );
    for run in runs {
        let taken: Vec<IdRow> = Prepared(
            diesel::sql_query(&take)
                .bind::<Text, _>(agent_id)
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(expires)
                .bind::<Text, _>(&run.id),
        )
        .load(conn)?;
        let Some(IdRow { id }) = taken.into_iter().next() else {
            continue;
        };
        let open = || {
            diesel::update(open_assignments::table.find(&id)).set((
                open_assignments::state.eq(state::LEASED),
                open_assignments::agent_id.eq(agent_id),
                open_assignments::lease_expires_at.eq(expires),
            ))
        };
        match conn {
            // Kept prepared, which diesel does for an `UPDATE` only if it is loaded
            // from (`execute` asks the statement itself, and an `UPDATE` says no).
            DbConn::Pg(c) => {
                Prepared(open().returning(open_assignments::assignment_id))
                    .get_results::<String>(c)?;
            }
            DbConn::Sqlite(c) => {
                open().execute(c)?;
            }
        }
        return Ok(Some(id));
    }
    Ok(None)
}

/// The task `check` describes now. A udp check's carries its site's token, read only for
/// that kind.
fn spec_of(conn: &mut DbConn, check: &Check) -> Result<TaskSpec> {
    let token = match check.check_kind()? {
        CheckKind::Udp => lastmile_storage::sites::token_of(conn, &check.site_id)?,
        _ => String::new(),
    };
    TaskSpec::of_check(check, &token)
}

/// The task of a leased assignment: its run's task as admitted.
fn task_for(conn: &mut DbConn, assignment_id: &str) -> Result<Task> {
    let (a, frozen): (Assignment, Option<String>) = assignments::table
        .inner_join(runs::table)
        .filter(assignments::id.eq(assignment_id))
        .select((Assignment::as_select(), runs::task))
        .first(conn)?;
    let spec = match frozen {
        Some(json) => serde_json::from_str::<TaskSpec>(&json)
            .map_err(|e| Error::Internal(format!("task of run {}: {e}", a.run_id)))?,
        None => {
            let check = check_records::get_any(conn, &a.check_id)?;
            spec_of(conn, &check)?
        }
    };
    Ok(Task {
        assignment_id: a.id.parse().unwrap_or_default(),
        check_id: a.check_id.parse().unwrap_or_default(),
        run_id: a.run_id.parse().unwrap_or_default(),
        kind: spec.kind,
        url: spec.url,
        expected_status: spec.expected_status,
        max_bytes: spec.max_bytes,
        body_contains: spec.body_contains,
        timeout_ms: spec.timeout_ms,
        max_redirects: spec.max_redirects,
        lease_expires_at: to_datetime(a.lease_expires_at.unwrap_or_default()),
        throughput: spec.throughput,
        video: spec.video,
        udp: spec.udp,
    })
}

/// What one expiry pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryOutcome {
    /// Leases that ran out.
    pub expired_leases: u32,
    /// New pending assignments created for them.
    pub reoffered: u32,
    /// Pending assignments given up at their run's deadline.
    pub abandoned: u32,
    /// Pending assignments no planned agent came for within the offer window, offered to
    /// one more agent.
    pub unclaimed: u32,
    /// Whether the (last) pass stopped at its bound: more may be waiting.
    pub full: bool,
}

impl ExpiryOutcome {
    /// This pass's counts added to `self`'s, and its `full`.
    fn then(self, pass: ExpiryOutcome) -> ExpiryOutcome {
        ExpiryOutcome {
            expired_leases: self.expired_leases + pass.expired_leases,
            reoffered: self.reoffered + pass.reoffered,
            abandoned: self.abandoned + pass.abandoned,
            unclaimed: self.unclaimed + pass.unclaimed,
            full: pass.full,
        }
    }
}

/// Leases an expiry pass expires at most, and pending assignments it offers anew at
/// most: each costs a few statements (the re-offer plans a replacement agent), and a
/// mass expiry (a network's agents gone at once) must not become one transaction of
/// tens of thousands of statements holding its rows' locks, with late results of those
/// assignments waiting on them. The rest, oldest first, is the next pass's: right
/// after, in the same scheduler tick, while passes come back full
/// ([`expire_backlog`]), else the next tick's.
pub const EXPIRY_BATCH: i64 = 500;

/// Expires leases that ran out, re-offering each while attempts remain (with the best
/// remaining agent planned in for it), offers pending assignments that waited out the
/// offer window to one more agent, and gives up pending assignments of runs past their
/// deadline; at most [`EXPIRY_BATCH`] of the first two, oldest first.
pub fn expire(conn: &mut DbConn, policy: &SchedulingPolicy, now: Micros) -> Result<ExpiryOutcome> {
    expire_at_most(conn, policy, now, EXPIRY_BATCH)
}

/// Passes a scheduler tick runs at most while each takes a full batch: a backlog of up
/// to 20 x [`EXPIRY_BATCH`] leases (10k, a network's agents gone at once) is cleared in
/// one tick instead of twenty, a transaction of at most a batch each.
pub const EXPIRY_PASSES_PER_TICK: u32 = 20;

/// [`expire`] pass after pass, each its own transaction, while the last one took a full
/// batch: at most `passes` passes of at most `max` each. Returns what they did together.
pub fn expire_backlog(
    conn: &mut DbConn,
    policy: &SchedulingPolicy,
    now: Micros,
    max: i64,
    passes: u32,
) -> Result<ExpiryOutcome> {
    let mut outcome = ExpiryOutcome::default();
    for _ in 0..passes {
        outcome = outcome.then(expire_at_most(conn, policy, now, max)?);
        if !outcome.full {
            break;
        }
    }
    Ok(outcome)
}

/// [`expire`] with at most `max` leases expired and `max` pending assignments offered
/// anew (the oldest lease deadlines and offers first).
pub fn expire_at_most(
    conn: &mut DbConn,
    policy: &SchedulingPolicy,
    now: Micros,
    max: i64,
) -> Result<ExpiryOutcome> {
    // The overdue leases, by the index of leases by deadline, each locked with its open
    // row, which a result's close deletes (PostgreSQL skips one a result is closing right
    // now, and a result's close that comes after finds no open row; SQLite has one
    // writer).
    let lock = match conn {
        DbConn::Pg(_) => "FOR UPDATE OF o, a SKIP LOCKED",
        DbConn::Sqlite(_) => "",
    };
    let overdue_sql = format!(
        "SELECT a.* FROM open_assignments o CROSS JOIN assignments a \
         WHERE o.state = 'leased' AND o.lease_expires_at < $1 \
           AND a.id = o.assignment_id AND a.state = 'leased' \
         ORDER BY o.lease_expires_at, o.assignment_id LIMIT $2 {lock}"
    );
    write_tx(conn, |c| {
        let overdue: Vec<Assignment> = diesel::sql_query(&overdue_sql)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(max)
            .load(c)?;
        let mut outcome = ExpiryOutcome {
            full: overdue.len() as i64 >= max,
            ..ExpiryOutcome::default()
        };
        let mut census = None;
        let mut expired = Vec::with_capacity(overdue.len());
        for a in overdue {
            let changed = diesel::update(assignments::table.find(&a.id))
                .filter(assignments::state.eq(state::LEASED))
                .set(assignments::state.eq(state::EXPIRED))
                .execute(c)?;
            if changed == 0 {
                continue;
            }
            expired.push(a.id.clone());
            outcome.expired_leases += 1;
            let deadline: i64 = runs::table
                .find(&a.run_id)
                .select(runs::deadline_at)
                .first(c)?;
            if a.attempt < policy.max_attempts && deadline > now {
                lastmile_storage::assignments::insert_pending(
                    c,
                    &[Assignment::new_pending(
                        &a.run_id,
                        &a.check_id,
                        a.attempt + 1,
                        now,
                    )],
                )?;
                // Whoever else the run planned has, or had, an assignment of its own.
                plan_replacement(
                    c,
                    &a.run_id,
                    a.agent_id.as_deref(),
                    policy,
                    now,
                    &mut census,
                )?;
                outcome.reoffered += 1;
            }
        }
        lastmile_storage::assignments::forget_open(c, &expired)?;
        outcome.unclaimed = offer_unclaimed(c, policy, now, max, &mut census)?;
        outcome.full |= i64::from(outcome.unclaimed) >= max;
        outcome.abandoned = abandon_past_deadline(c, now)?;
        Ok(outcome)
    })
}

/// Gives up the pending assignments of runs past their deadline; returns how many.
/// Three steps, each the size of the work pending, never of the history: the runs
/// with pending assignments (the open-assignments index), which of them are past their
/// deadline (by key), then their pending assignments (by run). As one statement with
/// `run_id IN (runs past their deadline)`, the planner was free to read every run ever
/// made (`runs` has no index on its deadline) every pass.
fn abandon_past_deadline(conn: &mut DbConn, now: Micros) -> Result<u32> {
    let with_pending: Vec<String> = open_assignments::table
        .filter(in_state(state::PENDING))
        .select(open_assignments::run_id)
        .distinct()
        .load(conn)?;
    let mut abandoned = 0;
    for chunk in with_pending.chunks(lastmile_storage::agents::KEYS_PER_LOOKUP) {
        let past: Vec<String> = runs::table
            .filter(runs::id.eq_any(chunk))
            .filter(runs::deadline_at.le(now))
            .select(runs::id)
            .load(conn)?;
        if past.is_empty() {
            continue;
        }
        let pending: Vec<String> = open_assignments::table
            .filter(in_state(state::PENDING))
            .filter(open_assignments::run_id.eq_any(&past))
            .select(open_assignments::assignment_id)
            .load(conn)?;
        // Only those still pending once locked: a lease that took one just before the
        // deadline keeps it.
        let give_up = || {
            diesel::update(
                assignments::table
                    .filter(assignments::id.eq_any(&pending))
                    .filter(assignments::state.eq(state::PENDING)),
            )
            .set(assignments::state.eq(state::EXPIRED))
        };
        let given_up: Vec<String> = match conn {
            DbConn::Pg(c) => give_up().returning(assignments::id).get_results(c)?,
            DbConn::Sqlite(c) => give_up().returning(assignments::id).get_results(c)?,
        };
        lastmile_storage::assignments::forget_open(conn, &given_up)?;
        abandoned += given_up.len();
    }
    Ok(u32::try_from(abandoned).unwrap_or(u32::MAX))
}

/// Pending assignments of live runs that waited out the offer window (their planned
/// agents went offline, or stayed busy): each gets one more planned agent, from the
/// group of a planned agent that never came when it can, and is offered anew (its
/// offer time moves to now, which wakes the run's agents and starts a new window).
fn offer_unclaimed(
    conn: &mut DbConn,
    policy: &SchedulingPolicy,
    now: Micros,
    max: i64,
    census: &mut Option<Census>,
) -> Result<u32> {
    let waited: Vec<(String, String)> = open_assignments::table
        .inner_join(runs::table)
        .filter(in_state(state::PENDING))
        .filter(open_assignments::created_at.lt(now - policy.offer_us))
        .filter(runs::deadline_at.gt(now))
        .order((
            open_assignments::created_at,
            open_assignments::assignment_id,
        ))
        .limit(max)
        .select((open_assignments::assignment_id, open_assignments::run_id))
        .load(conn)?;
    let mut by_run: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, run_id) in &waited {
        by_run.entry(run_id).or_default().push(id);
    }
    for (run_id, ids) in by_run {
        // The planned agents that never came, one for each slot: each slot's new agent
        // comes from its own absentee's group.
        let absent: Vec<String> = run_agents::table
            .filter(run_agents::run_id.eq(run_id))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                assignments::table
                    .filter(assignments::run_id.eq(run_id))
                    .filter(assignments::agent_id.eq(run_agents::agent_id.nullable())),
            )))
            .select(run_agents::agent_id)
            .order(run_agents::agent_id)
            .load(conn)?;
        for (i, id) in ids.into_iter().enumerate() {
            plan_replacement(
                conn,
                run_id,
                absent.get(i).map(String::as_str),
                policy,
                now,
                census,
            )?;
            let still_pending = diesel::update(assignments::table.find(id))
                .filter(assignments::state.eq(state::PENDING))
                .set(assignments::created_at.eq(now))
                .execute(conn)?;
            if still_pending > 0 {
                diesel::update(open_assignments::table.find(id))
                    .set(open_assignments::created_at.eq(now))
                    .execute(conn)?;
            }
        }
    }
    Ok(waited.len() as u32)
}

/// Creates a run for every scheduled check that is due, and moves its next run time on.
/// Returns the runs created.
pub fn run_due_checks(
    conn: &mut DbConn,
    policy: &SchedulingPolicy,
    now: Micros,
) -> Result<Vec<RunView>> {
    let due: Vec<Check> = checks_t::table
        .filter(checks_t::next_run_at.le(now))
        .filter(checks_t::paused_at.is_null())
        .filter(checks_t::deleted_at.is_null())
        .select(Check::as_select())
        .load(conn)?;
    let mut created = Vec::new();
    // The eligible agents are counted once for all of the pass's runs.
    let mut census = None;
    for check in due {
        // The claim is made in the run's own transaction: two controller replicas never
        // both run a check (only the one whose update matched the old time goes on), and
        // a controller that dies midway leaves the check due, not claimed without a run.
        let next = check.interval_s.map(|s| now + s * 1_000_000);
        match create_run_claiming(conn, &check, policy, now, Some(next), &mut census) {
            Ok(Some(run)) => created.push(run),
            Ok(None) => {}
            // One owner out of credit must not hold up everyone else's checks, nor be
            // tried again at every tick: the run is skipped until the check's next time.
            Err(Error::PaymentRequired { message, .. }) => {
                claim_slot(conn, &check, next)?;
                tracing::warn!(check = %check.id, %message, "scheduled run skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}
