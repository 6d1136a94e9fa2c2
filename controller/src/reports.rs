//! SLA reports: merge the aggregates of a check over a window, grouped by the
//! dimensions asked for, into sample counts, availability and per-phase percentiles.
//!
//! **Architecture Invariant:** reports merge aggregates; they never rescan raw results.
//! The cost of a report is the number of (hour, country, region, ASN, class) cells in the
//! window, not the number of measurements.
//!
//! Windows are widened to whole hour buckets: `from` is rounded down to the hour, and
//! every bucket that starts before `to` is included. The JSON says which window was
//! actually covered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use hdrhistogram::Histogram;
use lastmile_protocol::{ConnectionClass, Phase};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::checks::Check;
use crate::clock::{hour_bucket, to_datetime, to_us, HOUR_US};
use crate::confidence::{self, Confidence};
use crate::db::schema::aggregates;
use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::histogram;
use crate::ingest::AggregateRow;

/// A dimension a report can be grouped by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    ConnectionClass,
    Country,
    Region,
    Asn,
}

impl FromStr for Dimension {
    type Err = Error;
    fn from_str(s: &str) -> Result<Dimension> {
        match s.trim() {
            "connection_class" => Ok(Dimension::ConnectionClass),
            "country" => Ok(Dimension::Country),
            "region" => Ok(Dimension::Region),
            "asn" => Ok(Dimension::Asn),
            other => Err(Error::invalid(
                "invalid_group_by",
                format!("cannot group by {other:?}; use connection_class, country, region or asn"),
            )),
        }
    }
}

impl Dimension {
    fn name(self) -> &'static str {
        match self {
            Dimension::ConnectionClass => "connection_class",
            Dimension::Country => "country",
            Dimension::Region => "region",
            Dimension::Asn => "asn",
        }
    }
}

/// Parses `group_by=connection_class,country`.
pub fn parse_group_by(raw: &str) -> Result<Vec<Dimension>> {
    let mut dims = Vec::new();
    for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
        let d: Dimension = part.parse()?;
        if !dims.contains(&d) {
            dims.push(d);
        }
    }
    Ok(dims)
}

/// The window and grouping of a report.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: Vec<Dimension>,
    pub confidence: Confidence,
}

/// Percentiles of one phase, microseconds, each with its confidence interval
/// (distribution-free, see [`crate::confidence`]). An interval is `null` when the phase
/// has too few samples for one at the report's confidence; `insufficient_samples` is
/// then true and `note` names the minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Percentiles {
    /// Successful samples the percentiles are over.
    #[serde(default)]
    pub samples: u64,
    pub p50: u64,
    #[serde(default)]
    pub p50_ci: Option<[u64; 2]>,
    pub p90: u64,
    #[serde(default)]
    pub p90_ci: Option<[u64; 2]>,
    pub p95: u64,
    #[serde(default)]
    pub p95_ci: Option<[u64; 2]>,
    pub p99: u64,
    #[serde(default)]
    pub p99_ci: Option<[u64; 2]>,
    /// Whether some interval is missing for lack of samples.
    #[serde(default)]
    pub insufficient_samples: bool,
    /// Which percentiles lack an interval and how many samples they need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The percentiles a report states.
pub const REPORTED_QUANTILES: [(u8, f64); 4] = [(50, 0.50), (90, 0.90), (95, 0.95), (99, 0.99)];

/// The value of each dimension for one row; absent dimensions are not grouped on.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub struct Group {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_class: Option<ConnectionClass>,
    /// ISO country code; `"??"` when the agent's address has no known country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Subdivision of the country as the geo database names it; `"??"` when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Autonomous system number; 0 when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportRow {
    pub group: Group,
    /// Measurements in the row (successful and failed).
    pub samples: u64,
    pub successes: u64,
    pub failures: u64,
    /// successes / samples.
    pub availability: f64,
    /// Clopper-Pearson interval of the availability at the report's confidence.
    #[serde(default)]
    pub availability_ci: Option<[f64; 2]>,
    /// Percentiles over the successful measurements, per phase.
    pub phases: BTreeMap<Phase, Percentiles>,
}

/// Which check a report is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportCheck {
    pub id: Uuid,
    pub name: String,
    pub url: String,
}

/// The window a report covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportWindow {
    /// Start of the first hour bucket included.
    pub from: DateTime<Utc>,
    /// End of the window as asked.
    pub to: DateTime<Utc>,
    /// Bucket width the aggregates are kept at.
    pub bucket: String,
}

/// An SLA report for one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Report {
    pub check: ReportCheck,
    pub window: ReportWindow,
    pub group_by: Vec<Dimension>,
    /// Confidence level of every interval in the report.
    #[serde(default)]
    pub confidence: Confidence,
    pub rows: Vec<ReportRow>,
}

struct Accumulator {
    successes: u64,
    failures: u64,
    phases: BTreeMap<Phase, Histogram<u64>>,
}

