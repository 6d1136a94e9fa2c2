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

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use lastmile_protocol::{CheckKind, ConnectionClass, Figure, Phase, Unit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::check_terms::StoredCheck;
use crate::clock::{hour_bucket, to_datetime, to_us, Micros, HOUR_US};
use crate::confidence::{self, Confidence};
use crate::error::{Error, Result};
use crate::figures::FigureMergers;
use crate::histogram;
use crate::ingest::AggregateRow;
use crate::objectives::{self, Objective, ObjectiveOutcome};
use crate::rollups::Span;
use lastmile_storage::checks::Check;
use lastmile_storage::DbConn;

/// Resolves `window=1h|24h|7d|30d` or `from`/`to` (default: `24h`).
///
/// Named windows are whole hour buckets ending with the current one (`to` is the start
/// of the next hour), matching how aggregates are kept; it also keeps the answer, and
/// so its ETag, the same between polls until new data arrives or the hour turns.
pub fn window(
    named: Option<&str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let hours = |name: &str| match name {
        "1h" => Ok(1),
        "24h" | "1d" => Ok(24),
        "7d" => Ok(7 * 24),
        "30d" => Ok(30 * 24),
        other => Err(Error::invalid(
            "invalid_window",
            format!("window {other:?} is not one of 1h, 24h, 7d, 30d"),
        )),
    };
    let named_window = |h: i64| {
        let end = hour_bucket(crate::clock::now_us()) + HOUR_US;
        (to_datetime(end - h * HOUR_US), to_datetime(end))
    };
    match (named, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(Error::invalid(
            "invalid_window",
            "give either window or from/to, not both",
        )),
        (Some(name), None, None) => Ok(named_window(hours(name)?)),
        (None, None, None) => Ok(named_window(24)),
        (None, from, to) => {
            let to = to.unwrap_or_else(Utc::now);
            let from = from.unwrap_or(to - chrono::Duration::microseconds(24 * HOUR_US));
            if to <= from {
                return Err(Error::invalid(
                    "invalid_window",
                    "`to` must be after `from`",
                ));
            }
            Ok((from, to))
        }
    }
}

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
    /// Include the merged histograms in every row.
    pub histograms: bool,
    /// Split rows by time bucket too.
    pub bucket: Option<TimeBucket>,
    /// Compare every row with the previous window of equal length.
    pub compare: bool,
}

/// The time buckets a report's rows can be split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum TimeBucket {
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl TimeBucket {
    /// Parses `1h` or `1d`.
    pub fn parse(raw: &str) -> Result<TimeBucket> {
        match raw.trim() {
            "1h" | "hour" => Ok(TimeBucket::Hour),
            "1d" | "day" => Ok(TimeBucket::Day),
            other => Err(Error::invalid(
                "invalid_bucket",
                format!("bucket {other:?} is not 1h or 1d"),
            )),
        }
    }

    fn micros(self) -> Micros {
        match self {
            TimeBucket::Hour => HOUR_US,
            TimeBucket::Day => 24 * HOUR_US,
        }
    }
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

/// Percentiles of a figure other than the phases, in its unit, on the side that
/// matters: for a figure where higher is better (goodput) the low percentiles, p10
/// being the value 90 % of measurements reached or beat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FigurePercentiles {
    pub unit: Unit,
    pub higher_is_better: bool,
    /// Successful samples that gave this figure.
    pub samples: u64,
    /// p50, then towards the worse tail: p90, p95, p99, or p10, p5, p1.
    pub percentiles: Vec<FigurePercentile>,
    /// Whether some interval is missing for lack of samples.
    #[serde(default)]
    pub insufficient_samples: bool,
    /// Which percentiles lack an interval and how many samples they need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One percentile of a figure, with its interval (`null`: too few samples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FigurePercentile {
    /// 50 for the median, 10 for p10.
    pub percentile: u8,
    pub value: u64,
    pub ci: Option<[u64; 2]>,
}

