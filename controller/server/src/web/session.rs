//! Browser sessions: the cookie, the signed-in extractor, and CSRF checks.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use lastmile_dashboard::{Nav, Role};

use crate::logins::{self, Session};
use crate::server::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "lm_session";
/// The pre-sign-in CSRF cookie (double-submit).
pub const CSRF_COOKIE: &str = "lm_csrf";

/// A request from a signed-in browser.
pub struct SignedIn(pub Session);

impl SignedIn {
    pub fn nav(&self) -> Nav {
        Nav {
            name: self.0.name.clone(),
            email: self.0.login.email.clone(),
            role: match self.0.login.role() {
                logins::Role::Owner => Role::Owner,
                logins::Role::Volunteer => Role::Volunteer,
            },
            csrf: self.0.csrf_token.clone(),
        }
    }

    /// Whether a posted form's CSRF token is this session's.
    pub fn csrf_ok(&self, posted: &str) -> bool {
        constant_time_eq(posted, &self.0.csrf_token)
    }
}

/// Why a request could not be served as signed in.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("sign in first")]
    SignedOut,
    #[error("the service is temporarily unavailable")]
    Unavailable,
}

impl ResponseError for SessionError {
    fn error_response(&self) -> HttpResponse {
        match self {
            SessionError::SignedOut => super::see_other("/app/sign-in"),
            SessionError::Unavailable => HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("The service is temporarily unavailable; try again shortly."),
        }
    }
}

impl FromRequest for SignedIn {
    type Error = SessionError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, SessionError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(token), Some(state)) = (token, state) else {
                return Err(SessionError::SignedOut);
            };
            match state.db.run(move |c| logins::session(c, &token)).await {
                Ok(Some(session)) => Ok(SignedIn(session)),
                Ok(None) => Err(SessionError::SignedOut),
                Err(e) => {
                    tracing::warn!(error = %e, "session lookup failed");
                    Err(SessionError::Unavailable)
                }
            }
        })
    }
}

/// The session cookie: HttpOnly, SameSite=Lax (links from mail still sign you in, posts
/// from other sites do not carry it), Secure when served over HTTPS. Its path is `/` so
/// that the dashboard's download links can read the JSON API as the signed-in owner.
pub fn session_cookie(req: &HttpRequest, token: &str) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token.to_owned())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(req.connection_info().scheme() == "https")
        .max_age(actix_web::cookie::time::Duration::seconds(
            logins::SESSION_LIFETIME_US / 1_000_000,
        ))
        .finish()
}

/// A cookie that removes the session cookie.
pub fn cleared_session_cookie() -> Cookie<'static> {
    let mut c = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    c.make_removal();
    c
}

/// The pre-sign-in CSRF token: the cookie's if the browser has one, else a new one
/// (returned with the cookie to set).
pub fn pre_session_csrf(req: &HttpRequest) -> (String, Option<Cookie<'static>>) {
    if let Some(c) = req.cookie(CSRF_COOKIE) {
        if c.value().len() == 64 {
            return (c.value().to_owned(), None);
        }
    }
    let token = crate::accounts::new_secret("");
    let cookie = Cookie::build(CSRF_COOKIE, token.clone())
        .path("/app")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.connection_info().scheme() == "https")
        .finish();
    (token, Some(cookie))
}

/// Whether a sign-in/up form's token matches the browser's CSRF cookie.
pub fn pre_session_csrf_ok(req: &HttpRequest, posted: &str) -> bool {
    req.cookie(CSRF_COOKIE)
        .is_some_and(|c| c.value().len() == 64 && constant_time_eq(c.value(), posted))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
