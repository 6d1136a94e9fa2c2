//! A site owner's checks: the list, the form that creates one, and one check's page.

use maud::{html, Markup};

use crate::alerts::CheckAlerts;
use crate::layout::{column_heads, csrf_field, error_box, page, Nav};

/// Connection classes offered as selection filters, in speed order.
pub const CLASSES: [&str; 6] = ["dialup", "mobile", "satellite", "dsl", "cable", "fibre"];

/// One check in the list.
#[derive(Debug, Clone)]
pub struct CheckItem {
    pub id: String,
    pub name: String,
    pub url: String,
    /// "every 5 min" or "once".
    pub schedule: String,
    /// "DE, US · dsl, cable · 10 agents".
    pub selection: String,
    pub paused: bool,
    /// "ok", "degraded", "down", "incident", "no agents", "paused", "no data".
    pub state: String,
    /// "2026-12-05 09:40 UTC · 9 of 10 ok", or "never".
    pub last_run: String,
    /// "99.2 % of 480", or "no data".
    pub availability_24h: String,
    /// "met", "at risk", "breached", "no data", "no objectives".
    pub sla_24h: String,
}

/// A state or verdict as a coloured badge: good, bad, in between, or neutral.
pub fn verdict_badge(word: &str) -> Markup {
    html! {
        @match word {
            "ok" | "met" => span.badge.ok { (word) },
            "down" | "incident" | "breached" => span.badge.bad { (word) },
            "degraded" | "no agents" | "at risk" | "paused" => span.badge.warn { (word) },
            _ => span.badge { (word) },
        }
    }
}

/// The owner's credit and the form that buys more through Stripe Checkout.
#[derive(Debug, Clone, Default)]
pub struct Credit {
    /// Lines on the owner's credit, from the ledger's balances.
    pub lines: Vec<String>,
    /// Said after Stripe sent the owner back (paid, or cancelled).
    pub notice: Option<String>,
    /// Why the last purchase did not start.
    pub error: Option<String>,
    /// The amount as typed, kept when refused.
    pub amount: String,
}

fn credit_card(nav: &Nav, credit: &Credit) -> Markup {
    html! {
        section.card #credit aria-labelledby="credit-title" {
            h2 #credit-title { "Credit" }
            @for line in &credit.lines { p.money { (line) } }
            @if let Some(n) = &credit.notice { p.notice role="status" { (n) } }
            (error_box(credit.error.as_deref()))
            form.buy method="post" action="/app/checks/credit" {
                (csrf_field(&nav.csrf))
                label for="amount" { "Amount in US dollars " small { "(5 to 10 000)" } }
                div.inline {
                    input #amount type="text" name="amount" inputmode="decimal" required
                        placeholder="25.00" value=(credit.amount);
                    button type="submit" { "Buy credit" }
                }
            }
            p.meta { "You pay by card on Stripe's page. The credit appears here once Stripe confirms the payment." }
        }
    }
}