/// Builds the report for `check` from its aggregates.
pub fn build(conn: &mut DbConn, check: &Check, query: &ReportQuery) -> Result<Report> {
    if query.to <= query.from {
        return Err(Error::invalid(
            "invalid_window",
            "`to` must be after `from`",
        ));
    }
    let from_bucket = hour_bucket(to_us(query.from));
    let rows: Vec<AggregateRow> = aggregates::table
        .filter(aggregates::check_id.eq(&check.id))
        .filter(aggregates::bucket_start.ge(from_bucket))
        .filter(aggregates::bucket_start.lt(to_us(query.to)))
        .select(AggregateRow::as_select())
        .load(conn)?;
    Ok(Report {
        check: ReportCheck {
            id: check.id.parse().unwrap_or_default(),
            name: check.name.clone(),
            url: check.url.clone(),
        },
        window: ReportWindow {
            from: to_datetime(from_bucket),
            to: query.to,
            bucket: "1h".into(),
        },
        group_by: query.group_by.clone(),
        confidence: query.confidence,
        rows: merge_at(&rows, &query.group_by, query.confidence)?,
    })
}

/// Merges aggregate rows into report rows grouped by `dims`, intervals at 95 %.
pub fn merge(rows: &[AggregateRow], dims: &[Dimension]) -> Result<Vec<ReportRow>> {
    merge_at(rows, dims, Confidence::default())
}

/// Merges aggregate rows into report rows grouped by `dims`, intervals at `confidence`.
pub fn merge_at(
    rows: &[AggregateRow],
    dims: &[Dimension],
    confidence: Confidence,
) -> Result<Vec<ReportRow>> {
    let mut groups: BTreeMap<Group, Accumulator> = BTreeMap::new();
    for row in rows {
        let acc = groups
            .entry(group_of(row, dims))
            .or_insert_with(|| Accumulator {
                successes: 0,
                failures: 0,
                phases: Phase::ALL
                    .iter()
                    .map(|p| (*p, histogram::new_histogram()))
                    .collect(),
            });
        acc.successes += row.successes.max(0) as u64;
        acc.failures += row.failures.max(0) as u64;
        for (phase, merged) in acc.phases.iter_mut() {
            let h = histogram::decode(row.hist(*phase)).map_err(Error::Internal)?;
            merged
                .add(&h)
                .map_err(|e| Error::Internal(format!("cannot merge histograms: {e:?}")))?;
        }
    }
    Ok(groups
        .into_iter()
        .map(|(group, acc)| {
            let samples = acc.successes + acc.failures;
            ReportRow {
                group,
                samples,
                successes: acc.successes,
                failures: acc.failures,
                availability: if samples == 0 {
                    0.0
                } else {
                    acc.successes as f64 / samples as f64
                },
                availability_ci: confidence::proportion_interval(
                    acc.successes,
                    samples,
                    confidence,
                ),
                phases: acc
                    .phases
                    .iter()
                    .filter(|(_, h)| !h.is_empty())
                    .map(|(phase, h)| (*phase, percentiles(h, confidence)))
                    .collect(),
            }
        })
        .collect())
}

/// Percentiles of `h` with their intervals at `confidence`.
pub fn percentiles(h: &Histogram<u64>, confidence: Confidence) -> Percentiles {
    let ci = |q: f64| confidence::quantile_interval(h, q, confidence);
    let mut p = Percentiles {
        samples: h.len(),
        p50: h.value_at_quantile(0.50),
        p50_ci: ci(0.50),
        p90: h.value_at_quantile(0.90),
        p90_ci: ci(0.90),
        p95: h.value_at_quantile(0.95),
        p95_ci: ci(0.95),
        p99: h.value_at_quantile(0.99),
        p99_ci: ci(0.99),
        insufficient_samples: false,
        note: None,
    };
    let missing: Vec<String> = REPORTED_QUANTILES
        .iter()
        .zip([p.p50_ci, p.p90_ci, p.p95_ci, p.p99_ci])
        .filter(|(_, ci)| ci.is_none())
        .map(|((nn, q), _)| format!("p{nn} needs {}", confidence::min_samples(*q, confidence)))
        .collect();
    if !missing.is_empty() {
        p.insufficient_samples = true;
        p.note = Some(format!(
            "too few samples ({}) for a {}% interval: {}",
            p.samples,
            confidence.level() * 100.0,
            missing.join(", ")
        ));
    }
    p
}

fn group_of(row: &AggregateRow, dims: &[Dimension]) -> Group {
    let mut g = Group::default();
    for d in dims {
        match d {
            Dimension::ConnectionClass => g.connection_class = row.connection_class.parse().ok(),
            Dimension::Country => g.country = Some(known_or_unknown(&row.country)),
            Dimension::Region => g.region = Some(known_or_unknown(&row.region)),
            Dimension::Asn => g.asn = Some(u32::try_from(row.asn).unwrap_or(0)),
        }
    }
    g
}

fn known_or_unknown(value: &str) -> String {
    if value.is_empty() {
        "??".to_owned()
    } else {
        value.to_owned()
    }
}

/// The default window: the last 24 hours.
pub fn default_window(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (now - chrono::Duration::microseconds(24 * HOUR_US), now)
}

