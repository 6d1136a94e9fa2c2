//! The volunteers' leaderboard: points for time online and for work done.
//!
//! # Points
//!
//! For a period (this week, from Monday 00:00 UTC; or all time), per volunteer, over all
//! their agents:
//!
//! ```text
//! points = 10 per hour online                 (agent_uptime, from heartbeats)
//!        +  1 per accepted measurement        (results that were not late)
//!        +  1 per 10 s spent measuring        (sum of those results' total time)
//! ```
//!
//! The work terms are read from `agent_work_days` (per agent and UTC day the result was
//! received on), which [`add_work`] adds to in the transaction that folds the results:
//! the leaderboard costs O(agents × days), not O(results), and stays the same when raw
//! results age out (`retention`).
//!
//! Each term is rounded down on the volunteer's totals. Time online rewards keeping a
//! probe available (the network needs standby capacity); measurements reward work; time
//! spent measuring rewards slow lines, whose measurements cost the volunteer more. Late
//! results were not counted in reports and earn nothing here either; nor do results
//! flagged by `verification` (kept for operators, not counted, not paid).

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write;
use utoipa::ToSchema;

use crate::clock::{to_datetime, to_us};
use crate::error::{Error, Result};
use crate::rollups::DAY_US;
use lastmile_storage::results::StoredResult;
use lastmile_storage::schema::{agent_uptime, agent_work_days, agents, volunteers};
use lastmile_storage::DbConn;

/// Which stretch of time a leaderboard covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// The current ISO week, from Monday 00:00 UTC.
    Week,
    AllTime,
}

impl std::str::FromStr for Period {
    type Err = Error;
    fn from_str(s: &str) -> Result<Period> {
        match s {
            "week" => Ok(Period::Week),
            "all_time" | "all" => Ok(Period::AllTime),
            other => Err(Error::invalid(
                "invalid_period",
                format!("period must be week or all_time, not {other:?}"),
            )),
        }
    }
}

/// One volunteer's place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    /// 1 for the most points; volunteers with equal points share a rank.
    pub rank: u32,
    /// The volunteer's display name.
    pub volunteer: String,
    /// Kept inside the controller (the dashboard finds a volunteer's own place by it);
    /// never served: the public board names volunteers, it does not identify them.
    #[serde(skip)]
    pub volunteer_id: String,
    pub points: u64,
    pub online_hours: f64,
    pub measurements: u64,
    pub measuring_seconds: u64,
}

/// A leaderboard as the API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Leaderboard {
    pub period: Period,
    /// Start of the period (absent for all time).
    pub from: Option<DateTime<Utc>>,
    pub entries: Vec<Entry>,
}

/// Points for these totals (see the module's formula).
pub fn points(online_seconds: u64, measurements: u64, measuring_us: u64) -> u64 {
    online_seconds * 10 / 3600 + measurements + measuring_us / 10_000_000
}

/// Monday 00:00 UTC of the week `now` is in.
pub fn week_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let monday = now.date_naive() - Duration::days(i64::from(now.weekday().num_days_from_monday()));
    Utc.from_utc_datetime(&monday.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// Adds counted results (folded: neither late nor flagged) to their agents' per-day
/// tallies, inside the caller's fold transaction.
pub fn add_work<'a>(
    conn: &mut DbConn,
    counted: impl IntoIterator<Item = &'a StoredResult>,
) -> Result<()> {
    // (agent, day) -> (results, measuring µs, last received)
    let mut days: std::collections::BTreeMap<(&str, i64), (i64, i64, i64)> = Default::default();
    for r in counted {
        let t = days
            .entry((&r.agent_id, r.received_at.div_euclid(DAY_US)))
            .or_default();
        t.0 += 1;
        t.1 += r.total_us.max(0);
        t.2 = t.2.max(r.received_at);
    }
    // One statement per chunk, not one per agent: a fold batch of 2,000 results from
    // 2,000 agents (the usual case at scale: an agent sends one result every few
    // minutes) is one or two round trips. The values are ids read from the database and
    // integers; ids are quoted all the same.
    let rows: Vec<String> = days
        .into_iter()
        .map(|((agent, day), (n, us, last))| {
            format!(
                "('{}', {day}, {n}, {us}, {last})",
                agent.replace('\'', "''")
            )
        })
        .collect();
    for chunk in rows.chunks(500) {
        diesel::sql_query(format!(
            "INSERT INTO agent_work_days (agent_id, day, results, measuring_us, last_at) \
             VALUES {} ON CONFLICT (agent_id, day) DO UPDATE SET \
             results = agent_work_days.results + excluded.results, \
             measuring_us = agent_work_days.measuring_us + excluded.measuring_us, \
             last_at = CASE WHEN excluded.last_at > agent_work_days.last_at \
                       THEN excluded.last_at ELSE agent_work_days.last_at END",
            chunk.join(", ")
        ))
        .execute(conn)?;
    }
    Ok(())
}