/// `credit`: the owner's credit, shown above the list, with the form to buy more.
pub fn list(nav: &Nav, checks: &[CheckItem], credit: &Credit) -> Markup {
    page(
        "Checks",
        Some(nav),
        html! {
            h1 { "Your checks" }
            (credit_card(nav, credit))
            p { a.button href="/app/checks/new" { "New check" } }
            @if checks.is_empty() {
                p.empty { "No checks yet. A check measures one page of a verified site from the agents you select." }
            } @else {
                div.scroll {
                    table {
                        (column_heads(&["Check", "Status", "Last run", "Availability, 24 h", "SLA, 24 h", "Schedule", "Agents"]))
                        tbody.checks {
                            @for c in checks {
                                tr {
                                    td.wrap { a href={ "/app/checks/" (c.id) } { (c.name) } br; small { (c.url) } br;
                                        a.small href={ "/app/checks/" (c.id) "/report" } { "Report" } }
                                    td.state { (verdict_badge(&c.state)) }
                                    td { (c.last_run) }
                                    td.num.availability { (c.availability_24h) }
                                    td.sla { (verdict_badge(&c.sla_24h)) }
                                    td { (c.schedule) @if c.paused { " " span.badge.warn { "paused" } } }
                                    td { (c.selection) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The new-check form, as typed (strings, so a refused form comes back unchanged).
#[derive(Debug, Clone, Default)]
pub struct CheckForm {
    /// (site id, origin) of the owner's verified sites.
    pub sites: Vec<(String, String)>,
    pub site_id: String,
    pub name: String,
    pub url: String,
    /// `http`, `page`, `throughput`, `video` or `udp` (empty: `http`).
    pub kind: String,
    pub expected_status: String,
    pub body_contains: String,
    pub max_bytes: String,
    pub timeout_ms: String,
    pub max_redirects: String,
    /// A throughput check's load: connections at once and how long, ms (empty: the
    /// defaults).
    pub connections: String,
    pub duration_ms: String,
    /// A video check's session: media to play, ms, and the highest bitrate, kbit/s
    /// (empty: the defaults).
    pub play_ms: String,
    pub max_bitrate_kbps: String,
    /// A udp check's stream: ms between probes, how long, ms, and each probe's bytes
    /// (empty: the defaults).
    pub udp_interval_ms: String,
    pub udp_duration_ms: String,
    pub packet_bytes: String,
    /// One objective per line, as people write them.
    pub objectives: String,
    pub every_seconds: String,
    pub countries: String,
    pub asns: String,
    pub classes: Vec<String>,
    pub agents_per_run: String,
    /// `proportional` or `equal` (empty: `proportional`).
    pub spread: String,
    pub isp_sharing: bool,
    /// Agents a run would use now, when counted.
    pub eligible: Option<usize>,
    pub error: Option<String>,
    /// Editing this check (id, name); `None` for a new one.
    pub editing: Option<(String, String)>,
}

pub fn new(nav: &Nav, f: &CheckForm) -> Markup {
    let (title, action, submit) = match &f.editing {
        Some((id, _)) => (
            "Edit check",
            format!("/app/checks/{id}/edit"),
            "Save changes",
        ),
        None => ("New check", "/app/checks".to_owned(), "Create check"),
    };
    page(
        title,
        Some(nav),
        html! {
            p.crumbs {
                a href="/app/checks" { "Checks" } " / "
                @match &f.editing {
                    Some((id, name)) => { a href={ "/app/checks/" (id) } { (name) } " / edit" }
                    None => "new",
                }
            }
            h1 { (title) }
            @if f.sites.is_empty() {
                section.card {
                    p { "Checks measure pages of verified sites, and you have none yet. "
                        a href="/app/sites" { "Add and verify a site first" } "." }
                }
            } @else {
                (error_box(f.error.as_deref()))
                form.check method="post" action=(action) {
                    (csrf_field(&nav.csrf))
                    section.card {
                        h2 { "What to measure" }
                        label for="site_id" { "Site" }
                        select #site_id name="site_id" {
                            @for (id, origin) in &f.sites {
                                option value=(id) selected[*id == f.site_id] { (origin) }
                            }
                        }
                        label for="url" { "Page URL " small { "(on that site)" } }
                        input #url type="url" name="url" required value=(f.url) placeholder="https://shop.example/";
                        label for="kind" { "Measure" }
                        select #kind name="kind" {
                            option value="http" selected[!["page", "throughput", "video", "udp"].contains(&f.kind.as_str())] { "The URL alone: one fetch (http)" }
                            option value="page" selected[f.kind == "page"] { "The whole page: HTML with its stylesheets, scripts, images and fonts (page)" }
                            option value="throughput" selected[f.kind == "throughput"] { "The line's speed: the URL downloaded over several connections at once, with latency under that load (throughput)" }
                            option value="video" selected[f.kind == "video"] { "A stream: the URL is an HLS playlist or a DASH MPD, played as a player would, with its start-up delay and stalls (video)" }
                            option value="udp" selected[f.kind == "udp"] { "A game or a call: small packets every few milliseconds to your reflector at udp://host:port, with their round trip, jitter and loss (udp)" }
                        }
                        div.row {
                            div {
                                label for="connections" { "Connections at once " small { "(throughput; default 4)" } }
                                input #connections type="number" name="connections" min="1" max="16" value=(f.connections);
                            }
                            div {
                                label for="duration_ms" { "Load duration, ms " small { "(throughput; default 10000)" } }
                                input #duration_ms type="number" name="duration_ms" min="1000" max="30000" value=(f.duration_ms);
                            }
                        }
                        div.row {
                            div {
                                label for="play_ms" { "Media to play, ms " small { "(video; default 20000)" } }
                                input #play_ms type="number" name="play_ms" min="1000" max="120000" value=(f.play_ms);
                            }
                            div {
                                label for="max_bitrate_kbps" { "Highest bitrate, kbit/s " small { "(video; empty: the highest rendition)" } }
                                input #max_bitrate_kbps type="number" name="max_bitrate_kbps" min="1" value=(f.max_bitrate_kbps);
                            }
                        }
                        div.row {
                            div {
                                label for="udp_interval_ms" { "Between packets, ms " small { "(udp; default 20)" } }
                                input #udp_interval_ms type="number" name="udp_interval_ms" min="10" max="1000" value=(f.udp_interval_ms);
                            }
                            div {
                                label for="udp_duration_ms" { "Stream duration, ms " small { "(udp; default 10000)" } }
                                input #udp_duration_ms type="number" name="udp_duration_ms" min="1000" max="60000" value=(f.udp_duration_ms);
                            }
                            div {
                                label for="packet_bytes" { "Packet size, bytes " small { "(udp; default 172)" } }
                                input #packet_bytes type="number" name="packet_bytes" min="40" max="1200" value=(f.packet_bytes);
                            }
                        }
                        p.hint { "A udp check streams only to a reflector that answers with the site's verification token: run " code { "lastmile-reflector --token <the site's token>" } " on the site's host, next to your game or media server." }
                        label for="name" { "Name " small { "(optional)" } }
                        input #name type="text" name="name" maxlength="200" value=(f.name);
                    }
                    section.card {
                        h2 { "What counts as success" }
                        label for="expected_status" { "Expected status codes " small { "(comma-separated; empty: any 2xx or 3xx)" } }
                        input #expected_status type="text" name="expected_status" inputmode="numeric" value=(f.expected_status) placeholder="200";
                        label for="body_contains" { "Body must contain " small { "(optional)" } }
                        input #body_contains type="text" name="body_contains" value=(f.body_contains);
                        div.row {
                            div {
                                label for="max_bytes" { "Max bytes " small { "(default 10 MiB)" } }
                                input #max_bytes type="number" name="max_bytes" min="1" value=(f.max_bytes);
                            }
                            div {
                                label for="timeout_ms" { "Timeout, ms " small { "(default 30000)" } }
                                input #timeout_ms type="number" name="timeout_ms" min="1" value=(f.timeout_ms);
                            }
                            div {
                                label for="max_redirects" { "Redirects to follow " small { "(default 5)" } }
                                input #max_redirects type="number" name="max_redirects" min="0" max="20" value=(f.max_redirects);
                            }
                        }
                    }
                    section.card {
                        h2 { "SLA objectives" }
                        label for="objectives" { "One per line " small { "(e.g. ttfb p95 <= 800 ms, goodput p10 >= 10 Mbit/s, loaded_latency p95 <= 300 ms, stall_time p90 <= 500 ms, availability >= 99.5 %, optionally ending \"for dsl\")" } }
                        textarea #objectives name="objectives" rows="3" placeholder="ttfb p95 <= 800 ms\navailability >= 99.5 %" { (f.objectives) }
                    }
                    section.card {
                        h2 { "When" }
                        label for="every_seconds" { "Run every N seconds " small { "(empty: once, now)" } }
                        input #every_seconds type="number" name="every_seconds" min="1" value=(f.every_seconds) placeholder="300";
                    }
                    section.card {
                        h2 { "From where" }
                        label for="countries" { "Countries " small { "(ISO codes, comma-separated; empty: anywhere)" } }
                        input #countries type="text" name="countries" value=(f.countries) placeholder="DE, US";
                        label for="asns" { "Networks (AS numbers) " small { "(comma-separated; empty: any)" } }
                        input #asns type="text" name="asns" inputmode="numeric" value=(f.asns) placeholder="3320, 7922";
                        fieldset {
                            legend { "Connection classes " small { "(none ticked: any)" } }
                            div.choices {
                                @for class in CLASSES {
                                    label.choice {
                                        input type="checkbox" name="connection_classes" value=(class) checked[f.classes.iter().any(|c| c == class)];
                                        " " (class)
                                    }
                                }
                            }
                        }
                        label for="agents_per_run" { "Agents per run" }
                        input #agents_per_run type="number" name="agents_per_run" min="1" max="1000" value=(f.agents_per_run);
                        label for="spread" { "Spread each run's agents over countries, networks and classes" }
                        select #spread name="spread" {
                            option value="proportional" selected[f.spread != "equal"] { "In proportion to their agents" }
                            option value="equal" selected[f.spread == "equal"] { "Equally" }
                        }
                        p.eligible aria-live="polite" {
                            // The live count (eligible.js) rewrites this whole span.
                            span #eligible-count {
                                @if let Some(n) = f.eligible {
                                    strong { (n) } " agents online match these filters now."
                                }
                            }
                            " "
                            button.secondary type="submit" name="action" value="count" formnovalidate { "Count matching agents" }
                        }
                        label.choice {
                            input type="checkbox" name="isp_sharing" value="true" checked[f.isp_sharing];
                            " Share results (never the URL) with the ISPs whose networks the agents sit in"
                        }
                    }
                    button type="submit" name="action" value="create" { (submit) }
                }
                // Progressive: recount as filters change (the button does it without JS).
                script src="/app/static/eligible.js" defer {}
            }
        },
    )
}

/// One run in a check's page.
#[derive(Debug, Clone)]
pub struct RunItem {
    /// The run's id: its start links to its results page.
    pub id: String,
    pub created: String,
    pub requested: u32,
    pub done: u32,
    pub state: String,
}

/// A check's page.
#[derive(Debug, Clone)]
pub struct CheckDetail {
    pub id: String,
    pub name: String,
    pub url: String,
    /// "http: one fetch" or "page: HTML and its sub-resources".
    pub kind: String,
    pub schedule: String,
    pub selection: String,
    pub expectations: String,
    /// The check's objectives in their written form.
    pub objectives: Vec<String>,
    /// "since 2026-11-30 22:10 UTC" when paused.
    pub paused: Option<String>,
    /// "5 cents per result"
    pub price: String,
}

/// A check's page. `error` is shown at the top; `rule_error` by the form that adds an
/// alert rule.
pub fn detail(
    nav: &Nav,
    c: &CheckDetail,
    runs: &[RunItem],
    alerts: &CheckAlerts,
    error: Option<&str>,
    rule_error: Option<&str>,
) -> Markup {
    page(
        &c.name,
        Some(nav),
        html! {
            p.crumbs { a href="/app/checks" { "Checks" } " / " (c.name) }
            h1 { (c.name) " "
                @match &c.paused {
                    Some(since) => span.badge.warn #check-state title={ "Paused " (since) } { "paused" },
                    None => span.badge.ok #check-state { "active" },
                }
            }
            (error_box(error))
            (crate::alerts::open_banner(alerts))
            dl.facts {
                dt { "URL" } dd { code { (c.url) } }
                dt { "Measures" } dd { (c.kind) }
                dt { "Schedule" } dd { (c.schedule)
                    @if let Some(since) = &c.paused { " — " strong { "paused" } " " (since) ", no scheduled runs" } }
                dt { "Agents" } dd { (c.selection) }
                dt { "Success" } dd { (c.expectations) }
                dt { "Objectives" } dd {
                    @if c.objectives.is_empty() { "none" }
                    @for (i, o) in c.objectives.iter().enumerate() { @if i > 0 { "; " } (o) }
                }
                dt { "Price" } dd { (c.price) }
            }
            div.actions {
                a.button href={ "/app/checks/" (c.id) "/report" } { "Report" }
                form method="post" action={ "/app/checks/" (c.id) "/runs" } {
                    (csrf_field(&nav.csrf))
                    button.secondary type="submit" { "Run now" }
                }
                a.button.secondary href={ "/app/checks/" (c.id) "/edit" } { "Edit" }
                @if c.paused.is_some() {
                    form method="post" action={ "/app/checks/" (c.id) "/resume" } {
                        (csrf_field(&nav.csrf))
                        button.secondary #resume type="submit" { "Resume schedule" }
                    }
                } @else {
                    form method="post" action={ "/app/checks/" (c.id) "/pause" } {
                        (csrf_field(&nav.csrf))
                        button.secondary #pause type="submit" { "Pause schedule" }
                    }
                }
                a.button.secondary href={ "/api/v1/checks/" (c.id) "/report?group_by=connection_class,country&format=csv" } download { "Report CSV" }
            }
            // Two clicks, no script: the button is inside a closed disclosure that says what
            // deleting does.
            details.delete #delete-check {
                summary { "Delete this check…" }
                p { "It stops: no more runs, open runs end and their held credit is released, its alert rules go. "
                    "Its results, reports and charges are kept for your records." }
                form method="post" action={ "/app/checks/" (c.id) "/delete" } {
                    (csrf_field(&nav.csrf))
                    button.danger type="submit" { "Delete check" }
                }
            }
            h2 { "Recent runs" }
            @if runs.is_empty() {
                p.empty { "No runs yet." }
            } @else {
                div.scroll {
                    table {
                        (column_heads(&["Started", "Measured", "State"]))
                        tbody {
                            @for r in runs {
                                tr { td { a href={ "/app/checks/" (c.id) "/runs/" (r.id) } title="What each agent saw" { (r.created) } } td.num { (r.done) " / " (r.requested) } td { (r.state) } }
                            }
                        }
                    }
                }
            }
            (crate::alerts::check_section(nav, &c.id, alerts, rule_error))
        },
    )
}
