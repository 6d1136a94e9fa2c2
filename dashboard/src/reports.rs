//! A check's report page: percentiles over time per connection class, the latency
//! distribution, and the table by country × class with intervals and objectives.

use maud::{html, Markup, PreEscaped};

use crate::charts::{self, Series};
use crate::layout::{column_heads, page, Nav};

/// The windows offered, as (query value, label).
pub const WINDOWS: [(&str, &str); 4] = [
    ("1h", "Last hour"),
    ("24h", "24 hours"),
    ("7d", "7 days"),
    ("30d", "30 days"),
];

/// How an objective fared on one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Met,
    /// Breached by the whole interval.
    Breached,
    /// Breached as measured, but the interval still reaches the good side.
    AtRisk,
    NoData,
}

/// The report's verdict in one line, worst first: a breach (which objective, where),
/// else a risk, else all met; `None` without objectives or data. With its CSS class.
pub fn overall(rows: &[Row]) -> Option<(&'static str, String)> {
    let cells = || {
        rows.iter()
            .flat_map(|r| r.objectives.iter().map(move |o| (r, o)))
    };
    let place = |r: &Row| format!("{} in {}", r.class, r.country);
    let named = |verdict: Verdict| -> Vec<String> {
        cells()
            .filter(|(_, o)| o.verdict == verdict)
            .map(|(r, o)| format!("{} for {}", o.objective, place(r)))
            .collect()
    };
    let list = |items: Vec<String>| {
        let n = items.len();
        let shown: Vec<String> = items.into_iter().take(3).collect();
        let more = if n > 3 {
            format!(" and {} more", n - 3)
        } else {
            String::new()
        };
        format!("{}{more}", shown.join("; "))
    };
    let breached = named(Verdict::Breached);
    if !breached.is_empty() {
        return Some(("bad", format!("Breached: {}", list(breached))));
    }
    let at_risk = named(Verdict::AtRisk);
    if !at_risk.is_empty() {
        return Some((
            "warn",
            format!(
                "At risk: {} (measured over the limit, but the interval still reaches it: more samples will tell)",
                list(at_risk)
            ),
        ));
    }
    let met = cells().filter(|(_, o)| o.verdict == Verdict::Met).count();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    (met > 0).then(|| {
        (
            "ok",
            format!(
                "All objectives met ({} over {})",
                plural(met, "judgement"),
                plural(rows.len(), "row")
            ),
        )
    })
}

/// One objective on one row: "ttfb p95 <= 800 ms", its verdict, and a detail line
/// ("612 ms, budget 71 % left").
#[derive(Debug, Clone)]
pub struct ObjectiveCell {
    pub objective: String,
    pub verdict: Verdict,
    /// The interval straddles the limit or is missing: more samples may change it.
    pub inconclusive: bool,
    pub detail: String,
}

/// One row of the table, already written as people read it.
#[derive(Debug, Clone)]
pub struct Row {
    pub class: String,
    pub country: String,
    pub samples: u64,
    /// "99.2 %"
    pub availability: String,
    /// "[97.1, 99.9] %" or a note on too few samples.
    pub availability_ci: String,
    pub p50: String,
    pub p50_ci: String,
    pub p95: String,
    pub p95_ci: String,
    /// The total time's (for a page check: the page total's) p50 and p95.
    pub total_p50: String,
    pub total_p50_ci: String,
    pub total_p95: String,
    pub total_p95_ci: String,
    /// One cell per head of [`ReportView::figure_heads`], in order: a figure's
    /// percentile ("12.4 Mbit/s", "288 ms") and its interval, "–" when the row's
    /// measurements gave none (bodies under 64 KiB have no goodput).
    pub figures: Vec<FigureCell>,
    pub objectives: Vec<ObjectiveCell>,
}

/// A figure's percentile and its interval line.
#[derive(Debug, Clone)]
pub struct FigureCell {
    pub value: String,
    pub ci: String,
}

/// One country: its figures and the verdict of the objectives that apply to it.
#[derive(Debug, Clone)]
pub struct CountryRow {
    pub country: String,
    pub samples: u64,
    pub availability: String,
    pub ttfb_p95: String,
    /// "met", "at risk", "breached", "no objectives" or "no data".
    pub verdict: String,
}