impl FigurePercentiles {
    /// The value and interval of pNN, if stated.
    pub fn get(&self, percentile: u8) -> Option<&FigurePercentile> {
        self.percentiles.iter().find(|p| p.percentile == percentile)
    }
}

/// The percentiles stated for a figure: the phases' four, mirrored when higher values
/// are the better ones.
pub fn figure_quantiles(figure: Figure) -> [(u8, f64); 4] {
    if figure.higher_is_better() {
        [(50, 0.50), (10, 0.10), (5, 0.05), (1, 0.01)]
    } else {
        REPORTED_QUANTILES
    }
}

/// Percentiles of `h`, a histogram of `figure`, with their intervals at `confidence`.
pub fn figure_percentiles(
    figure: Figure,
    h: &Histogram<u64>,
    confidence: Confidence,
) -> FigurePercentiles {
    let stated = figure_quantiles(figure);
    let qs: Vec<f64> = stated.iter().map(|(_, q)| *q).collect();
    // One pass wants the quantiles ascending; the low tail's are stated descending.
    let mut ascending = qs.clone();
    ascending.sort_by(f64::total_cmp);
    let sorted: Vec<u64> = h.value_at_quantiles(ascending.iter().copied()).collect();
    let values: Vec<u64> = qs
        .iter()
        .map(|q| {
            let i = ascending.partition_point(|a| a < q);
            sorted.get(i).copied().unwrap_or(0)
        })
        .collect();
    let cis = confidence::quantile_intervals(h, &qs, confidence);
    let percentiles: Vec<FigurePercentile> = stated
        .iter()
        .zip(values)
        .zip(cis)
        .map(|(((nn, _), value), ci)| FigurePercentile {
            percentile: *nn,
            value,
            ci,
        })
        .collect();
    let note = missing_intervals(
        h.len(),
        stated
            .iter()
            .zip(&percentiles)
            .map(|(stated, p)| (*stated, p.ci.is_some())),
        confidence,
    );
    FigurePercentiles {
        unit: figure.unit(),
        higher_is_better: figure.higher_is_better(),
        samples: h.len(),
        insufficient_samples: note.is_some(),
        note,
        percentiles,
    }
}

/// The percentiles a report states.
pub const REPORTED_QUANTILES: [(u8, f64); 4] = [(50, 0.50), (90, 0.90), (95, 0.95), (99, 0.99)];

/// The value of each dimension for one row; absent dimensions are not grouped on.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub struct Group {
    /// With `bucket=1h|1d`: the start of the row's time bucket (UTC; day buckets start
    /// at midnight UTC and are clipped to the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_start: Option<DateTime<Utc>>,
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
    /// The figures other than phases that the row's measurements gave (goodput, for
    /// http bodies of at least 64 KiB), each in its own unit; absent when none did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<Figure, FigurePercentiles>,
    /// The check's objectives that apply to this row, judged (see
    /// [`crate::objectives`]); absent when the check has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<ObjectiveOutcome>,
    /// With `histograms=true`: the merged histogram of each phase (microseconds) and of
    /// each other figure the row has (in its unit: goodput in kbit/s), as base64
    /// (standard alphabet, padded) of the uncompressed HdrHistogram V2 encoding (cookie
    /// 0x1c849303), 1 to 3.6·10⁹ at 3 significant digits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub histograms: BTreeMap<Figure, String>,
    /// With `compare=previous`: the same row in the previous window of equal length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Comparison>,
}

/// Which check a report is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportCheck {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    /// `http` or `page`. For a page check `total` is the page total (start to the last
    /// byte of the last sub-resource) and the other phases are the HTML document's.
    #[serde(default = "http_kind")]
    pub kind: CheckKind,
}

fn http_kind() -> CheckKind {
    CheckKind::Http
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
    /// With `bucket=`: the width of the time buckets rows are split into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<TimeBucket>,
    /// With `compare=previous`: the window every row's `previous` covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<ReportWindow>,
    pub rows: Vec<ReportRow>,
}

