//! An owner's API tokens: make a named one (shown once), see them all, revoke any.

use maud::{html, Markup};

use crate::layout::{csrf_field, error_box, page, Nav};

/// One token in the list (never its secret).
#[derive(Debug, Clone)]
pub struct TokenItem {
    pub id: String,
    pub name: String,
    /// "2026-11-30 22:15 UTC"
    pub created: String,
    /// When revoked; `None` while it works.
    pub revoked: Option<String>,
}

/// `new_token`: (name, secret) right after it was made, shown only in this answer.
pub fn tokens(
    nav: &Nav,
    items: &[TokenItem],
    new_token: Option<(&str, &str)>,
    error: Option<&str>,
    api_base: &str,
) -> Markup {
    page(
        "API tokens",
        Some(nav),
        html! {
            h1 { "API tokens" }
            p.lead { "Scripts and CI jobs use a token to call the API as you: "
                code { "Authorization: Bearer <token>" } ". Make one per script, so you can revoke one without breaking the others." }
            @if let Some((name, secret)) = new_token {
                section.card.reveal aria-live="polite" {
                    h2 { "Token " q { (name) } " is ready" }
                    p { strong { "Copy it now: it is shown only once." } " We keep only a hash of it." }
                    pre { code #new-token { (secret) } }
                    p { "Try it:" }
                    pre { code { "curl -H 'Authorization: Bearer " (secret) "' " (api_base) "/api/v1/checks" } }
                }
            }
            section.card {
                h2 { "Make a token" }
                (error_box(error))
                form method="post" action="/app/tokens" {
                    (csrf_field(&nav.csrf))
                    label for="token-name" { "Name " small { "(what will use it, e.g. \"nightly CI\")" } }
                    input #token-name type="text" name="name" required maxlength="100";
                    button type="submit" { "Make token" }
                }
            }
            h2 { "Your tokens" }
            @if items.is_empty() {
                p.empty { "No named tokens yet. (The token printed by " code { "owner create" } ", if you have one, keeps working.)" }
            } @else {
                div.scroll {
                    table.tokens {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Made" } th scope="col" { "Status" } th scope="col" { span.visually-hidden { "Action" } } } }
                        tbody {
                            @for t in items {
                                tr {
                                    td { (t.name) }
                                    td { (t.created) }
                                    td {
                                        @match &t.revoked {
                                            Some(when) => { span.badge { "revoked" } " " small { (when) } }
                                            None => span.badge.ok { "active" },
                                        }
                                    }
                                    td {
                                        @if t.revoked.is_none() {
                                            form method="post" action={ "/app/tokens/" (t.id) "/revoke" } {
                                                (csrf_field(&nav.csrf))
                                                button.danger.small type="submit" aria-label={ "Revoke " (t.name) } { "Revoke" }
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