/// Everything the report page shows.
#[derive(Debug, Clone)]
pub struct ReportView {
    pub check_id: String,
    pub check_name: String,
    /// The selected window's query value (`24h`).
    pub window: String,
    /// "2026-11-30 00:00 – 2026-12-01 00:00 UTC"
    pub covered: String,
    /// "95 %"
    pub confidence: String,
    /// The window's x range, unix seconds.
    pub from_s: i64,
    pub to_s: i64,
    /// "hourly" or "daily" buckets.
    pub bucket_label: String,
    /// Per class: ttfb and total p50 and p95 over time (same order, same colours).
    pub ttfb_p50: Vec<Series>,
    pub ttfb_p95: Vec<Series>,
    pub total_p50: Vec<Series>,
    pub total_p95: Vec<Series>,
    /// (value µs, count) of the merged ttfb histogram over all rows.
    pub ttfb_distribution: Vec<(u64, u64)>,
    /// The same per connection class (same colours as the charts over time).
    pub ttfb_by_class: Vec<charts::Distribution>,
    pub rows: Vec<Row>,
    pub csv_url: String,
    pub json_url: String,
    pub total_samples: u64,
    /// "Total", or "Page total" for a page check.
    pub total_label: String,
    /// By country, each coloured by its verdict.
    pub countries: Vec<CountryRow>,
    /// Heads of the columns of figures besides the phases that some row has (goodput,
    /// idle and loaded latency), two a figure: "Goodput p50", "Goodput p10".
    pub figure_heads: Vec<String>,
    /// A chart over time per figure besides the phases that the report has.
    pub figure_charts: Vec<FigureChart>,
}

/// One figure's worse tail over time, per class.
#[derive(Debug, Clone)]
pub struct FigureChart {
    /// The element id ("goodput-p10").
    pub id: String,
    /// "Goodput, p10 (the rate 90 % of measurements reached)".
    pub title: String,
    /// What the y axis counts: "Mbit/s" or "ms".
    pub unit: &'static str,
    pub series: Vec<Series>,
}

/// The report table's column heads: a figure's only when some row has it.
fn table_heads<'a>(
    total_p50: &'a str,
    total_p95: &'a str,
    figure_heads: &'a [String],
) -> Vec<&'a str> {
    let mut heads = vec![
        "Class",
        "Country",
        "Samples",
        "Availability",
        "TTFB p50",
        "TTFB p95",
        total_p50,
        total_p95,
    ];
    heads.extend(figure_heads.iter().map(String::as_str));
    heads.push("Objectives");
    heads
}

