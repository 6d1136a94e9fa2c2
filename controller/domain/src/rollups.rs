//! Day and week cells: the hour cells of a complete UTC day, and the day cells of a
//! week, merged per (country, region, ASN, class), so that a report over 30 days merges
//! a few cells per group (its weeks, the days at its ends, today's hours) instead of 720.
//!
//! Hour cells are folded by the time a result was received, so a day's hour cells stop
//! changing once the day is over and no result received during it is still queued for
//! folding. [`roll_up`] then merges them into a day cell (`rollup_cells`, `span_us` one
//! day), and, when that completes a week (weeks are 7-day spans from the Unix epoch),
//! the week's day cells into a week cell, and moves the check's
//! `aggregate_rollups.rolled_until` past the day, in one transaction that holds that
//! row's lock: a span is rolled up once, whichever replica gets there first, and a
//! reader sees either the finer cells or the coarser one, never both. Finer cells stay
//! (hourly and daily charts, the edges of a window). The complete quarter days
//! ([`QUARTER_US`]) after the rolled-up days are rolled up too, in order, under the
//! same lock (`quarters_until`), so that today costs a report four cells a group, not
//! one an hour; they go once their day is rolled up and the next one too. [`cells`] is
//! how reports read.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use lastmile_protocol::Phase;

use crate::clock::{Micros, HOUR_US};
use crate::error::{Error, Result};
use crate::figures::FigureMergers;
use crate::histogram;
use lastmile_storage::aggregates::{self as cells_store, AggregateRow};
use lastmile_storage::schema::{aggregate_rollups, aggregates, fold_queue};
use lastmile_storage::{write_tx, DbConn};

/// One UTC day, microseconds.
pub const DAY_US: Micros = 24 * HOUR_US;

/// Seven days from the Unix epoch (a Thursday): a week cell's span.
pub const WEEK_US: Micros = 7 * DAY_US;

/// Six hours: a quarter cell's span. Today's complete quarters are rolled up so that a
/// report reads at most four cells a group for today's first 18 hours and the hours
/// since, not one per hour (today's hours were most of a 30-day report's cells late in
/// the day).
pub const QUARTER_US: Micros = 6 * HOUR_US;

/// Most quarters one pass rolls up per check.
const QUARTERS_PER_PASS: usize = 8;

/// The longest cells a reader may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Span {
    Hour,
    Day,
    Week,
}

/// How long after its end a day is rolled up at the earliest: results received just
/// before midnight are folded within seconds; an hour leaves room for a slow pass.
pub const GRACE_US: Micros = HOUR_US;

/// Most days one pass rolls up per check (a long backlog is worked off over passes).
const DAYS_PER_PASS: usize = 62;

/// The start of the UTC day holding `us`.
pub fn day_start(us: Micros) -> Micros {
    us.div_euclid(DAY_US) * DAY_US
}

/// The start of the quarter day (see [`QUARTER_US`]) holding `us`.
pub fn quarter_start(us: Micros) -> Micros {
    us.div_euclid(QUARTER_US) * QUARTER_US
}

/// The start of the week (see [`WEEK_US`]) holding `us`.
pub fn week_start(us: Micros) -> Micros {
    us.div_euclid(WEEK_US) * WEEK_US
}

/// Every span (of the length `start` rounds to) before this is complete: over for
/// [`GRACE_US`], and none of its results still waiting in the fold queue.
fn complete_until(conn: &mut DbConn, now: Micros, start: fn(Micros) -> Micros) -> Result<Micros> {
    let oldest_queued: Option<Micros> = fold_queue::table
        .select(diesel::dsl::min(fold_queue::queued_at))
        .first(conn)?;
    let until = start(now - GRACE_US);
    Ok(oldest_queued.map_or(until, |q| until.min(start(q))))
}

#[derive(QueryableByName)]
struct Pending {
    #[diesel(sql_type = Text)]
    check_id: String,
    #[diesel(sql_type = BigInt)]
    first: i64,
}