/// The leaderboard for `period` as of `now`.
pub fn build(conn: &mut DbConn, period: Period, now: DateTime<Utc>) -> Result<Leaderboard> {
    let from = match period {
        Period::Week => Some(week_start(now)),
        Period::AllTime => None,
    };
    let since_day = from.map_or(i64::MIN, |f| to_us(f).div_euclid(DAY_US));

    let owner_of: HashMap<String, String> = agents::table
        .select((agents::id, agents::volunteer_id))
        .load::<(String, String)>(conn)?
        .into_iter()
        .collect();
    let names: HashMap<String, String> = volunteers::table
        .select((volunteers::id, volunteers::name))
        .load::<(String, String)>(conn)?
        .into_iter()
        .collect();

    // (online seconds, measurements, measuring µs) per volunteer.
    let mut totals: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    let uptime: Vec<(String, i64)> = agent_uptime::table
        .filter(agent_uptime::day.ge(since_day))
        .select((agent_uptime::agent_id, agent_uptime::seconds))
        .load(conn)?;
    for (agent, seconds) in &uptime {
        if let Some(v) = owner_of.get(agent) {
            totals.entry(v).or_default().0 += seconds.max(&0).unsigned_abs();
        }
    }
    let work: Vec<(String, i64, i64)> = agent_work_days::table
        .filter(agent_work_days::day.ge(since_day))
        .select((
            agent_work_days::agent_id,
            agent_work_days::results,
            agent_work_days::measuring_us,
        ))
        .load(conn)?;
    for (agent, n, us) in &work {
        if let Some(v) = owner_of.get(agent) {
            let t = totals.entry(v).or_default();
            t.1 += n.max(&0).unsigned_abs();
            t.2 += us.max(&0).unsigned_abs();
        }
    }

    let mut entries: Vec<Entry> = totals
        .into_iter()
        .map(|(v, (online, n, us))| Entry {
            rank: 0,
            volunteer: names.get(v).cloned().unwrap_or_default(),
            volunteer_id: v.to_owned(),
            points: points(online, n, us),
            online_hours: (online as f64 / 360.0).round() / 10.0,
            measurements: n,
            measuring_seconds: us / 1_000_000,
        })
        .filter(|e| e.points > 0)
        .collect();
    entries.sort_by(|a, b| {
        b.points
            .cmp(&a.points)
            .then_with(|| a.volunteer.cmp(&b.volunteer))
    });
    // Competition ranking: equal points share a rank, the next rank skips (1, 2, 2, 4).
    for i in 0..entries.len() {
        entries[i].rank = if i > 0 && entries[i].points == entries[i - 1].points {
            entries[i - 1].rank
        } else {
            i as u32 + 1
        };
    }
    Ok(Leaderboard {
        period,
        from: from.map(|f| to_datetime(to_us(f))),
        entries,
    })
}

/// A volunteer's place on `board`, if they have any points in its period.
pub fn standing<'a>(board: &'a Leaderboard, volunteer_id: &str) -> Option<&'a Entry> {
    board
        .entries
        .iter()
        .find(|e| e.volunteer_id == volunteer_id)
}

/// The leaderboard as CSV, one volunteer per line.
pub fn to_csv(board: &Leaderboard) -> String {
    let mut out =
        String::from("rank,volunteer,points,online_hours,measurements,measuring_seconds\n");
    for e in &board.entries {
        let name = if e.volunteer.contains([',', '"', '\n']) {
            format!("\"{}\"", e.volunteer.replace('"', "\"\""))
        } else {
            e.volunteer.clone()
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            e.rank, name, e.points, e.online_hours, e.measurements, e.measuring_seconds
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_the_documented_formula() {
        // An hour online, nothing measured.
        assert_eq!(points(3600, 0, 0), 10);
        // Six minutes online is one point; less is none.
        assert_eq!(points(360, 0, 0), 1);
        assert_eq!(points(359, 0, 0), 0);
        // 30 measurements taking 1.4 s each (dial-up): 30 + 4 points.
        assert_eq!(points(0, 30, 30 * 1_400_000), 34);
        assert_eq!(points(7200, 30, 30 * 1_400_000), 54);
    }

    #[test]
    fn weeks_start_on_monday_midnight_utc() {
        // 2026-11-25 is a Wednesday.
        let wed = Utc.with_ymd_and_hms(2026, 11, 25, 15, 30, 0).unwrap();
        assert_eq!(
            week_start(wed),
            Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()
        );
        let mon = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        assert_eq!(week_start(mon), mon);
    }

    #[test]
    fn csv_quotes_names_that_need_it() {
        let board = Leaderboard {
            period: Period::AllTime,
            from: None,
            entries: vec![Entry {
                rank: 1,
                volunteer: "Ada, \"the\" first".into(),
                volunteer_id: "v1".into(),
                points: 12,
                online_hours: 1.2,
                measurements: 0,
                measuring_seconds: 0,
            }],
        };
        assert_eq!(
            to_csv(&board),
            "rank,volunteer,points,online_hours,measurements,measuring_seconds\n\"Ada, \"\"the\"\" first\",12,1.2,0,0\n"
                .replace("\n\"Ada", "\n1,\"Ada")
        );
    }
}