/// A CSV cell, quoted when it needs to be.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The report as CSV: one line per row, percentiles in microseconds. Each percentile is
/// followed by its interval (`_ci_low_us`, `_ci_high_us`), empty when the phase has too
/// few samples; `{phase}_ci_note` then says which percentiles need how many.
pub fn to_csv(report: &Report) -> String {
    let mut out = String::new();
    let dims: Vec<&str> = report.group_by.iter().map(|d| d.name()).collect();
    let mut header: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    header.extend(
        [
            "samples",
            "successes",
            "failures",
            "availability",
            "availability_ci_low",
            "availability_ci_high",
        ]
        .map(String::from),
    );
    for phase in Phase::ALL {
        for (nn, _) in REPORTED_QUANTILES {
            header.push(format!("{phase}_p{nn}_us"));
            header.push(format!("{phase}_p{nn}_ci_low_us"));
            header.push(format!("{phase}_p{nn}_ci_high_us"));
        }
        header.push(format!("{phase}_ci_note"));
    }
    let _ = writeln!(out, "{}", header.join(","));
    for row in &report.rows {
        let mut cells: Vec<String> = Vec::new();
        for d in &report.group_by {
            cells.push(match d {
                Dimension::ConnectionClass => row
                    .group
                    .connection_class
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                Dimension::Country => row.group.country.clone().unwrap_or_default(),
                Dimension::Region => row.group.region.clone().unwrap_or_default(),
                Dimension::Asn => row.group.asn.map(|a| a.to_string()).unwrap_or_default(),
            });
        }
        cells.push(row.samples.to_string());
        cells.push(row.successes.to_string());
        cells.push(row.failures.to_string());
        cells.push(format!("{:.6}", row.availability));
        match row.availability_ci {
            Some([lo, hi]) => cells.extend([format!("{lo:.6}"), format!("{hi:.6}")]),
            None => cells.extend([String::new(), String::new()]),
        }
        for phase in Phase::ALL {
            match row.phases.get(&phase) {
                Some(p) => {
                    for (value, ci) in [
                        (p.p50, p.p50_ci),
                        (p.p90, p.p90_ci),
                        (p.p95, p.p95_ci),
                        (p.p99, p.p99_ci),
                    ] {
                        cells.push(value.to_string());
                        match ci {
                            Some([lo, hi]) => cells.extend([lo.to_string(), hi.to_string()]),
                            None => cells.extend([String::new(), String::new()]),
                        }
                    }
                    cells.push(csv_cell(p.note.as_deref().unwrap_or("")));
                }
                None => cells.extend(std::iter::repeat_n(
                    String::new(),
                    REPORTED_QUANTILES.len() * 3 + 1,
                )),
            }
        }
        let _ = writeln!(out, "{}", cells.join(","));
    }
    out
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// `812.0 ms [790.1, 840.2]`, or `812.0 ms (n<59)` when there are too few samples for
/// an interval.
fn with_ci(value: u64, ci: Option<[u64; 2]>, samples: u64, q: f64, c: Confidence) -> String {
    match ci {
        Some([lo, hi]) => format!("{} ms [{}, {}]", ms(value), ms(lo), ms(hi)),
        None if samples == 0 => "-".into(),
        None => format!("{} ms (n<{})", ms(value), confidence::min_samples(q, c)),
    }
}

/// A human-readable table of the report, for the terminal. Intervals in brackets;
/// `(n<59)` marks a percentile whose row has too few samples for an interval.
pub fn to_table(report: &Report) -> String {
    let mut out = String::new();
    let level = format!("{}%", report.confidence.level() * 100.0);
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:>7} {:>22} {:>10} {:>28} {:>28}",
        "class",
        "country",
        "samples",
        format!("avail [{level} CI]"),
        "ttfb p50",
        format!("ttfb p95 [{level} CI]"),
        format!("total p95 [{level} CI]"),
    );
    for row in &report.rows {
        let cell = |phase: Phase, pick: fn(&Percentiles) -> (u64, Option<[u64; 2]>), q: f64| {
            row.phases.get(&phase).map_or_else(
                || "-".to_owned(),
                |p| {
                    let (v, ci) = pick(p);
                    with_ci(v, ci, p.samples, q, report.confidence)
                },
            )
        };
        let avail = match row.availability_ci {
            Some([lo, hi]) => format!(
                "{:.1}% [{:.1}, {:.1}]",
                row.availability * 100.0,
                lo * 100.0,
                hi * 100.0
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>7} {:>22} {:>10} {:>28} {:>28}",
            row.group
                .connection_class
                .map(|c| c.to_string())
                .unwrap_or_else(|| "*".into()),
            row.group.country.clone().unwrap_or_else(|| "*".into()),
            row.samples,
            avail,
            row.phases
                .get(&Phase::Ttfb)
                .map_or_else(|| "-".to_owned(), |p| format!("{} ms", ms(p.p50))),
            cell(Phase::Ttfb, |p| (p.p95, p.p95_ci), 0.95),
            cell(Phase::Total, |p| (p.p95, p.p95_ci), 0.95),
        );
    }
    out
}
