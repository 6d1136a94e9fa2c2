//! Sign-up, sign-in, sign-out and the landing redirect.

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use lastmile_dashboard::auth::{self as pages, SignInForm, SignUpForm};
use serde::Deserialize;

use super::session::{self, CsrfForm, CsrfOnly, SignedIn};
use super::{html, see_other};
use crate::state::AppState;
use lastmile_domain::error::Error;
use lastmile_domain::logins::{self, Role};

/// `/app`: where a signed-in user starts.
pub async fn home(user: Option<SignedIn>) -> HttpResponse {
    match user.map(|u| u.0.login.role()) {
        Some(Role::Owner) => see_other("/app/sites"),
        Some(Role::Volunteer) => see_other("/app/agents"),
        None => see_other("/app/sign-in"),
    }
}

/// A form shown before there is a session: it carries a CSRF token bound to a cookie
/// set now, if the browser has none yet.
fn pre_session_form(
    req: &HttpRequest,
    status: StatusCode,
    page: impl FnOnce(&str) -> maud::Markup,
) -> HttpResponse {
    let (csrf, cookie) = session::pre_session_csrf(req);
    let mut res = html(status, page(&csrf));
    if let Some(c) = cookie {
        let _ = res.add_cookie(&c);
    }
    res
}

/// Into the dashboard with a new session.
fn into_dashboard(req: &HttpRequest, token: &str) -> HttpResponse {
    let mut res = see_other("/app");
    let _ = res.add_cookie(&session::session_cookie(req, token));
    res
}

pub async fn sign_in_form(req: HttpRequest) -> HttpResponse {
    pre_session_form(&req, StatusCode::OK, |csrf| {
        pages::sign_in(&SignInForm {
            csrf,
            ..SignInForm::default()
        })
    })
}

#[derive(Deserialize)]
pub struct SignInFields {
    email: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

pub async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<SignInFields>,
) -> HttpResponse {
    let form = form.into_inner();
    let again = |status, error: &str| {
        pre_session_form(&req, status, |csrf| {
            pages::sign_in(&SignInForm {
                email: &form.email,
                error: Some(error),
                csrf,
            })
        })
    };
    if !session::pre_session_csrf_ok(&req, &form.csrf) {
        return again(
            StatusCode::FORBIDDEN,
            "This form expired or came from another site. Please sign in again.",
        );
    }
    // Two buckets: one per client address, one per email, so neither a botnet against
    // one account nor one address against many accounts gets far.
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
    let by_address = state.sign_in_quota.check(&format!("ip:{peer}"));
    let by_email = state
        .sign_in_quota
        .check(&format!("email:{}", form.email.trim().to_lowercase()));
    if !by_address.allowed || !by_email.allowed {
        let wait = by_address.reset_s.max(by_email.reset_s);
        let mut res = again(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many sign-in attempts. Try again in {wait} seconds."),
        );
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&wait.to_string()) {
            res.headers_mut()
                .insert(actix_web::http::header::RETRY_AFTER, v);
        }
        return res;
    }
    let (email, password) = (form.email.clone(), form.password.clone());
    let signed_in = state
        .db
        .run(move |c| {
            let login = logins::authenticate(c, &email, &password)?;
            logins::start_session(c, &login.id)
        })
        .await;
    match signed_in {
        Ok(token) => into_dashboard(&req, &token),
        Err(Error::Unauthorized(m)) => again(StatusCode::UNAUTHORIZED, &capitalize(&m)),
        Err(e) => again(e.status_code(), &e.to_string()),
    }
}

pub async fn sign_up_form(req: HttpRequest) -> HttpResponse {
    pre_session_form(&req, StatusCode::OK, |csrf| {
        pages::sign_up(&SignUpForm {
            csrf,
            role: "owner",
            ..SignUpForm::default()
        })
    })
}

#[derive(Deserialize)]
pub struct SignUpFields {
    #[serde(default)]
    role: String,
    name: String,
    email: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

pub async fn sign_up(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<SignUpFields>,
) -> HttpResponse {
    let form = form.into_inner();
    let again = |status, error: &str| {
        pre_session_form(&req, status, |csrf| {
            pages::sign_up(&SignUpForm {
                name: &form.name,
                email: &form.email,
                role: &form.role,
                error: Some(error),
                csrf,
            })
        })
    };
    if !session::pre_session_csrf_ok(&req, &form.csrf) {
        return again(
            StatusCode::FORBIDDEN,
            "This form expired or came from another site. Please submit it again.",
        );
    }
    let role = match logins::parse_role(&form.role) {
        Ok(r) => r,
        Err(e) => return again(e.status_code(), &e.to_string()),
    };
    let (name, email, password) = (form.name.clone(), form.email.clone(), form.password.clone());
    let created = state
        .db
        .run(move |c| {
            let login = logins::sign_up(c, role, &name, &email, &password)?;
            logins::start_session(c, &login.id)
        })
        .await;
    match created {
        Ok(token) => into_dashboard(&req, &token),
        Err(e) => again(e.status_code(), &capitalize(&e.to_string())),
    }
}

pub async fn sign_out(
    req: HttpRequest,
    state: web::Data<AppState>,
    _: CsrfForm<CsrfOnly>,
) -> HttpResponse {
    if let Some(token) = req
        .cookie(session::SESSION_COOKIE)
        .map(|c| c.value().to_owned())
    {
        if let Err(e) = state.db.run(move |c| logins::end_session(c, &token)).await {
            tracing::warn!(error = %e, "could not end session");
        }
    }
    let mut res = see_other("/app/sign-in");
    let _ = res.add_cookie(&session::cleared_session_cookie());
    res
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |f| {
        f.to_uppercase().collect::<String>() + chars.as_str()
    })
}