/// A row against the same row in the previous window (`compare=previous`).
///
/// Percentiles: `significant` is true when the two intervals (at the report's confidence)
/// do not overlap, false when they do, null when either is missing for lack of samples.
/// Non-overlap is a conservative test: two 95 % intervals that do not overlap mean a
/// difference at well below the 5 % level, so a `true` can be trusted and some real
/// changes will read `false`. Availability: the pooled two-proportion z-test, two-sided,
/// significant when its p-value is below 1 - confidence (a normal approximation: with
/// only a handful of failures on either side read it as a hint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Comparison {
    /// Measurements in the previous window's row.
    pub samples: u64,
    pub availability: AvailabilityChange,
    /// p50 and p95 per phase, for the phases both windows have.
    pub phases: BTreeMap<Phase, PhaseChange>,
}

/// Availability now against the previous window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityChange {
    pub previous: f64,
    pub previous_ci: Option<[f64; 2]>,
    /// current - previous (fraction).
    pub change: f64,
    pub p_value: Option<f64>,
    pub significant: Option<bool>,
}

/// One percentile now against the previous window, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PercentileChange {
    pub previous: u64,
    pub previous_ci: Option<[u64; 2]>,
    /// current - previous.
    pub change: i64,
    pub significant: Option<bool>,
}

/// p50 and p95 of one phase against the previous window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PhaseChange {
    pub p50: PercentileChange,
    pub p95: PercentileChange,
}

fn compare_rows(current: &ReportRow, previous: &ReportRow, confidence: Confidence) -> Comparison {
    let p_value = confidence::two_proportion_p_value(
        current.successes,
        current.samples,
        previous.successes,
        previous.samples,
    );
    let pct = |now: u64, now_ci: Option<[u64; 2]>, then: u64, then_ci: Option<[u64; 2]>| {
        PercentileChange {
            previous: then,
            previous_ci: then_ci,
            change: now as i64 - then as i64,
            significant: match (now_ci, then_ci) {
                (Some([a_lo, a_hi]), Some([b_lo, b_hi])) => Some(a_hi < b_lo || b_hi < a_lo),
                _ => None,
            },
        }
    };
    Comparison {
        samples: previous.samples,
        availability: AvailabilityChange {
            previous: previous.availability,
            previous_ci: previous.availability_ci,
            change: current.availability - previous.availability,
            p_value,
            significant: p_value.map(|p| p < confidence.alpha()),
        },
        phases: current
            .phases
            .iter()
            .filter_map(|(phase, now)| {
                let then = previous.phases.get(phase)?;
                Some((
                    *phase,
                    PhaseChange {
                        p50: pct(now.p50, now.p50_ci, then.p50, then.p50_ci),
                        p95: pct(now.p95, now.p95_ci, then.p95, then.p95_ci),
                    },
                ))
            })
            .collect(),
    }
}

