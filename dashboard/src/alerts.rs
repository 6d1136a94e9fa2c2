//! Alerts in the dashboard: an owner's channels (make one, see a webhook's secret once,
//! delete), a channel's delivery log, and on a check's page its incidents and rules.

use maud::{html, Markup};

use crate::layout::{column_heads, csrf_field, error_box, page, Nav};

/// One channel in the list.
#[derive(Debug, Clone)]
pub struct ChannelItem {
    pub id: String,
    pub name: String,
    /// "webhook", "slack" or "email".
    pub kind: String,
    /// The URL or the address.
    pub target: String,
    pub created: String,
}

/// A channel just made: its name and, for a webhook, the secret shown this once.
pub struct NewChannel<'a> {
    pub name: &'a str,
    pub secret: Option<&'a str>,
}

/// The alerts page: channels, and the form to make one.
pub fn channels(
    nav: &Nav,
    items: &[ChannelItem],
    made: Option<NewChannel<'_>>,
    error: Option<&str>,
) -> Markup {
    page(
        "Alerts",
        Some(nav),
        html! {
            h1 { "Alerts" }
            p.lead { "Channels are where alerts go. Put rules on a check (on its page) to say what breaks it; "
                "each incident they open, update or resolve is sent to the rule's channels." }
            @if let Some(made) = made {
                section.card.reveal aria-live="polite" {
                    h2 { "Channel " q { (made.name) } " is ready" }
                    @if let Some(secret) = made.secret {
                        p { strong { "Copy its signing secret now: it is shown only once." } }
                        pre { code #new-secret { (secret) } }
                        p { "Each delivery carries " code { "Lastmile-Signature: sha256=<hex>" }
                            ", the HMAC-SHA256 of the raw body under this secret, and "
                            code { "Lastmile-Delivery" } ", an id a retry keeps." }
                    }
                }
            }
            section.card {
                h2 { "Add a channel" }
                (error_box(error))
                form method="post" action="/app/alerts" {
                    (csrf_field(&nav.csrf))
                    label for="channel-name" { "Name " small { "(e.g. \"on-call\", \"#ops\")" } }
                    input #channel-name type="text" name="name" required maxlength="100";
                    label for="channel-kind" { "Kind" }
                    select #channel-kind name="kind" {
                        option value="webhook" { "Webhook (signed JSON)" }
                        option value="slack" { "Slack-compatible incoming webhook" }
                        option value="email" { "Email" }
                    }
                    label for="channel-target" { "URL, or email address" }
                    input #channel-target type="text" name="target" required maxlength="2048"
                        placeholder="https://ops.example/lastmile";
                    button type="submit" { "Add channel" }
                }
            }
            h2 { "Your channels" }
            @if items.is_empty() {
                p.empty { "No channels yet." }
            } @else {
                div.scroll {
                    table.channels {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Sends to" } th scope="col" { span.visually-hidden { "Action" } } } }
                        tbody {
                            @for c in items {
                                tr {
                                    td { a href={ "/app/alerts/" (c.id) } title="Its delivery log" { (c.name) } }
                                    td { (c.kind) }
                                    td.wrap { code { (c.target) } }
                                    td {
                                        form method="post" action={ "/app/alerts/" (c.id) "/delete" } {
                                            (csrf_field(&nav.csrf))
                                            button.danger.small type="submit" aria-label={ "Delete " (c.name) } { "Delete" }
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

/// One delivery in a channel's log.
#[derive(Debug, Clone)]
pub struct DeliveryItem {
    pub created: String,
    /// "incident.opened", ...
    pub event: String,
    /// "delivered", "pending" or "failed".
    pub state: String,
    pub attempts: i32,
    /// The last answer: "200", or why it failed.
    pub last: String,
}

/// A channel's delivery log.
pub fn deliveries(nav: &Nav, channel: &ChannelItem, rows: &[DeliveryItem]) -> Markup {
    page(
        &channel.name,
        Some(nav),
        html! {
            p.crumbs { a href="/app/alerts" { "Alerts" } " / " (channel.name) }
            h1 { (channel.name) }
            dl.facts {
                dt { "Kind" } dd { (channel.kind) }
                dt { "Sends to" } dd.wrap { code { (channel.target) } }
            }
            h2 { "Deliveries" }
            @if rows.is_empty() {
                p.empty { "Nothing sent yet." }
            } @else {
                div.scroll {
                    table.deliveries {
                        (column_heads(&["Queued", "Event", "State", "Attempts", "Last answer"]))
                        tbody {
                            @for d in rows {
                                tr {
                                    td { (d.created) }
                                    td { (d.event) }
                                    td { (state_badge(&d.state)) }
                                    td.num { (d.attempts) }
                                    td.wrap { (d.last) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn state_badge(state: &str) -> Markup {
    html! {
        @match state {
            "delivered" | "resolved" | "done" => span.badge.ok { (state) },
            "failed" | "open" => span.badge.bad { (state) },
            _ => span.badge.warn { (state) },
        }
    }
}

/// One incident on a check's page.
#[derive(Debug, Clone)]
pub struct IncidentItem {
    pub opened: String,
    /// What the rule watches, in words.
    pub rule: String,
    /// "open" or "resolved".
    pub state: String,
    pub summary: String,
    /// When and why it resolved.
    pub resolved: Option<(String, String)>,
    /// The paths traced by agents that saw it open.
    pub traces: Vec<TraceItem>,
}

/// One agent's path trace for an incident.
#[derive(Debug, Clone)]
pub struct TraceItem {
    /// "kitchen-pc (cable, DE, AS64501) to 192.0.2.1".
    pub from: String,
    /// "asked", "running", "done" or "expired".
    pub state: String,
    /// What the trace shows, in words (empty until it is done).
    pub finding: String,
    pub hops: Vec<TraceHopItem>,
    /// Why the agent could not trace.
    pub error: Option<String>,
}

/// One hop of a path trace.
#[derive(Debug, Clone)]
pub struct TraceHopItem {
    pub ttl: u8,
    /// The address that answered, or "no answer".
    pub addr: String,
    /// "0 %", "33 %".
    pub loss: String,
    /// "0.4 / 0.5 / 0.9 ms" (min / median / max), "–" for a silent hop.
    pub rtt: String,
    /// Where latency or loss jumps.
    pub jump: bool,
}

/// One rule on a check's page.
#[derive(Debug, Clone)]
pub struct RuleItem {
    pub id: String,
    /// "Availability below 99 % over 15 min (at least 3 results)".
    pub words: String,
    /// The channels' names.
    pub channels: String,
}

/// A check's alerting: its incidents, its rules, the owner's channels to pick from.
#[derive(Debug, Clone, Default)]
pub struct CheckAlerts {
    pub incidents: Vec<IncidentItem>,
    pub rules: Vec<RuleItem>,
    /// (id, name) of the owner's channels.
    pub channels: Vec<(String, String)>,
    /// Whether the check has objectives (else "objective breached" is not offered).
    pub has_objectives: bool,
}

/// The open incidents, as a banner at the top of a check's page.
pub fn open_banner(alerts: &CheckAlerts) -> Markup {
    html! {
        @for i in alerts.incidents.iter().filter(|i| i.state == "open") {
            section.card.incident role="alert" {
                strong { span.badge.bad { "incident" } " " (i.summary) }
                p { small { (i.rule) " · open since " (i.opened) } }
            }
        }
    }
}

/// The path traces of one incident: per agent, the hops with loss and round trips, the
/// hop where latency or loss jumps marked, and what the trace shows in words.
fn trace_section(incident: &IncidentItem) -> Markup {
    html! {
        section.card.traces {
            h3 { "Where the time is lost: the incident of " (incident.opened) }
            @for t in &incident.traces {
                h4 { "From " (t.from) " " (state_badge(&t.state)) }
                @if let Some(error) = &t.error {
                    p.error { (error) }
                } @else if t.hops.is_empty() {
                    p.empty { "Not traced yet." }
                } @else {
                    p.finding { (t.finding) }
                    div.scroll {
                        table.trace {
                            (column_heads(&["Hop", "Address", "Loss", "Round trip min / median / max"]))
                            tbody {
                                @for h in &t.hops {
                                    tr class=[h.jump.then_some("jump")] {
                                        td.num { (h.ttl) }
                                        td { (h.addr) }
                                        td.num { (h.loss) }
                                        td.num { (h.rtt) }
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

/// A check's incidents and rules, with the form to add a rule.
pub fn check_section(
    nav: &Nav,
    check_id: &str,
    alerts: &CheckAlerts,
    error: Option<&str>,
) -> Markup {
    html! {
        h2 #incidents { "Incidents" }
        @if alerts.incidents.is_empty() {
            p.empty { "No incidents." }
        } @else {
            div.scroll {
                table.incidents {
                    (column_heads(&["Opened", "State", "What broke", "Resolved"]))
                    tbody {
                        @for i in &alerts.incidents {
                            tr {
                                td { (i.opened) }
                                td { (state_badge(&i.state)) }
                                td.wrap { (i.summary) br; small { (i.rule) } }
                                td.wrap {
                                    @if let Some((when, why)) = &i.resolved { (when) br; small { (why) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @for i in alerts.incidents.iter().filter(|i| !i.traces.is_empty()) {
            (trace_section(i))
        }
        h2 #alert-rules { "Alert rules" }
        @if alerts.rules.is_empty() {
            p.empty { "No rules: nothing is sent when this check breaks." }
        } @else {
            ul.rules {
                @for r in &alerts.rules {
                    li {
                        (r.words) " → " (r.channels) " "
                        form.inline method="post" action={ "/app/checks/" (check_id) "/alert-rules/" (r.id) "/delete" } {
                            (csrf_field(&nav.csrf))
                            button.danger.small type="submit" aria-label={ "Delete rule: " (r.words) } { "Delete" }
                        }
                    }
                }
            }
        }
        section.card {
            h3 { "Add a rule" }
            (error_box(error))
            @if alerts.channels.is_empty() {
                p { "First " a href="/app/alerts" { "add a channel" } " for alerts to go to." }
            } @else {
                form method="post" action={ "/app/checks/" (check_id) "/alert-rules" } {
                    (csrf_field(&nav.csrf))
                    label for="rule-kind" { "When" }
                    select #rule-kind name="kind" {
                        option value="availability_below" { "availability is below the threshold" }
                        option value="segment_failing" { "one country, network or class fails while others do not" }
                        @if alerts.has_objectives {
                            option value="objective_breached" { "an objective is breached (conclusively)" }
                        }
                        option value="no_eligible_agents" { "a run finds no eligible agent" }
                    }
                    label for="rule-threshold" { "Threshold, % " small { "(availability: required; segments: 50 unless set)" } }
                    input #rule-threshold type="number" name="threshold_percent" min="0.1" max="100" step="0.1";
                    label for="rule-window" { "Over the last, minutes" }
                    input #rule-window type="number" name="window_minutes" min="1" max="1440" value="15";
                    fieldset {
                        legend { "Send to" }
                        @for (id, name) in &alerts.channels {
                            label.check { input type="checkbox" name="channels" value=(id); " " (name) }
                        }
                    }
                    button type="submit" { "Add rule" }
                }
            }
        }
    }
}