/// Rolls up the complete days not rolled up yet, of every check, then the complete
/// quarters of the days not rolled up; returns how many days.
pub fn roll_up(conn: &mut DbConn, now: Micros) -> Result<u32> {
    let rolled = roll_up_days(conn, now)?;
    roll_up_quarters(conn, now)?;
    Ok(rolled)
}

fn roll_up_days(conn: &mut DbConn, now: Micros) -> Result<u32> {
    let complete = complete_until(conn, now, day_start)?;
    let pending: Vec<Pending> = diesel::sql_query(
        "SELECT a.check_id AS check_id, MIN(a.bucket_start) AS first FROM aggregates a \
         LEFT JOIN aggregate_rollups r ON r.check_id = a.check_id \
         WHERE a.bucket_start < $1 AND a.bucket_start >= COALESCE(r.rolled_until, 0) \
         GROUP BY a.check_id",
    )
    .bind::<BigInt, _>(complete)
    .load(conn)?;
    let mut rolled = 0;
    for p in pending {
        let mut day = day_start(p.first);
        for _ in 0..DAYS_PER_PASS {
            if day + DAY_US > complete {
                break;
            }
            roll_up_day(conn, &p.check_id, day)?;
            rolled += 1;
            // The next day that has hours (days without any need nothing).
            let next: Option<Micros> = aggregates::table
                .filter(aggregates::check_id.eq(&p.check_id))
                .filter(aggregates::bucket_start.ge(day + DAY_US))
                .select(diesel::dsl::min(aggregates::bucket_start))
                .first(conn)?;
            match next {
                Some(next) => day = day_start(next),
                None => break,
            }
        }
    }
    Ok(rolled)
}

/// The check's rollup row, made if missing and locked for the caller's transaction
/// (SQLite: the single writer holds everything): (`rolled_until`, `quarters_until`).
fn lock_rollup_row(c: &mut DbConn, check_id: &str) -> Result<(Micros, Micros)> {
    diesel::sql_query(
        "INSERT INTO aggregate_rollups (check_id, rolled_until) VALUES ($1, 0) \
         ON CONFLICT (check_id) DO NOTHING",
    )
    .bind::<Text, _>(check_id)
    .execute(c)?;
    let find = || {
        aggregate_rollups::table.find(check_id).select((
            aggregate_rollups::rolled_until,
            aggregate_rollups::quarters_until,
        ))
    };
    Ok(match c {
        DbConn::Pg(pg) => find().for_update().first(pg)?,
        DbConn::Sqlite(sq) => find().first(sq)?,
    })
}

/// Rolls up one complete day of a check, unless it already is.
fn roll_up_day(conn: &mut DbConn, check_id: &str, day: Micros) -> Result<()> {
    write_tx(conn, |c| {
        let (until, _) = lock_rollup_row(c, check_id)?;
        if until > day {
            return Ok(());
        }
        let hours = hour_cells(c, check_id, day, day + DAY_US)?;
        cells_store::insert_rolled(c, DAY_US, &merge_cells(&hours, day)?)?;
        // The weeks that ended since the last rolled-up day (days without any hours are
        // skipped over) and with this one; before the first, no week has day cells.
        let after = if until == 0 { week_start(day) } else { until };
        let mut week_end = week_start(after) + WEEK_US;
        while week_end <= day + DAY_US {
            let days = cells_store::rolled(c, DAY_US, check_id, week_end - WEEK_US, week_end)?;
            if !days.is_empty() {
                cells_store::insert_rolled(c, WEEK_US, &merge_cells(&days, week_end - WEEK_US)?)?;
            }
            week_end += WEEK_US;
        }
        diesel::update(aggregate_rollups::table.find(check_id))
            .set(aggregate_rollups::rolled_until.eq(day + DAY_US))
            .execute(c)?;
        // Quarters of days rolled up before this one are read by no report (a reader
        // that read the rolled-up time before this commit reads quarters from `until`).
        cells_store::delete_rolled_before(c, QUARTER_US, check_id, until)?;
        Ok::<_, Error>(())
    })
}