struct Accumulator {
    successes: u64,
    failures: u64,
    phases: BTreeMap<Phase, Histogram<u64>>,
    figures: BTreeMap<Figure, Histogram<u64>>,
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
    let to = to_us(query.to);
    // The previous window holds as many hour buckets as this one.
    let len = (to - from_bucket + HOUR_US - 1).div_euclid(HOUR_US) * HOUR_US;
    // Week and day cells where whole rolled-up spans fit, no longer than the buckets.
    let longest = match query.bucket {
        Some(TimeBucket::Hour) => Span::Hour,
        Some(TimeBucket::Day) => Span::Day,
        None => Span::Week,
    };
    let bucket_us = query.bucket.map(TimeBucket::micros);
    let dims = &query.group_by;
    let current = accumulate_cells(conn, &check.id, (from_bucket, to), longest, dims, bucket_us)?;
    let options = MergeOptions {
        confidence: query.confidence,
        objectives: check.objectives(),
        histograms: query.histograms,
    };
    let mut out: Vec<ReportRow> = current
        .into_iter()
        .map(|(group, acc)| row_of(group, &acc, &options))
        .collect();
    let compared_with = if query.compare {
        let lean = MergeOptions {
            confidence: query.confidence,
            ..MergeOptions::default()
        };
        // Key the previous rows by where they fall when moved one window later.
        let previous = (from_bucket - len, from_bucket);
        let before: BTreeMap<Group, ReportRow> =
            accumulate_cells(conn, &check.id, previous, longest, dims, bucket_us)?
                .into_iter()
                .map(|(mut group, acc)| {
                    let row = row_of(group.clone(), &acc, &lean);
                    group.bucket_start = group
                        .bucket_start
                        .map(|b| b + chrono::Duration::microseconds(len));
                    (group, row)
                })
                .collect();
        for row in &mut out {
            if let Some(prev) = before.get(&row.group) {
                row.previous = Some(compare_rows(row, prev, query.confidence));
            }
        }
        Some(ReportWindow {
            from: to_datetime(from_bucket - len),
            to: to_datetime(from_bucket),
            bucket: "1h".into(),
        })
    } else {
        None
    };
    Ok(Report {
        check: ReportCheck {
            id: check.id.parse().unwrap_or_default(),
            name: check.name.clone(),
            url: check.url.clone(),
            kind: check.kind.parse().unwrap_or(CheckKind::Http),
        },
        window: ReportWindow {
            from: to_datetime(from_bucket),
            to: query.to,
            bucket: "1h".into(),
        },
        group_by: query.group_by.clone(),
        confidence: query.confidence,
        bucket: query.bucket,
        compared_with,
        rows: out,
    })
}

/// Merges aggregate rows into report rows grouped by `dims`, intervals at 95 %, no
/// objectives (what the ISP views use).
pub fn merge(rows: &[AggregateRow], dims: &[Dimension]) -> Result<Vec<ReportRow>> {
    merge_with(rows, dims, &MergeOptions::default())
}

/// What a report row states beyond counts and percentiles.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    pub confidence: Confidence,
    /// Judged on every row they apply to.
    pub objectives: Vec<Objective>,
    /// Include the merged histograms (base64 HdrHistogram V2).
    pub histograms: bool,
}

/// Merged counts and histograms per group: every cell's stored histograms summed
/// counter by counter ([`histogram::Merger`]), each group's made once at the end.
struct Accumulation<'a> {
    dims: &'a [Dimension],
    bucket_us: Option<Micros>,
    groups: BTreeMap<Group, (u64, u64, Vec<histogram::Merger>, FigureMergers)>,
}

impl<'a> Accumulation<'a> {
    fn new(dims: &'a [Dimension], bucket_us: Option<Micros>) -> Self {
        Accumulation {
            dims,
            bucket_us,
            groups: BTreeMap::new(),
        }
    }

    /// Adds one cell to its group.
    fn add(&mut self, row: &AggregateRow) -> Result<()> {
        let (successes, failures, mergers, figures) = self
            .groups
            .entry(group_of(row, self.dims, self.bucket_us))
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
        *successes += row.successes.max(0) as u64;
        *failures += row.failures.max(0) as u64;
        for (merger, phase) in mergers.iter_mut().zip(Phase::ALL) {
            merger
                .add_encoded(row.hist(phase))
                .map_err(Error::Internal)?;
        }
        figures
            .add(row.figures.as_deref())
            .map_err(Error::Internal)?;
        Ok(())
    }

    fn finish(self) -> Result<BTreeMap<Group, Accumulator>> {
        self.groups
            .into_iter()
            .map(|(group, (successes, failures, mergers, figures))| {
                let phases = Phase::ALL
                    .into_iter()
                    .zip(mergers)
                    .map(|(phase, m)| Ok((phase, m.finish().map_err(Error::Internal)?)))
                    .collect::<Result<BTreeMap<_, _>>>()?;
                Ok((
                    group,
                    Accumulator {
                        successes,
                        failures,
                        phases,
                        figures: figures.finish_known().map_err(Error::Internal)?,
                    },
                ))
            })
            .collect()
    }
}

