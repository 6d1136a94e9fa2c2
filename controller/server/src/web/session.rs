//! Browser sessions: the cookie, who the caller is ([`SignedIn`], [`SignedInOwner`],
//! [`SignedInVolunteer`]) and CSRF ([`CsrfForm`]), each decided once by an extractor
//! that fails with the right page ([`PageError`]), not by a preamble in each handler.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use lastmile_dashboard::{Nav, Role};
use lastmile_domain::error::Error;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{HasNav, PageError};

use crate::state::AppState;
use lastmile_domain::logins::{self, Session};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "lm_session";
/// The pre-sign-in CSRF cookie (double-submit).
pub const CSRF_COOKIE: &str = "lm_csrf";

/// A request from a signed-in browser, of either kind of account.
pub struct SignedIn(pub Session);

impl SignedIn {
    /// Whether a posted form's CSRF token is this session's.
    pub fn csrf_ok(&self, posted: &str) -> bool {
        constant_time_eq(posted, &self.0.csrf_token)
    }
}

impl HasNav for SignedIn {
    fn nav(&self) -> Nav {
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
}

/// How the one session lookup of a request ended (cloneable, so every extractor of the
/// request can share it).
#[derive(Clone)]
enum Lookup {
    Found(Session),
    SignedOut,
    Unavailable,
}

/// The one lookup of a request's session, shared by every extractor that asks.
type SharedLookup = Shared<LocalBoxFuture<'static, Lookup>>;

/// The session of `req`, looked up once per request by its cookie: the lookup is kept
/// in the request's extensions as a shared future, so an identity extractor and a
/// [`CsrfForm`] in one handler (whose futures actix creates before polling either) cost
/// one query.
fn session_of(req: &HttpRequest) -> LocalBoxFuture<'static, Result<SignedIn, PageError>> {
    let existing = req.extensions().get::<SharedLookup>().cloned();
    let lookup = existing.unwrap_or_else(|| {
        let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let lookup: LocalBoxFuture<'static, Lookup> = Box::pin(async move {
            let (Some(token), Some(state)) = (token, state) else {
                return Lookup::SignedOut;
            };
            match state.db.run(move |c| logins::session(c, &token)).await {
                Ok(Some(session)) => Lookup::Found(session),
                Ok(None) => Lookup::SignedOut,
                Err(e) => {
                    tracing::warn!(error = %e, "session lookup failed");
                    Lookup::Unavailable
                }
            }
        });
        let shared = lookup.shared();
        req.extensions_mut().insert(shared.clone());
        shared
    });
    Box::pin(async move {
        match lookup.await {
            Lookup::Found(session) => Ok(SignedIn(session)),
            Lookup::SignedOut => Err(PageError::SignedOut),
            Lookup::Unavailable => Err(PageError::Unavailable),
        }
    })
}

impl FromRequest for SignedIn {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, PageError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        session_of(req)
    }
}

/// The session of `req` if its account is of the kind `page_for`, with that account's
/// id (`id_of`); otherwise the "this page is for ..." page.
fn account_of(
    req: &HttpRequest,
    page_for: Role,
    id_of: fn(&logins::Login) -> Option<String>,
) -> LocalBoxFuture<'static, Result<(SignedIn, String), PageError>> {
    let session = session_of(req);
    Box::pin(async move {
        let user = session.await?;
        match id_of(&user.0.login) {
            Some(id) => Ok((user, id)),
            None => Err(PageError::WrongAccount {
                nav: Box::new(user.nav()),
                page_for,
            }),
        }
    })
}

/// A signed-in site owner; a volunteer gets the "this page is for site owners" page.
pub struct SignedInOwner {
    pub user: SignedIn,
    pub owner_id: String,
}

impl FromRequest for SignedInOwner {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, PageError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let account = account_of(req, Role::Owner, |l| l.owner_id.clone());
        Box::pin(async move {
            let (user, owner_id) = account.await?;
            Ok(SignedInOwner { user, owner_id })
        })
    }
}

/// A signed-in volunteer; a site owner gets the "this page is for volunteers" page.
pub struct SignedInVolunteer {
    pub user: SignedIn,
    pub volunteer_id: String,
}

impl FromRequest for SignedInVolunteer {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, PageError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let account = account_of(req, Role::Volunteer, |l| l.volunteer_id.clone());
        Box::pin(async move {
            let (user, volunteer_id) = account.await?;
            Ok(SignedInVolunteer { user, volunteer_id })
        })
    }
}

impl HasNav for SignedInOwner {
    fn nav(&self) -> Nav {
        self.user.nav()
    }
}

impl HasNav for SignedInVolunteer {
    fn nav(&self) -> Nav {
        self.user.nav()
    }
}

/// A posted form (`application/x-www-form-urlencoded`, repeated keys for lists) whose
/// CSRF token (field `csrf`, read here, so `T` names only the form's own fields) is the
/// signed-in session's; otherwise the "form expired" page, and the handler never runs.
/// A body that is not such a form is a 400 page.
pub struct CsrfForm<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for CsrfForm<T> {
    type Error = PageError;
    type Future = LocalBoxFuture<'static, Result<Self, PageError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let session = session_of(req);
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            let user = session.await?;
            let unreadable = |why: String| {
                PageError::Failed(
                    Box::new(user.nav()),
                    Error::BadRequest {
                        code: "invalid_form",
                        message: format!("the form could not be read: {why}"),
                    },
                )
            };
            let body = body.await.map_err(|e| unreadable(e.to_string()))?;
            let token: CsrfOnly =
                serde_html_form::from_bytes(&body).map_err(|e| unreadable(e.to_string()))?;
            if !user.csrf_ok(&token.csrf) {
                return Err(PageError::ExpiredForm(Box::new(user.nav())));
            }
            let form: T =
                serde_html_form::from_bytes(&body).map_err(|e| unreadable(e.to_string()))?;
            Ok(CsrfForm(form))
        })
    }
}

/// A form with nothing but its CSRF token (pause, resume, run now, revoke, sign out...).
#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
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
    let token = lastmile_domain::accounts::new_secret("");
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