/// Rolls up, per check, the complete quarters after its rolled-up days and quarters
/// that have hour cells, at most [`QUARTERS_PER_PASS`] a check.
fn roll_up_quarters(conn: &mut DbConn, now: Micros) -> Result<()> {
    let complete = complete_until(conn, now, quarter_start)?;
    let pending: Vec<Pending> = diesel::sql_query(
        "SELECT a.check_id AS check_id, MIN(a.bucket_start) AS first FROM aggregates a \
         LEFT JOIN aggregate_rollups r ON r.check_id = a.check_id \
         WHERE a.bucket_start < $1 \
           AND a.bucket_start >= CASE WHEN COALESCE(r.rolled_until, 0) > COALESCE(r.quarters_until, 0) \
               THEN COALESCE(r.rolled_until, 0) ELSE COALESCE(r.quarters_until, 0) END \
         GROUP BY a.check_id",
    )
    .bind::<BigInt, _>(complete)
    .load(conn)?;
    for p in pending {
        let mut quarter = quarter_start(p.first);
        for _ in 0..QUARTERS_PER_PASS {
            if quarter + QUARTER_US > complete {
                break;
            }
            roll_up_quarter(conn, &p.check_id, quarter)?;
            quarter += QUARTER_US;
        }
    }
    Ok(())
}

/// Rolls up one complete quarter of a check, unless it already is, or hour cells lie
/// between what is rolled up and it (quarters are rolled up in order: every quarter
/// from the rolled-up days' end to `quarters_until` is).
fn roll_up_quarter(conn: &mut DbConn, check_id: &str, quarter: Micros) -> Result<()> {
    write_tx(conn, |c| {
        let (days_until, quarters_until) = lock_rollup_row(c, check_id)?;
        let base = days_until.max(quarters_until);
        let hours_between: Option<Micros> = aggregates::table
            .filter(aggregates::check_id.eq(check_id))
            .filter(aggregates::bucket_start.ge(base))
            .filter(aggregates::bucket_start.lt(quarter))
            .select(aggregates::bucket_start)
            .first(c)
            .optional()?;
        if quarter < base || hours_between.is_some() {
            return Ok(());
        }
        let hours = hour_cells(c, check_id, quarter, quarter + QUARTER_US)?;
        if !hours.is_empty() {
            cells_store::insert_rolled(c, QUARTER_US, &merge_cells(&hours, quarter)?)?;
        }
        diesel::update(aggregate_rollups::table.find(check_id))
            .set(aggregate_rollups::quarters_until.eq(quarter + QUARTER_US))
            .execute(c)?;
        Ok::<_, Error>(())
    })
}

/// Finer cells merged per (country, region, ASN, class) into cells starting at `start`.
fn merge_cells(finer: &[AggregateRow], start: Micros) -> Result<Vec<AggregateRow>> {
    type Key<'a> = (&'a str, &'a str, i64, &'a str);
    type Merged = (i64, i64, Vec<histogram::Merger>, FigureMergers);
    let mut merged: BTreeMap<Key, Merged> = BTreeMap::new();
    for h in finer {
        let (successes, failures, mergers, figures) = merged
            .entry((&h.country, &h.region, h.asn, &h.connection_class))
            .or_insert_with(|| {
                (
                    0,
                    0,
                    Phase::ALL
                        .iter()
                        .map(|_| histogram::Merger::new())
                        .collect(),
                    FigureMergers::default(),
                )
            });
        *successes += h.successes;
        *failures += h.failures;
        for (merger, phase) in mergers.iter_mut().zip(Phase::ALL) {
            merger.add_encoded(h.hist(phase)).map_err(Error::Internal)?;
        }
        figures.add(h.figures.as_deref()).map_err(Error::Internal)?;
    }
    let mut days = Vec::with_capacity(merged.len());
    for ((country, region, asn, class), (successes, failures, mergers, figures)) in merged {
        let mut row = AggregateRow {
            check_id: finer[0].check_id.clone(),
            bucket_start: start,
            country: country.to_owned(),
            region: region.to_owned(),
            asn,
            connection_class: class.to_owned(),
            successes,
            failures,
            dns_hist: Vec::new(),
            connect_hist: Vec::new(),
            tls_hist: Vec::new(),
            ttfb_hist: Vec::new(),
            transfer_hist: Vec::new(),
            total_hist: Vec::new(),
            figures: figures.finish_encoded().map_err(Error::Internal)?,
        };
        for (merger, phase) in mergers.into_iter().zip(Phase::ALL) {
            *row.hist_mut(phase) = histogram::encode(&merger.finish().map_err(Error::Internal)?);
        }
        days.push(row);
    }
    Ok(days)
}

