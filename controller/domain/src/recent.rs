//! The last hour in 5-minute slots, from the raw results: aggregates are kept per hour,
//! so a report of the last hour drew each class as a single dot. Raw results are kept
//! for days ([`crate::retention`]), so the page reads the hour's counted successes of
//! one check directly (bounded: one check, one hour, at most [`MAX_RESULTS`] rows) and
//! takes each slot's percentiles from a histogram of its samples, as reports do.

use std::collections::BTreeMap;

use diesel::prelude::*;
use hdrhistogram::Histogram;
use lastmile_protocol::ConnectionClass;

use crate::clock::Micros;
use crate::error::Result;
use crate::histogram;
use lastmile_storage::schema::results;
use lastmile_storage::DbConn;

/// One slot's width.
pub const SLOT_US: Micros = 5 * 60 * 1_000_000;

/// Most results read for one window.
pub const MAX_RESULTS: i64 = 100_000;

/// One class's percentiles in one slot, microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub class: Option<ConnectionClass>,
    /// The slot's start (a multiple of [`SLOT_US`] since the epoch).
    pub start: Micros,
    pub samples: u64,
    pub ttfb_p50: u64,
    pub ttfb_p95: u64,
    pub total_p50: u64,
    pub total_p95: u64,
}

/// The counted successes of `check_id` received in `[from, to)`, per class and slot,
/// in time order.
pub fn slots(conn: &mut DbConn, check_id: &str, from: Micros, to: Micros) -> Result<Vec<Slot>> {
    let rows: Vec<(String, i64, i64, i64)> = results::table
        .filter(results::check_id.eq(check_id))
        .filter(results::received_at.ge(from))
        .filter(results::received_at.lt(to))
        .filter(results::late.eq(false))
        .filter(results::flagged.eq(false))
        .filter(results::error_kind.is_null())
        .limit(MAX_RESULTS)
        .select((
            results::connection_class,
            results::received_at,
            results::ttfb_us,
            results::total_us,
        ))
        .load(conn)?;
    let mut cells: BTreeMap<(Micros, String), (Histogram<u64>, Histogram<u64>)> = BTreeMap::new();
    for (class, at, ttfb, total) in rows {
        let (t, tot) = cells
            .entry((at.div_euclid(SLOT_US) * SLOT_US, class))
            .or_insert_with(|| (histogram::new_histogram(), histogram::new_histogram()));
        // As ingest records phases into cells.
        t.saturating_record(ttfb.max(0) as u64);
        tot.saturating_record(total.max(0) as u64);
    }
    Ok(cells
        .into_iter()
        .map(|((start, class), (ttfb, total))| Slot {
            class: class.parse().ok(),
            start,
            samples: ttfb.len(),
            ttfb_p50: ttfb.value_at_quantile(0.5),
            ttfb_p95: ttfb.value_at_quantile(0.95),
            total_p50: total.value_at_quantile(0.5),
            total_p95: total.value_at_quantile(0.95),
        })
        .collect())
}
