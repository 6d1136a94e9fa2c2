//! The dashboard over HTTP: thin handlers that authenticate a browser session, call the
//! same domain functions as the JSON API, and render `lastmile_dashboard` pages.
//!
//! Forms post `application/x-www-form-urlencoded`; every state-changing form carries a
//! CSRF token (the session's, or before sign-in a double-submit cookie), and answers
//! with a redirect (post/redirect/get) so a reload never submits twice.

mod alerts;
mod auth;
mod checks;
mod credit;
mod error;
mod leaderboard;
mod reports;
mod session;
mod sites;
mod tokens;
mod volunteers;

use actix_web::{web, HttpResponse};

pub use session::SESSION_COOKIE;

/// Mounts the dashboard under `/app` (and `/leaderboard`, the public page's short
/// address).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/leaderboard",
        web::get().to(|| async { see_other("/app/leaderboard") }),
    );
    cfg.service(
        web::scope("/app")
            .route("", web::get().to(auth::home))
            .route("/", web::get().to(auth::home))
            .route("/static/style.css", web::get().to(stylesheet))
            .route("/sign-in", web::get().to(auth::sign_in_form))
            .route("/sign-in", web::post().to(auth::sign_in))
            .route("/sign-up", web::get().to(auth::sign_up_form))
            .route("/sign-up", web::post().to(auth::sign_up))
            .route("/sign-out", web::post().to(auth::sign_out))
            .route("/sites", web::get().to(sites::list))
            .route("/sites", web::post().to(sites::create))
            .route("/sites/{id}", web::get().to(sites::detail))
            .route("/sites/{id}/verify", web::post().to(sites::verify))
            .route("/sites/{id}/delete", web::post().to(sites::delete))
            .route("/static/eligible.js", web::get().to(eligible_js))
            .route("/checks", web::get().to(checks::list))
            .route("/checks", web::post().to(checks::create))
            .route("/checks/new", web::get().to(checks::new_form))
            .route("/checks/credit", web::post().to(credit::buy))
            .route("/checks/eligible", web::get().to(checks::eligible))
            .route("/checks/{id}", web::get().to(checks::detail))
            .route("/checks/{id}/runs", web::post().to(checks::run_now))
            .route(
                "/checks/{id}/runs/{run_id}",
                web::get().to(checks::run_results),
            )
            .route("/checks/{id}/edit", web::get().to(checks::edit_form))
            .route("/checks/{id}/edit", web::post().to(checks::update))
            .route("/checks/{id}/pause", web::post().to(checks::pause))
            .route("/checks/{id}/resume", web::post().to(checks::resume))
            .route("/checks/{id}/delete", web::post().to(checks::delete))
            .route("/checks/{id}/report", web::get().to(reports::report))
            .route("/alerts", web::get().to(alerts::list))
            .route("/alerts", web::post().to(alerts::create))
            .route("/alerts/{id}", web::get().to(alerts::deliveries))
            .route("/alerts/{id}/delete", web::post().to(alerts::delete))
            .route(
                "/checks/{id}/alert-rules",
                web::post().to(alerts::create_rule),
            )
            .route(
                "/checks/{id}/alert-rules/{rule}/delete",
                web::post().to(alerts::delete_rule),
            )
            .route("/tokens", web::get().to(tokens::list))
            .route("/tokens", web::post().to(tokens::create))
            .route("/tokens/{id}/revoke", web::post().to(tokens::revoke))
            .route("/leaderboard", web::get().to(leaderboard::page))
            .route("/agents", web::get().to(volunteers::list))
            .route(
                "/agents/enrol-key",
                web::post().to(volunteers::new_enrol_key),
            )
            .route("/agents/{id}/revoke", web::post().to(volunteers::revoke))
            .route(
                "/agents/payouts/setup",
                web::post().to(volunteers::set_up_payouts),
            )
            .wrap(actix_web::middleware::from_fn(crate::nul_text::form_bodies)),
    );
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(lastmile_dashboard::STYLESHEET)
}

async fn eligible_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(lastmile_dashboard::ELIGIBLE_JS)
}

/// "49.80 USD" from integer minor units.
fn money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!(
        "{sign}{}.{:02} {}",
        m / 100,
        m % 100,
        currency.to_uppercase()
    )
}

/// Lines on an account's money for the dashboard, from the same balances the API serves.
async fn money_lines(
    state: &crate::state::AppState,
    holder: lastmile_domain::billing::HolderKind,
    id: String,
) -> Vec<String> {
    let found = state
        .db
        .run(move |c| lastmile_domain::billing::balances(c, holder, &id))
        .await;
    let Ok(b) = found else {
        return Vec::new();
    };
    b.balances
        .iter()
        .filter(|a| a.balance_minor != 0 || a.kind != "payouts_in_transit")
        .map(|a| match a.kind.as_str() {
            "owner_credit" => {
                let held = b.held_minor.unwrap_or(0);
                let mut line = format!("Credit: {}", money(a.balance_minor - held, &a.currency));
                if held > 0 {
                    line.push_str(&format!(
                        " available ({} held for runs in progress)",
                        money(held, &a.currency)
                    ));
                }
                line
            }
            "volunteer_earnings" => format!(
                "Earned, not yet paid out: {}",
                money(a.balance_minor, &a.currency)
            ),
            "payouts_in_transit" => {
                format!("On its way to you: {}", money(a.balance_minor, &a.currency))
            }
            other => format!("{other}: {}", money(a.balance_minor, &a.currency)),
        })
        .collect()
}

/// An HTML page answer.
fn html(status: actix_web::http::StatusCode, markup: maud::Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A 303 to `location` (after a form post).
/// Marks a page that may hold a fresh secret (a token, a key) so that it does not
/// linger in caches or history.
fn no_store(mut res: HttpResponse) -> HttpResponse {
    res.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-store"),
    );
    res
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location.to_owned()))
        .finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_reads_as_an_amount_with_its_currency() {
        assert_eq!(super::money(4_980, "usd"), "49.80 USD");
        assert_eq!(super::money(5, "usd"), "0.05 USD");
        assert_eq!(super::money(-120, "eur"), "-1.20 EUR");
    }
}
