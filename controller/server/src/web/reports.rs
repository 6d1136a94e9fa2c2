//! A check's report page. It builds the same [`lastmile_domain::reports::Report`]s the JSON API
//! serves (`reports::build`, three groupings of one window) and hands their figures to
//! the page: nothing here queries or computes what the API does not.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use lastmile_dashboard::charts::Series;
use lastmile_dashboard::reports::{
    self as pages, CountryRow, FigureCell, FigureChart, ObjectiveCell, ReportView, Row, Verdict,
};
use lastmile_protocol::{ConnectionClass, Figure, Phase, Unit};
use serde::Deserialize;

use super::error::{HasNav, OrPage, PageError};
use super::html;
use super::session::SignedInOwner;
use crate::state::AppState;
use lastmile_domain::checks;
use lastmile_domain::confidence::Confidence;
use lastmile_domain::error::Error;
use lastmile_domain::objectives::ObjectiveOutcome;
use lastmile_domain::reports::{
    self, Dimension, FigurePercentiles, Percentiles, Report, ReportQuery, TimeBucket,
};

#[derive(Debug, Default, Deserialize)]
pub struct ReportPageParams {
    /// `1h`, `24h` (default), `7d` or `30d`.
    window: Option<String>,
}

pub async fn report(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    params: web::Query<ReportPageParams>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let window = params.window.clone().unwrap_or_else(|| "24h".into());
    let (from, to) = reports::window(Some(&window), None, None).or_page(&user)?;
    // Hour buckets (what aggregates are kept at) up to a day; day buckets beyond.
    let bucket = match window.as_str() {
        "7d" | "30d" => TimeBucket::Day,
        _ => TimeBucket::Hour,
    };
    let id = id.into_inner();
    let last_hour = window == "1h";
    let recent_window = {
        let now = lastmile_domain::clock::now_us();
        (now - lastmile_domain::clock::HOUR_US, now + 1)
    };
    let built = state
        .db
        .run(move |c| {
            let check = checks::get(c, &owner, &id)?;
            let base = ReportQuery {
                from,
                to,
                group_by: Vec::new(),
                confidence: Confidence::default(),
                histograms: false,
                bucket: None,
                compare: false,
            };
            let over_time = reports::build(
                c,
                &check,
                &ReportQuery {
                    group_by: vec![Dimension::ConnectionClass],
                    bucket: Some(bucket),
                    ..base.clone()
                },
            )?;
            let table = reports::build(
                c,
                &check,
                &ReportQuery {
                    group_by: vec![Dimension::ConnectionClass, Dimension::Country],
                    ..base.clone()
                },
            )?;
            let overall = reports::build(
                c,
                &check,
                &ReportQuery {
                    histograms: true,
                    group_by: vec![Dimension::ConnectionClass],
                    ..base.clone()
                },
            )?;
            let by_country = reports::build(
                c,
                &check,
                &ReportQuery {
                    group_by: vec![Dimension::Country],
                    ..base
                },
            )?;
            // The last hour in 5-minute slots from the raw results (hour cells would
            // draw one dot per class).
            let recent = if last_hour {
                // The last 60 minutes, not the clock hour the named window means.
                let (from, to) = recent_window;
                Some(lastmile_domain::recent::slots(c, &check.id, from, to)?)
            } else {
                None
            };
            Ok::<_, Error>((check, over_time, table, overall, by_country, recent))
        })
        .await;
    let (check, over_time, table, overall, by_country, recent) = built.or_page(&user)?;
    let api = format!(
        "/api/v1/checks/{}/report?window={window}&group_by=connection_class,country",
        check.id
    );
    let figures = table_figures(&table);
    let view = ReportView {
        check_id: check.id.clone(),
        check_name: check.name.clone(),
        window: window.clone(),
        covered: format!(
            "{} – {} UTC",
            table.window.from.format("%Y-%m-%d %H:%M"),
            table.window.to.format("%Y-%m-%d %H:%M")
        ),
        confidence: format!("{} %", table.confidence.level() * 100.0),
        from_s: match &recent {
            Some(_) => recent_window.0.div_euclid(1_000_000),
            None => table.window.from.timestamp(),
        },
        to_s: match &recent {
            Some(_) => recent_window.1.div_euclid(1_000_000),
            None => table.window.to.timestamp(),
        },
        bucket_label: match (&recent, bucket) {
            (Some(_), _) => "5-minute slots of the last 60 minutes".into(),
            (None, TimeBucket::Day) => "daily".into(),
            (None, TimeBucket::Hour) => "hourly".into(),
        },
        ttfb_p50: match &recent {
            Some(slots) => slot_series(slots, |s| s.ttfb_p50),
            None => series(&over_time, Phase::Ttfb, |p| p.p50),
        },
        ttfb_p95: match &recent {
            Some(slots) => slot_series(slots, |s| s.ttfb_p95),
            None => series(&over_time, Phase::Ttfb, |p| p.p95),
        },
        total_p50: match &recent {
            Some(slots) => slot_series(slots, |s| s.total_p50),
            None => series(&over_time, Phase::Total, |p| p.p50),
        },
        total_p95: match &recent {
            Some(slots) => slot_series(slots, |s| s.total_p95),
            None => series(&over_time, Phase::Total, |p| p.p95),
        },
        ttfb_distribution: distribution(&overall.rows, Phase::Ttfb),
        ttfb_by_class: overall
            .rows
            .iter()
            .map(|row| lastmile_dashboard::charts::Distribution {
                label: row
                    .group
                    .connection_class
                    .map_or_else(|| "unknown".into(), |c| c.to_string()),
                color: color_of(row.group.connection_class),
                samples: distribution(std::slice::from_ref(row), Phase::Ttfb),
            })
            .collect(),
        rows: table.rows.iter().map(|r| row(r, &figures)).collect(),
        csv_url: format!("{api}&format=csv"),
        json_url: api,
        total_samples: overall.rows.iter().map(|r| r.samples).sum(),
        countries: by_country.rows.iter().map(country_row).collect(),
        figure_heads: figure_heads(&figures),
        // The last hour's view is 5-minute slots of the raw results' phases; the
        // figures' charts come from the aggregates' buckets, the other windows.
        figure_charts: match &recent {
            Some(_) => Vec::new(),
            None => figure_charts(&over_time),
        },
        // A page check's total is the whole page's, its point.
        total_label: if check.kind == "page" {
            "Page total".into()
        } else {
            "Total".into()
        },
    };
    Ok(html(StatusCode::OK, pages::report(&user.nav(), &view)))
}

