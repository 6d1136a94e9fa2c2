//! The frame every page shares: head, navigation, flash message, footer.

use maud::{html, Markup, DOCTYPE};

use crate::STYLESHEET_PATH;

/// Which kind of account is signed in; it decides the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Volunteer,
}

/// Who is signed in, for the navigation bar and the sign-out form.
#[derive(Debug, Clone)]
pub struct Nav {
    pub name: String,
    pub email: String,
    pub role: Role,
    /// The session's CSRF token, put into every form.
    pub csrf: String,
}

/// A whole HTML document around `body`.
pub fn page(title: &str, nav: Option<&Nav>, body: Markup) -> Markup {
    refreshing_page(title, nav, None, body)
}

/// [`page`] that the browser reloads every `refresh_s` seconds while it is `Some`
/// (a run in progress shows its results as they arrive, without a script).
pub fn refreshing_page(
    title: &str,
    nav: Option<&Nav>,
    refresh_s: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lastmile" }
                @if let Some(seconds) = refresh_s {
                    meta http-equiv="refresh" content=(seconds);
                }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body {
                header.top {
                    a.brand href="/app" { "Lastmile" }
                    @if let Some(nav) = nav {
                        nav aria-label="Main" {
                            @match nav.role {
                                Role::Owner => {
                                    a href="/app/sites" { "Sites" }
                                    a href="/app/checks" { "Checks" }
                                    a href="/app/alerts" { "Alerts" }
                                    a href="/app/tokens" { "API tokens" }
                                }
                                Role::Volunteer => {
                                    a href="/app/agents" { "Agents" }
                                }
                            }
                            a href="/app/leaderboard" { "Leaderboard" }
                        }
                        div.who {
                            span title=(nav.email) { (nav.name) }
                            form method="post" action="/app/sign-out" {
                                (csrf_field(&nav.csrf))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    } @else {
                        nav aria-label="Account" {
                            a href="/app/leaderboard" { "Leaderboard" }
                            a href="/app/sign-in" { "Sign in" }
                            a href="/app/sign-up" { "Sign up" }
                        }
                    }
                }
                main { (body) }
                footer { "Lastmile · last-mile quality of service, measured by volunteers" }
            }
        }
    }
}

/// A table's header row: one column heading per name.
pub fn column_heads(names: &[&str]) -> Markup {
    html! { thead { tr { @for name in names { th scope="col" { (name) } } } } }
}

/// The hidden form field carrying the CSRF token.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// An error message above a form, announced to screen readers.
pub fn error_box(error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error {
            p.error role="alert" { (e) }
        }
    }
}
