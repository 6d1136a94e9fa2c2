//! The dashboard over HTTP: thin handlers that authenticate a browser session, call the
//! same domain functions as the JSON API, and render `lastmile_dashboard` pages.
//!
//! Forms post `application/x-www-form-urlencoded`; every state-changing form carries a
//! CSRF token (the session's, or before sign-in a double-submit cookie), and answers
//! with a redirect (post/redirect/get) so a reload never submits twice.

mod auth;
mod checks;
mod session;
mod sites;
mod volunteers;

use actix_web::{web, HttpResponse};

pub use session::SESSION_COOKIE;

/// Mounts the dashboard under `/app`.
pub fn configure(cfg: &mut web::ServiceConfig) {
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
            .route("/static/eligible.js", web::get().to(eligible_js))
            .route("/checks", web::get().to(checks::list))
            .route("/checks", web::post().to(checks::create))
            .route("/checks/new", web::get().to(checks::new_form))
            .route("/checks/eligible", web::get().to(checks::eligible))
            .route("/checks/{id}", web::get().to(checks::detail))
            .route("/checks/{id}/runs", web::post().to(checks::run_now))
            .route("/agents", web::get().to(volunteers::list))
            .route(
                "/agents/enrol-key",
                web::post().to(volunteers::new_enrol_key),
            ),
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

/// An HTML page answer.
fn html(status: actix_web::http::StatusCode, markup: maud::Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A 303 to `location` (after a form post).
fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location.to_owned()))
        .finish()
}
