//! The public leaderboard: volunteers ranked by points, this week and all time.

use maud::{html, Markup};

use crate::layout::{page, Nav};

/// One volunteer's place.
#[derive(Debug, Clone)]
pub struct Place {
    pub rank: u32,
    pub volunteer: String,
    pub points: u64,
    pub online_hours: f64,
    pub measurements: u64,
    /// The signed-in volunteer's own row.
    pub you: bool,
}

/// `period`: `week` or `all_time`; `since`: "since Monday Nov 30" for the week.
pub fn leaderboard(nav: Option<&Nav>, period: &str, since: &str, places: &[Place]) -> Markup {
    let tabs = [("week", "This week"), ("all_time", "All time")];
    page(
        "Leaderboard",
        nav,
        html! {
            div.headline {
                h1 { "Volunteer leaderboard" }
                nav.tabs aria-label="Period" {
                    @for (value, label) in tabs {
                        @if value == period {
                            a.tab.current href={ "/app/leaderboard?period=" (value) } aria-current="page" { (label) }
                        } @else {
                            a.tab href={ "/app/leaderboard?period=" (value) } { (label) }
                        }
                    }
                }
            }
            p.lead { "People who run Lastmile agents on their home lines, ranked by points: 10 per hour online, 1 per measurement, 1 per 10 s spent measuring. " (since) }
            @if places.is_empty() {
                p.empty { "Nobody has points in this period yet." }
            } @else {
                div.scroll {
                    table.leaderboard {
                        thead { tr {
                            th scope="col" { "Rank" } th scope="col" { "Volunteer" } th scope="col" { "Points" }
                            th scope="col" { "Hours online" } th.wide-only scope="col" { "Measurements" }
                        } }
                        tbody {
                            @for p in places {
                                tr.you[p.you] {
                                    td.num.rank { (p.rank) }
                                    td { (p.volunteer) @if p.you { " " span.badge.ok { "you" } } }
                                    // On a phone the measurements column gives way, so its
                                    // figure moves under the points instead of vanishing.
                                    td.num.points { strong { (p.points) }
                                        small.narrow-only { br; (p.measurements) " measurements" } }
                                    td.num { (format!("{:.1}", p.online_hours)) }
                                    td.num.wide-only { (p.measurements) }
                                }
                            }
                        }
                    }
                }
            }
            p.meta {
                "The same data as an API: "
                a href={ "/api/v1/leaderboard?period=" (period) } { "JSON" } " · "
                a href={ "/api/v1/leaderboard?period=" (period) "&format=csv" } download { "CSV" }
            }
        },
    )
}