/// Merges a check's cells for `[from, to)` as they are read.
fn accumulate_cells(
    conn: &mut DbConn,
    check_id: &str,
    (from, to): (Micros, Micros),
    longest: Span,
    dims: &[Dimension],
    bucket_us: Option<Micros>,
) -> Result<BTreeMap<Group, Accumulator>> {
    let mut acc = Accumulation::new(dims, bucket_us);
    crate::rollups::each_cell(conn, check_id, from, to, longest, &mut |row| acc.add(&row))?;
    acc.finish()
}

/// Merges aggregate rows into report rows grouped by `dims`.
pub fn merge_with(
    rows: &[AggregateRow],
    dims: &[Dimension],
    options: &MergeOptions,
) -> Result<Vec<ReportRow>> {
    let mut acc = Accumulation::new(dims, None);
    for row in rows {
        acc.add(row)?;
    }
    Ok(acc
        .finish()?
        .into_iter()
        .map(|(group, acc)| row_of(group, &acc, options))
        .collect())
}

fn row_of(group: Group, acc: &Accumulator, options: &MergeOptions) -> ReportRow {
    let confidence = options.confidence;
    let samples = acc.successes + acc.failures;
    let get = |p: Phase| acc.phases.get(&p);
    let get_figure = |f: Figure| acc.figures.get(&f);
    let objectives = objectives::evaluate(
        &options.objectives,
        &objectives::RowData {
            connection_class: group.connection_class,
            successes: acc.successes,
            failures: acc.failures,
            phase: &get,
            figure: &get_figure,
        },
        confidence,
    );
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
        availability_ci: confidence::proportion_interval(acc.successes, samples, confidence),
        phases: acc
            .phases
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(phase, h)| (*phase, percentiles(h, confidence)))
            .collect(),
        figures: acc
            .figures
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(figure, h)| (*figure, figure_percentiles(*figure, h, confidence)))
            .collect(),
        objectives,
        histograms: if options.histograms {
            let phases = acc.phases.iter().map(|(p, h)| (Figure::from(*p), h));
            let others = acc.figures.iter().filter(|(_, h)| !h.is_empty());
            phases
                .chain(others.map(|(f, h)| (*f, h)))
                .map(|(figure, h)| (figure, BASE64.encode(histogram::encode(h))))
                .collect()
        } else {
            BTreeMap::new()
        },
        previous: None,
    }
}

/// Percentiles of `h` with their intervals at `confidence`.
pub fn percentiles(h: &Histogram<u64>, confidence: Confidence) -> Percentiles {
    // One pass for the four values and one for their intervals.
    let qs = [0.50, 0.90, 0.95, 0.99];
    let v: Vec<u64> = h.value_at_quantiles(qs).collect();
    let ci = confidence::quantile_intervals(h, &qs, confidence);
    let mut p = Percentiles {
        samples: h.len(),
        p50: v[0],
        p50_ci: ci[0],
        p90: v[1],
        p90_ci: ci[1],
        p95: v[2],
        p95_ci: ci[2],
        p99: v[3],
        p99_ci: ci[3],
        insufficient_samples: false,
        note: None,
    };
    p.note = missing_intervals(
        h.len(),
        REPORTED_QUANTILES
            .iter()
            .zip([p.p50_ci, p.p90_ci, p.p95_ci, p.p99_ci])
            .map(|(stated, ci)| (*stated, ci.is_some())),
        confidence,
    );
    p.insufficient_samples = p.note.is_some();
    p
}

/// `too few samples (12) for a 95% interval: p90 needs 29, p95 needs 59`, naming each
/// stated percentile (`(NN, quantile)`) that has no interval; `None` when all have one.
fn missing_intervals(
    samples: u64,
    stated: impl Iterator<Item = ((u8, f64), bool)>,
    confidence: Confidence,
) -> Option<String> {
    let missing: Vec<String> = stated
        .filter(|(_, has_interval)| !has_interval)
        .map(|((nn, q), _)| format!("p{nn} needs {}", confidence::min_samples(q, confidence)))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "too few samples ({samples}) for a {}% interval: {}",
            confidence.level() * 100.0,
            missing.join(", ")
        )
    })
}

