//! One run of a check: what each agent saw, one row per result.
//!
//! The check page answers "did my runs complete"; this page answers "what happened this
//! time" for one of them, from the same listing the API's run results endpoint serves.
//! On a phone the table turns into one card per result (the report table's layout), so
//! long addresses and redirect URLs wrap instead of making the page scroll sideways.

use maud::{html, Markup};

use crate::layout::{column_heads, refreshing_page, Nav};

/// One redirect followed: its (3xx) status, the URL requested and where it pointed.
#[derive(Debug, Clone)]
pub struct HopItem {
    pub status: u16,
    pub url: String,
    pub location: String,
}

/// One agent's result, already written out as people read it.
#[derive(Debug, Clone)]
pub struct ResultRow {
    /// Measured (else declared) connection class.
    pub class: String,
    /// "DE · AS3320", or "unknown location".
    pub place: String,
    /// The final HTTP status, when one arrived.
    pub status: Option<u16>,
    /// The stable error code and the agent's detail, on failure.
    pub error: Option<(String, String)>,
    /// "12.3 ms".
    pub ttfb: String,
    pub total: String,
    /// "8.4 Mbit/s": the body's goodput, for a body large enough to have one.
    pub goodput: Option<String>,
    /// "41.0 ms idle, 288 ms loaded": a throughput load's round trip before and under
    /// its load; a video session's start and stalls; a udp stream's round trip, jitter
    /// and loss.
    pub latency_under_load: Option<String>,
    /// "127.0.0.1", when the agent reported an address.
    pub remote_addr: Option<String>,
    /// "IPv4" / "IPv6".
    pub ip_version: Option<String>,
    /// "HTTP/1.1", "HTTP/2".
    pub http_version: Option<String>,
    /// How many redirects the agent reported (may exceed `hops` when the list was cut).
    pub redirect_count: u32,
    pub hops: Vec<HopItem>,
    /// A page check's summary.
    pub page: Option<PageItem>,
    /// Arrived after its lease ran out: kept, not counted.
    pub late: bool,
    /// The verification rules that flagged it (empty when not flagged).
    pub flag_rules: Vec<String>,
    pub flagged: bool,
}

/// What a page load fetched, as the run page shows it.
#[derive(Debug, Clone)]
pub struct PageItem {
    /// "12 resources · 340.2 kB".
    pub summary: String,
    /// "image https://shop.example/hero.jpg (812.0 ms)".
    pub slowest: Option<String>,
    /// Each sub-resource that failed: "image https://cdn.example/a.png: http_status 404".
    pub failed: Vec<String>,
}

/// The run's heading facts.
#[derive(Debug, Clone)]
pub struct RunHeader {
    pub check_id: String,
    pub check_name: String,
    pub url: String,
    /// "2026-11-30 22:10:05 UTC".
    pub started: String,
    /// "2 / 2 measured · finished".
    pub progress: String,
    /// A page check: show the page column.
    pub is_page: bool,
    /// Still measuring: the page reloads itself, so results appear as they arrive.
    pub in_progress: bool,
}

