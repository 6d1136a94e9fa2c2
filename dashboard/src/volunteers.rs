//! A volunteer's agents and how to add one.

use maud::{html, Markup};

use crate::layout::{column_heads, csrf_field, error_box, page, Nav};

/// One agent as its volunteer sees it.
#[derive(Debug, Clone)]
pub struct AgentItem {
    pub id: String,
    pub name: String,
    /// `online`, `paused: <why>` or `offline`.
    pub status: AgentStatus,
    pub declared_class: String,
    /// `None` until the agent calibrated.
    pub measured_class: Option<String>,
    /// Flagged: the measured class contradicts the declared one.
    pub class_mismatch: bool,
    /// "Berlin, DE · AS64501 Demo Telekom" as the controller sees it.
    pub location: String,
    /// "3 min ago", or "never".
    pub last_result: String,
    pub results: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Online,
    Paused(String),
    Offline,
    /// Its volunteer revoked it: its token no longer works.
    Revoked,
}

/// The install command card: with a freshly made key, or the button to make one.
#[derive(Debug, Clone)]
pub struct Install {
    pub controller_url: String,
    /// Shown once, right after it was made.
    pub new_key: Option<String>,
}

/// A place on the leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub rank: u32,
    pub points: u64,
    /// Volunteers with points in the period.
    pub of: usize,
}

/// One payout.
#[derive(Debug, Clone)]
pub struct PayoutItem {
    /// "2026-11-30"
    pub date: String,
    /// "12.40 USD"
    pub amount: String,
    /// "in transit", "paid", "failed", "reversed".
    pub state: String,
    pub done: bool,
    /// Why it failed (or why the last attempt got no answer), and what became of the
    /// money.
    pub note: Option<String>,
}

/// How far the volunteer's Stripe Connect account is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PayoutSetup {
    /// This controller has no Stripe: no button.
    #[default]
    Unavailable,
    /// No account yet.
    NotStarted,
    /// Onboarding started; Stripe does not allow payouts yet.
    Pending,
    Enabled,
}

/// What a volunteer has earned: points and rank, money, payouts.
#[derive(Debug, Clone, Default)]
pub struct Earnings {
    pub week: Option<Standing>,
    pub all_time: Option<Standing>,
    /// (label, amount) e.g. ("Earned, not yet paid out", "1.20 USD").
    pub balances: Vec<(String, String)>,
    pub payouts: Vec<PayoutItem>,
    pub setup: PayoutSetup,
    /// The payout threshold, "10.00 USD".
    pub threshold: String,
    /// Said after Stripe sent the volunteer back from onboarding.
    pub notice: Option<String>,
    /// Why setting up payouts did not start.
    pub error: Option<String>,
}