fn group_of(row: &AggregateRow, dims: &[Dimension], bucket_us: Option<Micros>) -> Group {
    let mut g = Group {
        bucket_start: bucket_us.map(|b| to_datetime(row.bucket_start.div_euclid(b) * b)),
        ..Group::default()
    };
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

/// The figures other than phases, in [`Figure::ALL`]'s order: CSV columns after the
/// phases'.
const OTHER_FIGURES: [Figure; Figure::OTHERS.len()] = Figure::OTHERS;

/// The report as CSV: one line per row, percentiles in microseconds (the phases) or in
/// the unit their column names (the other figures, after the phases). Each percentile is
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
    for figure in OTHER_FIGURES {
        let unit = figure.unit().as_str();
        for (nn, _) in figure_quantiles(figure) {
            header.push(format!("{figure}_p{nn}_{unit}"));
            header.push(format!("{figure}_p{nn}_ci_low_{unit}"));
            header.push(format!("{figure}_p{nn}_ci_high_{unit}"));
        }
        header.push(format!("{figure}_ci_note"));
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
        for figure in OTHER_FIGURES {
            match row.figures.get(&figure) {
                Some(f) => {
                    for p in &f.percentiles {
                        cells.push(p.value.to_string());
                        match p.ci {
                            Some([lo, hi]) => cells.extend([lo.to_string(), hi.to_string()]),
                            None => cells.extend([String::new(), String::new()]),
                        }
                    }
                    cells.push(csv_cell(f.note.as_deref().unwrap_or("")));
                }
                None => cells.extend(std::iter::repeat_n(
                    String::new(),
                    figure_quantiles(figure).len() * 3 + 1,
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
    let with_objectives = report.rows.iter().any(|r| !r.objectives.is_empty());
    // Each figure besides the phases that some row has: its median and its worse
    // tail's percentile (p10 of goodput, p95 of a latency), in its own unit.
    let figures: Vec<Figure> = OTHER_FIGURES
        .into_iter()
        .filter(|f| report.rows.iter().any(|r| r.figures.contains_key(f)))
        .collect();
    let figure_heads: String = figures
        .iter()
        .map(|&f| {
            format!(
                " {:>14} {:>36}",
                format!("{f} p50"),
                format!("{f} p{} [{level} CI]", tail_percentile(f))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:>7} {:>22} {:>10} {:>28} {:>28}{}{}",
        "class",
        "country",
        "samples",
        format!("avail [{level} CI]"),
        "ttfb p50",
        format!("ttfb p95 [{level} CI]"),
        format!(
            "{} p95 [{level} CI]",
            match report.check.kind {
                CheckKind::Page => "page total",
                CheckKind::Http | CheckKind::Throughput | CheckKind::Video | CheckKind::Udp => {
                    "total"
                }
            }
        ),
        figure_heads,
        if with_objectives { "  objectives" } else { "" },
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
        let figure_cells: String = figures
            .iter()
            .map(|&f| {
                let fp = row.figures.get(&f);
                let at = |nn| fp.and_then(|p| p.get(nn));
                let tail = tail_percentile(f);
                let tail_cell = match at(tail) {
                    Some(FigurePercentile {
                        value,
                        ci: Some([lo, hi]),
                        ..
                    }) => format!(
                        "{} [{}, {}] {}",
                        in_unit(f, *value),
                        in_unit(f, *lo),
                        in_unit(f, *hi),
                        unit_label(f)
                    ),
                    Some(p) => format!(
                        "{} {} (n<{})",
                        in_unit(f, p.value),
                        unit_label(f),
                        confidence::min_samples(f64::from(tail) / 100.0, report.confidence)
                    ),
                    None => "-".to_owned(),
                };
                let p50 = at(50).map_or_else(
                    || "-".to_owned(),
                    |p| format!("{} {}", in_unit(f, p.value), unit_label(f)),
                );
                format!(" {p50:>14} {tail_cell:>36}")
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>7} {:>22} {:>10} {:>28} {:>28}{}{}",
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
            figure_cells,
            if with_objectives {
                format!("  {}", objectives_summary(&row.objectives))
            } else {
                String::new()
            },
        );
    }
    out
}

/// The percentile a table shows for a figure's worse tail: p10 where higher is
/// better (the rate 90 % of measurements reached), p95 otherwise.
fn tail_percentile(figure: Figure) -> u8 {
    if figure.higher_is_better() {
        10
    } else {
        95
    }
}

/// A figure's value as a table shows it, in [`unit_label`]'s unit: one decimal, two
/// for a share (0.25 %).
fn in_unit(figure: Figure, value: u64) -> String {
    match figure.unit() {
        // Shown a thousand times larger than they are kept.
        Unit::Kbps | Unit::Us => format!("{:.1}", value as f64 / 1000.0),
        Unit::Ppm => format!("{:.2}", value as f64 / 10_000.0),
    }
}

/// The unit [`in_unit`] writes.
fn unit_label(figure: Figure) -> &'static str {
    match figure.unit() {
        Unit::Kbps => "Mbit/s",
        Unit::Us => "ms",
        Unit::Ppm => "%",
    }
}

/// `met 2/2`, or `BREACHED ttfb p95 +312.0 ms; availability -0.4 pts; met 1/3`. A
/// breach whose interval still reaches its limit says `(inconclusive)` after itself;
/// met objectives whose intervals do say how many: `met 2/2 (1 inconclusive)`.
fn objectives_summary(outcomes: &[ObjectiveOutcome]) -> String {
    let breached: Vec<String> = outcomes
        .iter()
        .filter(|o| o.met == Some(false))
        .map(|o| {
            let over = -o.margin.unwrap_or(0.0);
            let unsure = if o.conclusive == Some(true) {
                ""
            } else {
                " (inconclusive)"
            };
            match (
                o.objective.latency_figure(),
                o.objective.figure,
                o.objective.percentile,
            ) {
                (Some(latency), _, Some(p)) => format!("{latency} p{p} +{over:.1} ms{unsure}"),
                (_, Some(figure), Some(p)) if o.objective.is_share() => {
                    format!("{figure} p{p} +{over:.2} %{unsure}")
                }
                (_, Some(figure), Some(p)) => {
                    // Rates are kept in kbit/s and read in Mbit/s, as the table's columns.
                    format!("{figure} p{p} -{:.1} Mbit/s{unsure}", over / 1000.0)
                }
                _ => format!("availability -{over:.2} pts{unsure}"),
            }
        })
        .collect();
    let met: Vec<&ObjectiveOutcome> = outcomes.iter().filter(|o| o.met == Some(true)).collect();
    let unsure_met = met.iter().filter(|o| o.conclusive != Some(true)).count();
    let met_text = match (met.len(), unsure_met) {
        (0, _) => String::new(),
        (n, 0) => format!("met {n}/{}", outcomes.len()),
        (n, u) => format!("met {n}/{} ({u} inconclusive)", outcomes.len()),
    };
    if !breached.is_empty() {
        let mut text = format!("BREACHED {}", breached.join("; "));
        if !met_text.is_empty() {
            text.push_str("; ");
            text.push_str(&met_text);
        }
        text
    } else if !met_text.is_empty() {
        met_text
    } else if outcomes.is_empty() {
        "-".into()
    } else {
        "no data".into()
    }
}

/// The merged histograms of a report built with `histograms`, as an HdrHistogram
/// interval log (the text format HdrHistogram's own tools read: `HistogramLogReader`,
/// `HistogramLogProcessor`): a `#[StartTime: ...]` header at the window start, then one
/// line per row and phase, each tagged `Tag=class=dsl;country=DE;phase=ttfb` (the row's
/// group; characters the format forbids become `_`), and per row and other figure it
/// has, tagged `...;figure=goodput`, covering the whole window, with the histogram (the
/// phases' in microseconds, goodput's in kbit/s) as base64 of the compressed V2
/// encoding (deflate), which is what the log format prescribes.
pub fn to_interval_log(report: &Report) -> Result<String> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;

    let start = std::time::Duration::from_micros(to_us(report.window.from).max(0) as u64);
    let length = std::time::Duration::from_micros(
        (to_us(report.window.to) - to_us(report.window.from)).max(0) as u64,
    );
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let io = |e: std::io::Error| Error::Internal(format!("cannot write interval log: {e}"));
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "Lastmile report of check {} ({}); phases in microseconds, goodput in kbit/s",
                report.check.id, report.check.name
            ))
            .with_start_time(std::time::UNIX_EPOCH + start)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(io)?;
        for row in &report.rows {
            for (figure, encoded) in &row.histograms {
                let bytes = BASE64
                    .decode(encoded)
                    .map_err(|e| Error::Internal(format!("bad histogram encoding: {e}")))?;
                let h = histogram::decode(&bytes).map_err(Error::Internal)?;
                let kind = if figure.phase().is_some() {
                    "phase"
                } else {
                    "figure"
                };
                let tag = format!("{};{kind}={figure}", group_tag(&row.group))
                    .replace([',', ' ', '\r', '\n'], "_");
                let row_start = row.group.bucket_start.map_or(start, |b| {
                    std::time::Duration::from_micros(to_us(b).max(0) as u64)
                });
                let row_length = report
                    .bucket
                    .filter(|_| row.group.bucket_start.is_some())
                    .map_or(length, |b| {
                        std::time::Duration::from_micros(b.micros().max(0) as u64)
                    });
                log.write_histogram(&h, row_start, row_length, Tag::new(&tag))
                    .map_err(|e| Error::Internal(format!("cannot write interval log: {e:?}")))?;
            }
        }
    }
    String::from_utf8(out).map_err(|e| Error::Internal(e.to_string()))
}

/// `class=dsl;country=DE`: a row's group as `key=value` pairs.
fn group_tag(g: &Group) -> String {
    let mut parts = Vec::new();
    if let Some(b) = g.bucket_start {
        parts.push(format!("bucket={}", b.format("%Y-%m-%dT%H:%M:%SZ")));
    }
    if let Some(c) = g.connection_class {
        parts.push(format!("class={c}"));
    }
    if let Some(c) = &g.country {
        parts.push(format!("country={c}"));
    }
    if let Some(r) = &g.region {
        parts.push(format!("region={r}"));
    }
    if let Some(a) = g.asn {
        parts.push(format!("asn={a}"));
    }
    if parts.is_empty() {
        parts.push("all".into());
    }
    parts.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(line: &str, met: bool, margin: f64, conclusive: bool) -> ObjectiveOutcome {
        ObjectiveOutcome {
            objective: Objective::parse_line(line).unwrap(),
            met: Some(met),
            actual: None,
            actual_ci: None,
            conclusive: Some(conclusive),
            margin: Some(margin),
            bad_samples: 0,
            allowed_bad_samples: 0.0,
            error_budget_remaining: None,
        }
    }

    #[test]
    fn the_tables_objective_summary_says_each_breach_in_its_unit() {
        let summary = objectives_summary(&[
            outcome("ttfb p95 <= 300 ms", false, -99.1, false),
            outcome("goodput p10 >= 20 Mbit/s", false, -4_009.0, true),
            outcome("availability >= 99.5 %", true, 0.5, true),
        ]);
        assert_eq!(
            summary,
            "BREACHED ttfb p95 +99.1 ms (inconclusive); goodput p10 -4.0 Mbit/s; met 1/3"
        );
    }
}