/// A class keeps its colour on every chart: its place in speed order.
fn color_of(class: Option<ConnectionClass>) -> usize {
    class
        .and_then(|c| ConnectionClass::ALL.iter().position(|x| *x == c))
        .unwrap_or(ConnectionClass::ALL.len())
}

/// One series per connection class from the last hour's slots.
fn slot_series(
    slots: &[lastmile_domain::recent::Slot],
    pick: fn(&lastmile_domain::recent::Slot) -> u64,
) -> Vec<Series> {
    let mut out: Vec<(Option<ConnectionClass>, Series)> = Vec::new();
    for slot in slots {
        let point = (slot.start.div_euclid(1_000_000), pick(slot) as f64 / 1000.0);
        match out.iter_mut().find(|(c, _)| *c == slot.class) {
            Some((_, s)) => s.points.push(point),
            None => out.push((
                slot.class,
                Series {
                    label: slot
                        .class
                        .map_or_else(|| "unknown".into(), |c| c.to_string()),
                    points: vec![point],
                    color: color_of(slot.class),
                },
            )),
        }
    }
    out.sort_by_key(|(c, _)| color_of(*c));
    out.into_iter()
        .map(|(_, mut s)| {
            s.points.sort_by_key(|p| p.0);
            s
        })
        .collect()
}

