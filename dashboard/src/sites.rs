//! A site owner's sites: the list, adding one, and proving ownership.

use maud::{html, Markup};

use crate::layout::{column_heads, csrf_field, error_box, page, Nav};

/// One site as the pages show it.
#[derive(Debug, Clone)]
pub struct SiteItem {
    pub id: String,
    pub origin: String,
    pub verified: bool,
    pub verification_token: String,
    /// `_lastmile.<host>`, when the origin has a host name.
    pub dns_name: Option<String>,
    /// The origin's host (a name, or an IP literal as URLs write it).
    pub host: String,
    /// "file" or "DNS" once verified.
    pub verified_by: Option<String>,
}

pub fn list(nav: &Nav, sites: &[SiteItem], error: Option<&str>, origin: &str) -> Markup {
    page(
        "Sites",
        Some(nav),
        html! {
            h1 { "Your sites" }
            @if sites.is_empty() {
                p.empty { "No sites yet. Add the origin of a website you run to start measuring it." }
            } @else {
                table {
                    (column_heads(&["Site", "Ownership"]))
                    tbody {
                        @for s in sites {
                            tr {
                                td { a href={ "/app/sites/" (s.id) } { (s.origin) } }
                                td { (status(s.verified)) }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "Add a site" }
                (error_box(error))
                form method="post" action="/app/sites" {
                    (csrf_field(&nav.csrf))
                    label for="origin" { "Origin " small { "(scheme, host and port, e.g. https://shop.example)" } }
                    input #origin type="url" name="origin" required placeholder="https://shop.example" value=(origin);
                    button type="submit" { "Add site" }
                }
            }
        },
    )
}

/// A site's page; `error` says why the last verification failed.
pub fn detail(nav: &Nav, site: &SiteItem, error: Option<&str>) -> Markup {
    let well_known = format!(
        "{}/.well-known/lastmile/{}",
        site.origin, site.verification_token
    );
    page(
        &site.origin,
        Some(nav),
        html! {
            p.crumbs { a href="/app/sites" { "Sites" } " / " (site.origin) }
            h1 { (site.origin) " " (status(site.verified)) }
            (error_box(error))
            @if !site.verified {
                p.lead { "Prove you run this site in one of two ways, then press its Verify button." }
                div.methods {
                    section.card #verify-file {
                        h2 { "Serve a file" }
                        p { "Serve this URL with the token as its whole content:" }
                        pre { code { (well_known) } }
                        p { "Content: " code.token { (site.verification_token) } }
                        form method="post" action={ "/app/sites/" (site.id) "/verify" } {
                            (csrf_field(&nav.csrf))
                            input type="hidden" name="method" value="file";
                            button type="submit" { "Verify by file" }
                        }
                    }
                    section.card #verify-dns {
                        h2 { "Publish a DNS TXT record" }
                        @match &site.dns_name {
                            Some(name) => {
                                p { "Add a TXT record (DNS changes can take a few minutes to show):" }
                                dl.facts {
                                    dt { "Name" } dd { code.dns-name { (name) } }
                                    dt { "Type" } dd { "TXT" }
                                    dt { "Value" } dd { code { (site.verification_token) } }
                                }
                                form method="post" action={ "/app/sites/" (site.id) "/verify" } {
                                    (csrf_field(&nav.csrf))
                                    input type="hidden" name="method" value="dns";
                                    button type="submit" { "Verify by DNS" }
                                }
                            }
                            None => {
                                p.muted { "This origin is an IP address, which has no DNS name to publish a record under; use the file." }
                            }
                        }
                    }
                }
            } @else {
                p { "Ownership is proven"
                    @if let Some(by) = &site.verified_by { " (by " (by) ")" }
                    ". Checks can now measure pages on this site. "
                    a href="/app/checks/new" { "Create a check" } "." }
                section.card #reflector {
                    h2 { "Games and calls: udp checks" }
                    p { "A udp check streams small packets to a reflector on this site's host, which echoes them: "
                        "the round trip, jitter and loss a game or a call would see. Agents stream only to a reflector "
                        "that answers with this site's token. Run it next to your game or media server, with UDP port 7301 open:" }
                    pre { code { "LASTMILE_REFLECTOR_TOKEN=" (site.verification_token) " lastmile-reflector --listen 0.0.0.0:7301" } }
                    p { "It comes with the agent (and its image: " code { "--entrypoint lastmile-reflector" } "). Then create a check of kind udp with the URL "
                        code { "udp://" (site.host) ":7301" } "; the controller says hello to the reflector before it takes the check." }
                }
            }
            details.delete #delete-site {
                summary { "Delete this site…" }
                p { "Its checks are deleted with it and stop running; their results, reports and charges are kept. "
                    "Adding the site again needs a new proof of ownership." }
                form method="post" action={ "/app/sites/" (site.id) "/delete" } {
                    (csrf_field(&nav.csrf))
                    button.danger type="submit" { "Delete site" }
                }
            }
        },
    )
}

fn status(verified: bool) -> Markup {
    html! {
        @if verified { span.badge.ok { "verified" } } @else { span.badge.warn { "not verified" } }
    }
}

/// The error page for a signed-in user (not found, forbidden...).
pub fn problem(nav: Option<&Nav>, title: &str, message: &str) -> Markup {
    page(
        title,
        nav,
        html! {
            section.card.narrow {
                h1 { (title) }
                (error_box(Some(message)))
                p { a href="/app" { "Back to the dashboard" } }
            }
        },
    )
}