fn payouts_card(nav: &Nav, e: &Earnings) -> Markup {
    html! {
        section.card #payouts aria-labelledby="payouts-title" {
            h2 #payouts-title { "Payouts" }
            @if let Some(n) = &e.notice { p.notice role="status" { (n) } }
            (error_box(e.error.as_deref()))
            @match e.setup {
                PayoutSetup::Enabled => p #payout-setup {
                    span.badge.ok { "payouts enabled" } " "
                    "Your earnings are paid out automatically to your Stripe account once they reach " strong { (e.threshold) } "."
                },
                PayoutSetup::Unavailable => p #payout-setup.meta { "Payouts are not set up on this Lastmile server yet; your earnings are kept until they are." },
                setup => div #payout-setup {
                    p { "Connect a Stripe account to be paid. Your earnings are then paid out automatically once they reach " strong { (e.threshold) } "." }
                    @if setup == PayoutSetup::Pending {
                        p.meta { span.badge.warn { "not enabled yet" } " Stripe still needs details from you, or is checking them." }
                    }
                    form method="post" action="/app/agents/payouts/setup" {
                        (csrf_field(&nav.csrf))
                        button type="submit" { @if setup == PayoutSetup::Pending { "Continue payout setup" } @else { "Set up payouts" } }
                    }
                }
            }
            @if e.payouts.is_empty() {
                p.empty { "No payouts yet." }
            } @else {
                div.scroll {
                    table {
                        (column_heads(&["Started", "Amount", "Status"]))
                        tbody {
                            @for p in &e.payouts {
                                tr {
                                    td.date { (p.date) }
                                    td.num { (p.amount) }
                                    td {
                                        @if p.done { span.badge.ok { (p.state) } } @else { span.badge.warn { (p.state) } }
                                        @if let Some(note) = &p.note { " " small { (note) } }
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

fn standing_card(id: &str, label: &str, s: Option<Standing>) -> Markup {
    html! {
        div.stat id=(id) {
            span.stat-label { (label) }
            @match s {
                Some(s) => {
                    span.stat-value { "#" (s.rank) }
                    span.stat-note { (s.points) " points · " (s.of) " ranked" }
                }
                None => {
                    span.stat-value { "–" }
                    span.stat-note { "no points yet" }
                }
            }
        }
    }
}

pub fn agents(nav: &Nav, items: &[AgentItem], install: &Install, earnings: &Earnings) -> Markup {
    page(
        "Agents",
        Some(nav),
        html! {
            h1 { "Your agents" }
            section.stats aria-label="Points and earnings" {
                (standing_card("rank-week", "Rank this week", earnings.week))
                (standing_card("rank-all", "Rank all time", earnings.all_time))
                @for (label, amount) in &earnings.balances {
                    div.stat.money-stat {
                        span.stat-label { (label) }
                        span.stat-value { (amount) }
                    }
                }
            }
            p.meta { a href="/app/leaderboard" { "See the leaderboard" } }
            @if items.is_empty() {
                p.empty { "No agents yet. Install one on a computer that stays on, with the command below." }
            } @else {
                div.scroll {
                    table {
                        (column_heads(&["Agent", "Status", "Line", "Location", "Last result", "Results", ""]))
                        tbody {
                            @for a in items {
                                tr {
                                    td { (a.name) }
                                    td {
                                        @match &a.status {
                                            AgentStatus::Online => span.badge.ok { "online" },
                                            AgentStatus::Paused(why) => { span.badge.warn title=(why) { "paused" } " " small { (why) } },
                                            AgentStatus::Offline => span.badge { "offline" },
                                            AgentStatus::Revoked => span.badge title="Its token no longer works" { "revoked" },
                                        }
                                    }
                                    td {
                                        @match &a.measured_class {
                                            Some(m) => { (m) " " small { "measured" } }
                                            // The controller gives work only to agents whose line it has measured.
                                            None => { (a.declared_class) " " small { "declared" } " " span.badge.warn title="The controller gives work only to agents whose line it has measured; the agent calibrates at start and daily (unless --calibration-bytes-per-day 0)" { "not calibrated: no work yet" } }
                                        }
                                        @if a.class_mismatch {
                                            " " span.badge.warn title={ "You declared " (a.declared_class) } { "differs from declared" }
                                        }
                                    }
                                    td { (a.location) }
                                    td { (a.last_result) }
                                    td.num { (a.results) }
                                    td {
                                        @if a.status != AgentStatus::Revoked {
                                            // A lost or retired machine: its token stops working within seconds.
                                            form method="post" action={ "/app/agents/" (a.id) "/revoke" } {
                                                (csrf_field(&nav.csrf))
                                                button.secondary type="submit" title="Its token stops working within seconds; the machine can enrol again with a new key" { "Revoke" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (payouts_card(nav, earnings))
            section.card {
                h2 { "Add an agent" }
                @if let Some(key) = &install.new_key {
                    p { "Run this on the computer (Linux; "
                        code { "--connection-class" } " is your line: dialup, dsl, cable, fibre, mobile or satellite). "
                        strong { "The key is shown only now." } }
                    pre { code { "lastmile-agent run --controller " (install.controller_url) " --enrol-key " (key) " --connection-class dsl" } }
                } @else {
                    p { "Make an enrolment key and get the install command. A new key replaces the old one for new agents; agents already running keep working." }
                    form method="post" action="/app/agents/enrol-key" {
                        (csrf_field(&nav.csrf))
                        button type="submit" { "Make an enrolment key" }
                    }
                }
            }
        },
    )
}