pub fn report(nav: &Nav, r: &ReportView) -> Markup {
    let (hist, _) = charts::distribution("Time to first byte", &r.ttfb_distribution);
    let cdf = charts::class_cdf("Time to first byte by connection class", &r.ttfb_by_class);
    let charts_over_time = [
        ("ttfb-p50", "Time to first byte, median (p50)", &r.ttfb_p50),
        ("ttfb-p95", "Time to first byte, p95", &r.ttfb_p95),
        ("total-p50", "Total time, median (p50)", &r.total_p50),
        ("total-p95", "Total time, p95", &r.total_p95),
    ];
    page(
        &format!("Report · {}", r.check_name),
        Some(nav),
        html! {
            p.crumbs {
                a href="/app/checks" { "Checks" } " / "
                a href={ "/app/checks/" (r.check_id) } { (r.check_name) } " / report"
            }
            div.headline {
                h1 { "Report" }
                nav.tabs aria-label="Window" {
                    @for (value, label) in WINDOWS {
                        @if value == r.window {
                            a.tab.current href={ "?window=" (value) } aria-current="page" { (label) }
                        } @else {
                            a.tab href={ "?window=" (value) } { (label) }
                        }
                    }
                }
            }
            p.meta {
                (r.covered) " · " (r.total_samples) " measurements · intervals at " (r.confidence)
            }
            @if let Some((class, text)) = overall(&r.rows) {
                p.verdict.(class) #verdict role="status" { (text) }
            }
            div.actions {
                a.button.secondary href=(r.csv_url) download { "Download CSV" }
                a.button.secondary href=(r.json_url) { "JSON" }
            }
            @if r.total_samples == 0 {
                section.card {
                    p.empty { "No measurements in this window yet. Runs appear here as agents report; try a longer window or "
                        a href={ "/app/checks/" (r.check_id) } { "run the check now" } "." }
                }
            } @else {
                section.card {
                    h2 { "Percentiles over time " small.muted { "(" (r.bucket_label) ", by connection class)" } }
                    ul.legend aria-label="Connection classes" {
                        @for s in &r.ttfb_p95 {
                            li { span.swatch style={ "background:" (charts::color_css(s.color)) } {} (s.label) }
                        }
                    }
                    div.charts {
                        @for (id, title, series) in charts_over_time {
                            figure.chart id=(id) {
                                figcaption { (title) }
                                (PreEscaped(charts::time_chart(title, series, r.from_s, r.to_s)))
                            }
                        }
                        @for c in &r.figure_charts {
                            figure.chart id=(c.id) {
                                figcaption { (c.title) }
                                (PreEscaped(charts::time_chart_in(&c.title, &c.series, r.from_s, r.to_s, c.unit)))
                            }
                        }
                    }
                }
                section.card {
                    h2 { "Latency distribution " small.muted { "(time to first byte)" } }
                    div.charts {
                        figure.chart #ttfb-histogram {
                            figcaption { "All classes: share of measurements by time to first byte (up to p99)" }
                            (PreEscaped(hist))
                        }
                        figure.chart #ttfb-cdf {
                            figcaption { "Cumulative, per class: share of its measurements at or below each time" }
                            (PreEscaped(cdf))
                        }
                    }
                }
                h2 { "By country" }
                div.scroll {
                    table.countries {
                        caption.visually-hidden { "Countries coloured by the verdict of their objectives" }
                        (column_heads(&["Country", "Verdict", "Samples", "Availability", "TTFB p95"]))
                        tbody {
                            @for c in &r.countries {
                                tr.(c.verdict.replace(' ', "-")) {
                                    td { (c.country) }
                                    td { (crate::checks::verdict_badge(&c.verdict)) }
                                    td.num { (c.samples) }
                                    td.num { (c.availability) }
                                    td.num { (c.ttfb_p95) }
                                }
                            }
                        }
                    }
                }
                h2 { "By country and connection class" }
                div.scroll {
                    table.report {
                        caption.visually-hidden { "Report rows by country and connection class" }
                        @let total_p50 = format!("{} p50", r.total_label);
                        @let total_p95 = format!("{} p95", r.total_label);
                        (column_heads(&table_heads(&total_p50, &total_p95, &r.figure_heads)))
                        tbody {
                            @for row in &r.rows {
                                tr {
                                    td data-label="Class" { (row.class) }
                                    td data-label="Country" { (row.country) }
                                    td.num data-label="Samples" { (row.samples) }
                                    td.num data-label="Availability" { (row.availability) br; small { (row.availability_ci) } }
                                    td.num data-label="TTFB p50" { (row.p50) br; small { (row.p50_ci) } }
                                    td.num data-label="TTFB p95" { (row.p95) br; small { (row.p95_ci) } }
                                    td.num.total data-label=(total_p50) { (row.total_p50) br; small { (row.total_p50_ci) } }
                                    td.num.total data-label=(total_p95) { (row.total_p95) br; small { (row.total_p95_ci) } }
                                    @for (head, cell) in r.figure_heads.iter().zip(&row.figures) {
                                        td.num data-label=(head) { (cell.value) br; small { (cell.ci) } }
                                    }
                                    td.objectives data-label="Objectives" {
                                        @if row.objectives.is_empty() { span.muted { "none set" } }
                                        @for o in &row.objectives {
                                            div.objective {
                                                @match o.verdict {
                                                    Verdict::Met => span.badge.ok { "met" },
                                                    Verdict::Breached => span.badge.bad { "breached" },
                                                    Verdict::AtRisk => span.badge.warn { "at risk" },
                                                    Verdict::NoData => span.badge { "no data" },
                                                }
                                                " " (o.objective)
                                                @if !o.detail.is_empty() || o.inconclusive {
                                                    br;
                                                    small {
                                                        (o.detail)
                                                        @if o.inconclusive && o.verdict != Verdict::NoData {
                                                            @if !o.detail.is_empty() { " · " }
                                                            abbr.unsure title="The interval straddles the limit or is missing for lack of samples: more samples may change the verdict" { "not yet conclusive" }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(class: &str, cells: &[(&str, Verdict)]) -> Row {
        Row {
            class: class.into(),
            country: "DE".into(),
            samples: 100,
            availability: String::new(),
            availability_ci: String::new(),
            p50: String::new(),
            p50_ci: String::new(),
            p95: String::new(),
            p95_ci: String::new(),
            total_p50: String::new(),
            total_p50_ci: String::new(),
            total_p95: String::new(),
            total_p95_ci: String::new(),
            figures: Vec::new(),
            objectives: cells
                .iter()
                .map(|(o, v)| ObjectiveCell {
                    objective: (*o).into(),
                    verdict: v.clone(),
                    inconclusive: false,
                    detail: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn figure_columns_appear_only_when_some_row_has_the_figure() {
        let without = table_heads("Total p50", "Total p95", &[]);
        assert!(!without.iter().any(|h| h.starts_with("Goodput")));
        let heads = ["Goodput p50".to_owned(), "Goodput p10".to_owned()];
        let with = table_heads("Total p50", "Total p95", &heads);
        assert_eq!(with.len(), without.len() + 2);
        assert_eq!(
            with[with.len() - 3..],
            ["Goodput p50", "Goodput p10", "Objectives"]
        );
    }

    #[test]
    fn the_verdict_line_names_the_worst_first() {
        let rows = [
            row("dsl", &[("ttfb p95 <= 800 ms", Verdict::AtRisk)]),
            row(
                "cable",
                &[
                    ("ttfb p95 <= 800 ms", Verdict::Breached),
                    ("availability >= 99 %", Verdict::Met),
                ],
            ),
        ];
        assert_eq!(
            overall(&rows),
            Some((
                "bad",
                "Breached: ttfb p95 <= 800 ms for cable in DE".to_owned()
            ))
        );
        let (class, text) = overall(&rows[..1]).unwrap();
        assert_eq!(class, "warn");
        assert!(
            text.starts_with("At risk: ttfb p95 <= 800 ms for dsl in DE"),
            "{text}"
        );
        assert_eq!(
            overall(&[row("dsl", &[("availability >= 99 %", Verdict::Met)])]),
            Some((
                "ok",
                "All objectives met (1 judgement over 1 row)".to_owned()
            ))
        );
        assert_eq!(overall(&[row("dsl", &[])]), None);
    }
}