/// One series per connection class of a report grouped by class and time bucket.
fn series(report: &Report, phase: Phase, pick: fn(&Percentiles) -> u64) -> Vec<Series> {
    series_of(report, |row| {
        row.phases.get(&phase).map(|p| pick(p) as f64 / 1000.0)
    })
}

/// One series per class of the value `value_of` finds in each of the report's buckets
/// (rows without one are left out), points in time order, classes in colour order.
fn series_of(
    report: &Report,
    value_of: impl Fn(&reports::ReportRow) -> Option<f64>,
) -> Vec<Series> {
    let mut out: Vec<(Option<ConnectionClass>, Series)> = Vec::new();
    for row in &report.rows {
        let (Some(start), Some(value)) = (row.group.bucket_start, value_of(row)) else {
            continue;
        };
        let class = row.group.connection_class;
        let point = (start.timestamp(), value);
        match out.iter_mut().find(|(c, _)| *c == class) {
            Some((_, s)) => s.points.push(point),
            None => out.push((
                class,
                Series {
                    label: class.map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
                    points: vec![point],
                    color: color_of(class),
                },
            )),
        }
    }
    out.sort_by_key(|(c, _)| color_of(*c));
    out.into_iter()
        .map(|(_, mut s)| {
            s.points.sort_by_key(|p| p.0);
            s
        })
        .collect()
}

/// (value µs, count) of a phase's merged histogram (the report's `histograms` export).
/// A country's row: its figures and the worst verdict of the objectives that apply to
/// the whole country (class-specific ones are judged in the class table).
fn country_row(r: &reports::ReportRow) -> CountryRow {
    let cells: Vec<ObjectiveCell> = r.objectives.iter().map(objective).collect();
    let verdict = if cells.iter().any(|c| c.verdict == Verdict::Breached) {
        "breached"
    } else if cells.iter().any(|c| c.verdict == Verdict::AtRisk) {
        "at risk"
    } else if cells.iter().any(|c| c.verdict == Verdict::Met) {
        "met"
    } else if cells.is_empty() {
        "no objectives"
    } else {
        "no data"
    };
    let (p95, _) = percentile(r.phases.get(&Phase::Ttfb), |p| (p.p95, p.p95_ci));
    CountryRow {
        country: r.group.country.clone().unwrap_or_else(|| "unknown".into()),
        samples: r.samples,
        availability: format!("{:.1} %", r.availability * 100.0),
        ttfb_p95: p95,
        verdict: verdict.into(),
    }
}

/// The recorded (value µs, count) pairs of `rows`' merged histograms of `phase`.
fn distribution(rows: &[reports::ReportRow], phase: Phase) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for row in rows {
        let Some(encoded) = row.histograms.get(&Figure::from(phase)) else {
            continue;
        };
        let Ok(bytes) = BASE64.decode(encoded) else {
            continue;
        };
        let Ok(h) = lastmile_domain::histogram::decode(&bytes) else {
            continue;
        };
        for v in h.iter_recorded() {
            out.push((
                h.highest_equivalent(v.value_iterated_to()),
                v.count_at_value(),
            ));
        }
    }
    out
}

/// "12.3 ms" ("123 ms" from 100 ms on) from microseconds.
pub(super) fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The figure and its interval line, or why there is no interval.
fn percentile(
    p: Option<&Percentiles>,
    pick: fn(&Percentiles) -> (u64, Option<[u64; 2]>),
) -> (String, String) {
    match p {
        None => ("–".into(), String::new()),
        Some(p) => {
            let (v, ci) = pick(p);
            (
                ms(v),
                match ci {
                    Some([lo, hi]) => format!("{} – {}", ms(lo), ms(hi)),
                    None => format!("no interval yet ({} samples)", p.samples),
                },
            )
        }
    }
}

