//! How each of an owner's checks is doing, at a glance (the checks list): its state
//! from the last run and open incidents, the last 24 hours' availability, and the SLA
//! verdict of its objectives over those 24 hours.
//!
//! Per check: its latest run and that run's failures (two indexed reads), and the
//! report over the last 24 hours (hour cells, merged without decoding); open incidents
//! are counted for all the checks in one query. An owner with 50 checks costs about 150
//! small reads, on a page an owner opens by hand.

use std::collections::HashMap;

use chrono::Duration;
use diesel::prelude::*;

use crate::check_terms::StoredCheck;
use crate::clock::{to_datetime, Micros};
use crate::error::Result;
use crate::reports::ReportQuery;
use crate::scheduling::{self, RunProblem, RunView};
use lastmile_storage::checks::Check;
use lastmile_storage::schema::{incidents, results};
use lastmile_storage::DbConn;

/// A check's state, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// An alert rule's incident is open.
    Incident,
    /// Every result of the last run failed.
    Down,
    /// Some results of the last run failed.
    Degraded,
    /// The last run found no eligible agent.
    NoAgents,
    /// The last run succeeded everywhere.
    Ok,
    /// Paused, and nothing above applies.
    Paused,
    /// No run has measured anything yet.
    NoData,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Incident => "incident",
            State::Down => "down",
            State::Degraded => "degraded",
            State::NoAgents => "no agents",
            State::Ok => "ok",
            State::Paused => "paused",
            State::NoData => "no data",
        }
    }
}

/// The objectives' verdict over the last 24 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sla {
    /// The check has no objectives.
    None,
    /// No results in the window to judge.
    NoData,
    /// Every objective met.
    Met,
    /// An objective breached, but its interval still reaches the good side.
    AtRisk,
    /// An objective breached by its whole interval.
    Breached,
}

impl Sla {
    pub fn as_str(self) -> &'static str {
        match self {
            Sla::None => "no objectives",
            Sla::NoData => "no data",
            Sla::Met => "met",
            Sla::AtRisk => "at risk",
            Sla::Breached => "breached",
        }
    }
}

/// One check at a glance.
#[derive(Debug, Clone)]
pub struct Health {
    pub state: State,
    pub open_incidents: i64,
    pub last_run: Option<RunView>,
    /// Of the last run's counted results, how many failed.
    pub last_run_failed: i64,
    /// Successes / measurements over the last 24 hours, and the measurements.
    pub availability_24h: Option<(f64, u64)>,
    pub sla_24h: Sla,
}

/// The health of each of `checks` (in their order) as of `now`.
pub fn of_checks(conn: &mut DbConn, checks: &[Check], now: Micros) -> Result<Vec<Health>> {
    let ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
    let open: HashMap<String, i64> = incidents::table
        .filter(incidents::check_id.eq_any(&ids))
        .filter(incidents::resolved_at.is_null())
        .group_by(incidents::check_id)
        .select((incidents::check_id, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect();
    checks
        .iter()
        .map(|check| {
            let last_run = scheduling::latest_run(conn, &check.id)?;
            let last_run_failed = match &last_run {
                Some(run) => results::table
                    .filter(results::run_id.eq(run.id.to_string()))
                    .filter(results::late.eq(false))
                    .filter(results::flagged.eq(false))
                    .filter(results::error_kind.is_not_null())
                    .filter(results::received_at.ge(crate::clock::to_us(run.created_at)))
                    .count()
                    .get_result(conn)?,
                None => 0,
            };
            let (availability_24h, sla_24h) = last_day(conn, check, now)?;
            let open_incidents = open.get(&check.id).copied().unwrap_or(0);
            let state = if open_incidents > 0 {
                State::Incident
            } else {
                match &last_run {
                    Some(run) if run.problem == Some(RunProblem::NoEligibleAgents) => {
                        State::NoAgents
                    }
                    Some(run) if run.done > 0 && last_run_failed >= i64::from(run.done) => {
                        State::Down
                    }
                    Some(run) if run.done > 0 && last_run_failed > 0 => State::Degraded,
                    _ if check.paused_at.is_some() => State::Paused,
                    Some(run) if run.done > 0 => State::Ok,
                    _ => State::NoData,
                }
            };
            Ok(Health {
                state,
                open_incidents,
                last_run,
                last_run_failed,
                availability_24h,
                sla_24h,
            })
        })
        .collect()
}

/// The last 24 hours' availability and objectives' verdict, from the check's report by
/// connection class (so objectives for one class are judged on its row).
fn last_day(conn: &mut DbConn, check: &Check, now: Micros) -> Result<(Option<(f64, u64)>, Sla)> {
    let to = to_datetime(now);
    let report = crate::reports::build(
        conn,
        check,
        &ReportQuery {
            from: to - Duration::hours(24),
            to,
            group_by: vec![crate::reports::Dimension::ConnectionClass],
            confidence: Default::default(),
            histograms: false,
            bucket: None,
            compare: false,
        },
    )?;
    let samples: u64 = report.rows.iter().map(|r| r.samples).sum();
    let successes: u64 = report.rows.iter().map(|r| r.successes).sum();
    let availability = (samples > 0).then(|| (successes as f64 / samples as f64, samples));
    let outcomes: Vec<_> = report.rows.iter().flat_map(|r| &r.objectives).collect();
    let sla = if check.objectives().is_empty() {
        Sla::None
    } else if outcomes
        .iter()
        .any(|o| o.met == Some(false) && o.conclusive == Some(true))
    {
        Sla::Breached
    } else if outcomes.iter().any(|o| o.met == Some(false)) {
        Sla::AtRisk
    } else if outcomes.iter().any(|o| o.met == Some(true)) {
        Sla::Met
    } else {
        Sla::NoData
    };
    Ok((availability, sla))
}