/// A cell read by [`each_cell`], handed to its caller as it arrives.
pub type EachCell<'a> = dyn FnMut(AggregateRow) -> Result<()> + 'a;

/// A check's cells for the hours `[from, to)`, as [`each_cell`] chooses them.
pub fn cells(
    conn: &mut DbConn,
    check_id: &str,
    from: Micros,
    to: Micros,
    longest: Span,
) -> Result<Vec<AggregateRow>> {
    let mut rows = Vec::new();
    each_cell(conn, check_id, from, to, longest, &mut |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

/// A check's cells for the hours `[from, to)`, handed to `each` as PostgreSQL sends
/// them (a report merges one while the next is read): week cells for the rolled-up
/// weeks that lie wholly inside, day cells for the rolled-up days between them and the
/// window's ends, hour cells for the rest; nothing longer than `longest` (a report
/// bucketed by hour or day needs its cells no longer).
pub fn each_cell(
    conn: &mut DbConn,
    check_id: &str,
    from: Micros,
    to: Micros,
    longest: Span,
    each: &mut EachCell<'_>,
) -> Result<()> {
    let (rolled_until, quarters_until): (Micros, Micros) = if longest > Span::Hour {
        aggregate_rollups::table
            .find(check_id)
            .select((
                aggregate_rollups::rolled_until,
                aggregate_rollups::quarters_until,
            ))
            .first(conn)
            .optional()?
            .unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let first_day = day_start(from + DAY_US - 1);
    let last_day = day_start(to).min(rolled_until);
    if first_day >= last_day {
        return tail_cells(
            conn,
            check_id,
            (from, to),
            (rolled_until, quarters_until),
            each,
        );
    }
    each_hour_cell(conn, check_id, from, first_day, each)?;
    let first_week = week_start(first_day + WEEK_US - 1);
    let last_week = week_start(last_day);
    if longest == Span::Week && first_week < last_week {
        cells_store::each_rolled(conn, DAY_US, check_id, first_day, first_week, each)?;
        cells_store::each_rolled(conn, WEEK_US, check_id, first_week, last_week, each)?;
        cells_store::each_rolled(conn, DAY_US, check_id, last_week, last_day, each)?;
    } else {
        cells_store::each_rolled(conn, DAY_US, check_id, first_day, last_day, each)?;
    }
    tail_cells(
        conn,
        check_id,
        (last_day, to),
        (rolled_until, quarters_until),
        each,
    )
}

fn hour_cells(
    conn: &mut DbConn,
    check_id: &str,
    from: Micros,
    to: Micros,
) -> Result<Vec<AggregateRow>> {
    Ok(cells_store::hours(conn, check_id, from, to)?)
}

fn each_hour_cell(
    conn: &mut DbConn,
    check_id: &str,
    from: Micros,
    to: Micros,
    each: &mut EachCell<'_>,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    cells_store::each_hour(conn, check_id, from, to, each)
}

/// The cells of `[from, to)` after the rolled-up days: quarter cells for the rolled-up
/// quarters wholly inside (only those from `rolled_until` on are sure to exist), hour
/// cells for the rest.
fn tail_cells(
    conn: &mut DbConn,
    check_id: &str,
    (from, to): (Micros, Micros),
    (rolled_until, quarters_until): (Micros, Micros),
    each: &mut EachCell<'_>,
) -> Result<()> {
    let first = quarter_start(from + QUARTER_US - 1).max(rolled_until);
    let last = quarter_start(to).min(quarters_until);
    if first >= last {
        return each_hour_cell(conn, check_id, from, to, each);
    }
    each_hour_cell(conn, check_id, from, first, each)?;
    cells_store::each_rolled(conn, QUARTER_US, check_id, first, last, each)?;
    each_hour_cell(conn, check_id, last, to, each)
}