/// "12.4 Mbit/s" ("850 kbit/s" below one, "1.25 Gbit/s" from 1,000 on) from kbit/s.
/// Parts per million as a share: "0.25 %".
pub(super) fn percent(ppm: u64) -> String {
    format!("{:.2} %", ppm as f64 / 10_000.0)
}

pub(super) fn kbps(kbps: u64) -> String {
    let k = kbps as f64;
    if k >= 1_000_000.0 {
        format!("{:.2} Gbit/s", k / 1_000_000.0)
    } else if k >= 1_000.0 {
        format!("{:.1} Mbit/s", k / 1_000.0)
    } else {
        format!("{k:.0} kbit/s")
    }
}

/// The percentiles the table shows of a figure besides the phases: its median and its
/// worse tail's (p10 of a rate, p95 of a latency).
fn shown_percentiles(figure: Figure) -> [u8; 2] {
    if figure.higher_is_better() {
        [50, 10]
    } else {
        [50, 95]
    }
}

/// The figures besides the phases that some row of the table has, in report order.
fn table_figures(table: &reports::Report) -> Vec<Figure> {
    Figure::OTHERS
        .into_iter()
        .filter(|f| table.rows.iter().any(|r| r.figures.contains_key(f)))
        .collect()
}

/// A figure's name as the dashboard writes it.
fn figure_name(figure: Figure) -> &'static str {
    match figure {
        Figure::Goodput => "Goodput",
        Figure::IdleLatency => "Idle latency",
        Figure::LoadedLatency => "Loaded latency",
        Figure::StartupDelay => "Start-up delay",
        Figure::StallTime => "Stall time",
        Figure::Rtt => "Round trip",
        Figure::Jitter => "Jitter",
        Figure::Loss => "Loss",
        other => other.as_str(),
    }
}

/// One chart over time per figure besides the phases that the report's buckets have:
/// its worse tail per class (p10 of goodput, p95 of a latency), what objectives bound.
fn figure_charts(over_time: &Report) -> Vec<FigureChart> {
    Figure::OTHERS
        .into_iter()
        .filter(|f| over_time.rows.iter().any(|r| r.figures.contains_key(f)))
        .map(|figure| {
            let [_, tail] = shown_percentiles(figure);
            FigureChart {
                id: format!("{figure}-p{tail}").replace('_', "-"),
                title: if figure.higher_is_better() {
                    format!(
                        "{}, p{tail} (the rate {} % of measurements reached)",
                        figure_name(figure),
                        100 - u32::from(tail)
                    )
                } else {
                    format!("{}, p{tail}", figure_name(figure))
                },
                unit: match figure.unit() {
                    Unit::Kbps => "Mbit/s",
                    Unit::Us => "ms",
                    Unit::Ppm => "%",
                },
                series: figure_series(over_time, figure, tail),
            }
        })
        .collect()
}

/// Per class, a figure's pNN in each bucket, in the unit its chart shows (Mbit/s, ms,
/// %).
fn figure_series(report: &Report, figure: Figure, percentile: u8) -> Vec<Series> {
    let per_shown = match figure.unit() {
        // kbit/s to Mbit/s, µs to ms: both a thousandth.
        Unit::Kbps | Unit::Us => 1000.0,
        Unit::Ppm => 10_000.0,
    };
    series_of(report, |row| {
        let p = row.figures.get(&figure)?.get(percentile)?;
        Some(p.value as f64 / per_shown)
    })
}

/// "Goodput p50", "Goodput p10", "Loaded latency p50", ...: two heads per figure.
fn figure_heads(figures: &[Figure]) -> Vec<String> {
    figures
        .iter()
        .flat_map(|&f| shown_percentiles(f).map(|nn| format!("{} p{nn}", figure_name(f))))
        .collect()
}