pub fn results(nav: &Nav, run: &RunHeader, rows: &[ResultRow]) -> Markup {
    let title = format!("Run of {}", run.started);
    refreshing_page(
        &title,
        Some(nav),
        run.in_progress.then_some(2),
        html! {
            p.crumbs {
                a href="/app/checks" { "Checks" } " / "
                a href={ "/app/checks/" (run.check_id) } { (run.check_name) } " / run"
            }
            h1 { "Run started " (run.started) }
            p.meta { code { (run.url) } " · " (run.progress)
                @if run.in_progress { " · " span.badge.warn #live { "live: updates every 2 s" } } }
            @if rows.is_empty() {
                p.empty { "No results yet, or they have aged out (raw results are kept for a while; the report keeps the aggregates)." }
            } @else {
                div.scroll {
                    table.report.results #results {
                        @let heads = ["Agent", "Outcome", "TTFB", "Total", "Connection", "Redirects", "Page"];
                        (column_heads(if run.is_page { &heads } else { &heads[..6] }))
                        tbody {
                            @for r in rows { (row(run, r)) }
                        }
                    }
                }
                p.meta { "TTFB and total include the time spent on redirects. Flagged results are kept but left out of reports and not charged." }
            }
        },
    )
}

fn row(run: &RunHeader, r: &ResultRow) -> Markup {
    html! {
        tr.result {
            td data-label="Agent" { (r.class) br; small.place { (r.place) } }
            td.outcome data-label="Outcome" {
                @match (&r.error, r.status) {
                    (Some((kind, _)), _) => span.badge.bad.status { (kind) },
                    (None, Some(s)) => span.badge.ok.status { (s) },
                    (None, None) => span.badge.status { "no status" },
                }
                @if let (Some(_), Some(s)) = (&r.error, r.status) { " " small { "status " (s) } }
                @if let Some((_, message)) = &r.error {
                    @if !message.is_empty() { br; small.detail { (message) } }
                }
                @if r.late { " " span.badge.warn title="Arrived after its lease ran out: kept, not counted" { "late" } }
                @if r.flagged {
                    br;
                    span.badge.warn.flagged { "flagged" }
                    " " small.rules {
                        @if r.flag_rules.is_empty() { "rule not recorded" }
                        @else { (r.flag_rules.join(", ")) }
                    }
                }
            }
            td.num data-label="TTFB" { (r.ttfb) }
            td.num data-label="Total" {
                (r.total)
                @if let Some(g) = &r.goodput { br; small.goodput title="Goodput: body bytes over the body's transfer time" { (g) } }
                @if let Some(l) = &r.latency_under_load { br; small.latency title="What the check's kind measured besides the phases: a load's round trip before and under it, a video session's start and stalls, a udp stream's round trip, jitter and loss" { (l) } }
            }
            td.connection data-label="Connection" {
                @match &r.remote_addr {
                    Some(a) => code.remote { (a) },
                    None => span.muted { "no address" },
                }
                @if let Some(v) = &r.ip_version { " " small.ip { (v) } }
                br;
                small.http { @match &r.http_version { Some(v) => (v), None => "no response" } }
            }
            td.hops data-label="Redirects" {
                @if r.redirect_count == 0 { span.muted { "none" } }
                @else {
                    (r.redirect_count)
                    @if (r.hops.len() as u64) < u64::from(r.redirect_count) {
                        " " small.muted { "(" (r.hops.len()) " listed)" }
                    }
                }
                @if !r.hops.is_empty() {
                    ol.hops {
                        @for h in &r.hops {
                            li.hop { strong { (h.status) } " " code { (h.url) } " → " code { (h.location) } }
                        }
                    }
                }
            }
            @if run.is_page {
                td.page data-label="Page" {
                    @match &r.page {
                        Some(page) => {
                            (page.summary)
                            @if let Some(s) = &page.slowest { br; small { "slowest: " (s) } }
                            @if !page.failed.is_empty() {
                                br;
                                span.badge.warn { (page.failed.len()) " failed" }
                                ul.failed {
                                    @for f in &page.failed { li { small { (f) } } }
                                }
                            }
                        }
                        None => span.muted { "no page summary" },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn nav() -> Nav {
        Nav {
            name: "Shop".into(),
            email: "a@shop.example".into(),
            role: Role::Owner,
            csrf: "t".into(),
        }
    }

    fn row() -> ResultRow {
        ResultRow {
            class: "dsl".into(),
            place: "DE · AS3320".into(),
            status: Some(200),
            error: None,
            ttfb: "12.0 ms".into(),
            total: "40.0 ms".into(),
            goodput: None,
            latency_under_load: None,
            remote_addr: Some("2001:db8::1".into()),
            ip_version: Some("IPv6".into()),
            http_version: Some("HTTP/2".into()),
            redirect_count: 3,
            hops: vec![HopItem {
                status: 301,
                url: "http://shop.example/".into(),
                location: "https://shop.example/".into(),
            }],
            page: Some(PageItem {
                summary: "12 resources · 340.2 kB".into(),
                slowest: Some("image /a.png (90.0 ms)".into()),
                failed: vec!["image https://cdn.shop.example/b.png: http_status 404".into()],
            }),
            late: false,
            flag_rules: vec!["impossible_rtt".into(), "timing_outlier".into()],
            flagged: true,
        }
    }

    fn header(is_page: bool) -> RunHeader {
        RunHeader {
            check_id: "c1".into(),
            check_name: "Home <page>".into(),
            url: "http://shop.example/".into(),
            started: "2026-12-01 02:00:00 UTC".into(),
            progress: "1 / 1 measured · finished".into(),
            in_progress: false,
            is_page,
        }
    }

    #[test]
    fn a_result_with_a_goodput_shows_it_under_its_total() {
        let plain = results(&nav(), &header(false), &[row()]).into_string();
        assert!(!plain.contains("Mbit/s"), "{plain}");
        let large = ResultRow {
            goodput: Some("8.4 Mbit/s".into()),
            ..row()
        };
        let html = results(&nav(), &header(false), &[large]).into_string();
        assert!(html.contains(r#"class="goodput""#), "{html}");
        assert!(html.contains("8.4 Mbit/s"), "{html}");
        assert!(!html.contains("loaded"), "{html}");
        let load = ResultRow {
            latency_under_load: Some("41.0 ms idle, 288 ms loaded".into()),
            ..row()
        };
        let html = results(&nav(), &header(false), &[load]).into_string();
        assert!(html.contains(r#"class="latency""#), "{html}");
        assert!(html.contains("41.0 ms idle, 288 ms loaded"), "{html}");
    }

    #[test]
    fn a_flagged_page_result_shows_its_rules_hops_and_page_summary() {
        let html = results(&nav(), &header(true), &[row()]).into_string();
        assert!(html.contains(r#"flagged">flagged</span>"#), "{html}");
        assert!(html.contains("impossible_rtt, timing_outlier"), "{html}");
        assert!(
            html.contains("(1 listed)"),
            "the cut hop list says so: {html}"
        );
        assert!(html.contains("12 resources · 340.2 kB"), "{html}");
        assert!(html.contains("slowest: image /a.png (90.0 ms)"), "{html}");
        assert!(html.contains("1 failed"), "{html}");
        assert!(
            html.contains("image https://cdn.shop.example/b.png: http_status 404"),
            "the failed sub-resource is named in full: {html}"
        );
        assert!(
            html.contains("Home &lt;page&gt;"),
            "names are escaped: {html}"
        );
    }

    #[test]
    fn an_http_check_has_no_page_column_and_a_failure_shows_its_code() {
        let mut r = row();
        r.flagged = false;
        r.flag_rules.clear();
        r.page = None;
        r.status = None;
        r.error = Some(("connect_refused".into(), "connection refused".into()));
        let html = results(&nav(), &header(false), &[r]).into_string();
        assert!(!html.contains(">Page<"), "{html}");
        assert!(!html.contains(r#"flagged">flagged</span>"#), "{html}");
        assert!(html.contains("connect_refused") && html.contains("connection refused"));
    }
}
