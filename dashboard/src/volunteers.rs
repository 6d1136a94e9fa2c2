//! A volunteer's agents and how to add one.

use maud::{html, Markup};

use crate::layout::{csrf_field, page, Nav};

/// One agent as its volunteer sees it.
#[derive(Debug, Clone)]
pub struct AgentItem {
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
}

/// The install command card: with a freshly made key, or the button to make one.
#[derive(Debug, Clone)]
pub struct Install {
    pub controller_url: String,
    /// Shown once, right after it was made.
    pub new_key: Option<String>,
}

/// `money`: lines on the volunteer's earnings, shown above the agents.
pub fn agents(nav: &Nav, items: &[AgentItem], install: &Install, money: &[String]) -> Markup {
    page(
        "Agents",
        Some(nav),
        html! {
            h1 { "Your agents" }
            @for line in money { p.money { (line) } }
            @if items.is_empty() {
                p.empty { "No agents yet. Install one on a computer that stays on, with the command below." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th scope="col" { "Agent" } th scope="col" { "Status" }
                            th scope="col" { "Line" } th scope="col" { "Location" }
                            th scope="col" { "Last result" } th scope="col" { "Results" }
                        } }
                        tbody {
                            @for a in items {
                                tr {
                                    td { (a.name) }
                                    td {
                                        @match &a.status {
                                            AgentStatus::Online => span.badge.ok { "online" },
                                            AgentStatus::Paused(why) => { span.badge.warn title=(why) { "paused" } " " small { (why) } },
                                            AgentStatus::Offline => span.badge { "offline" },
                                        }
                                    }
                                    td {
                                        @match &a.measured_class {
                                            Some(m) => { (m) " " small { "measured" } }
                                            None => { (a.declared_class) " " small { "declared" } }
                                        }
                                        @if a.class_mismatch {
                                            " " span.badge.warn title={ "You declared " (a.declared_class) } { "differs from declared" }
                                        }
                                    }
                                    td { (a.location) }
                                    td { (a.last_result) }
                                    td.num { (a.results) }
                                }
                            }
                        }
                    }
                }
            }
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