/// A figure's pNN and its interval line, in its unit, or why there is no interval.
fn figure_cell(figure: Figure, f: Option<&FigurePercentiles>, percentile: u8) -> FigureCell {
    let shown = |v: u64| match figure.unit() {
        Unit::Kbps => kbps(v),
        Unit::Us => ms(v),
        Unit::Ppm => percent(v),
    };
    match f.and_then(|f| Some((f, f.get(percentile)?))) {
        None => FigureCell {
            value: "–".into(),
            ci: String::new(),
        },
        Some((f, p)) => FigureCell {
            value: shown(p.value),
            ci: match p.ci {
                Some([lo, hi]) => format!("{} – {}", shown(lo), shown(hi)),
                None => format!("no interval yet ({} samples)", f.samples),
            },
        },
    }
}

fn row(r: &reports::ReportRow, figures: &[Figure]) -> Row {
    let ttfb = r.phases.get(&Phase::Ttfb);
    let (p50, p50_ci) = percentile(ttfb, |p| (p.p50, p.p50_ci));
    let (p95, p95_ci) = percentile(ttfb, |p| (p.p95, p.p95_ci));
    let total = r.phases.get(&Phase::Total);
    let (total_p50, total_p50_ci) = percentile(total, |p| (p.p50, p.p50_ci));
    let (total_p95, total_p95_ci) = percentile(total, |p| (p.p95, p.p95_ci));
    Row {
        figures: figures
            .iter()
            .flat_map(|&f| shown_percentiles(f).map(|nn| figure_cell(f, r.figures.get(&f), nn)))
            .collect(),
        total_p50,
        total_p50_ci,
        total_p95,
        total_p95_ci,
        class: r
            .group
            .connection_class
            .map_or_else(|| "unknown".into(), |c| c.to_string()),
        country: r.group.country.clone().unwrap_or_default(),
        samples: r.samples,
        availability: format!("{:.1} %", r.availability * 100.0),
        availability_ci: match r.availability_ci {
            Some([lo, hi]) => format!("{:.1} – {:.1} %", lo * 100.0, hi * 100.0),
            None => String::new(),
        },
        p50,
        p50_ci,
        p95,
        p95_ci,
        objectives: r.objectives.iter().map(objective).collect(),
    }
}

fn objective(o: &ObjectiveOutcome) -> ObjectiveCell {
    let latency = o.objective.phase.is_some();
    let rate = o.objective.figure.is_some();
    let mut detail = Vec::new();
    if let Some(a) = o.actual {
        detail.push(if latency {
            format!("actual {a:.0} ms")
        } else if rate {
            format!("actual {}", kbps(a.max(0.0) as u64))
        } else {
            format!("actual {a:.2} %")
        });
    }
    let bad = if latency || rate { "slow" } else { "failed" };
    if let Some(left) = o.error_budget_remaining {
        detail.push(if left >= 0.0 {
            format!("error budget {:.0} % left", left * 100.0)
        } else {
            // "overspent 1900 %" read as nonsense: say what happened instead.
            format!(
                "error budget spent: {} {bad} where {:.1} were allowed",
                o.bad_samples, o.allowed_bad_samples
            )
        });
    }
    ObjectiveCell {
        objective: o.objective.to_line(),
        verdict: match (o.met, o.conclusive) {
            (Some(true), _) => Verdict::Met,
            (Some(false), Some(true)) => Verdict::Breached,
            // Breached as measured, but the interval still reaches the good side.
            (Some(false), _) => Verdict::AtRisk,
            (None, _) => Verdict::NoData,
        },
        inconclusive: o.conclusive != Some(true),
        detail: detail.join(" · "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_the_unit_that_fits() {
        assert_eq!(kbps(55), "55 kbit/s");
        assert_eq!(kbps(8_389), "8.4 Mbit/s");
        assert_eq!(kbps(800_000), "800.0 Mbit/s");
        assert_eq!(kbps(2_500_000), "2.50 Gbit/s");
    }
}
