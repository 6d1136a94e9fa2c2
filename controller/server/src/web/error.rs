//! The one place the dashboard maps failures to HTML answers, as `api::error` does for
//! the JSON API: a handler (or an extractor) returns a [`PageError`] and this decides
//! the status and the page. A form refused for what was typed is not a `PageError`: it
//! comes back filled in with the reason, rendered by its handler.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use lastmile_dashboard::sites::problem;
use lastmile_dashboard::{Nav, Role};
use lastmile_domain::error::Error;

use super::{html, see_other};
use crate::http_status::HttpStatus;

/// Why a dashboard request ends on an error page (or back at the sign-in form). The
/// navigation is boxed to keep handlers' `Result`s small.
#[derive(Debug)]
pub enum PageError {
    /// No valid session: to the sign-in form.
    SignedOut,
    /// The session could not be read (database down): a plain 503.
    Unavailable,
    /// Signed in, but the page is for the other kind of account.
    WrongAccount { nav: Box<Nav>, page_for: Role },
    /// A form whose CSRF token is not the session's: expired, or posted by another site.
    ExpiredForm(Box<Nav>),
    /// A domain error, shown on a page with the navigation.
    Failed(Box<Nav>, Error),
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::SignedOut => f.write_str("sign in first"),
            PageError::Unavailable => f.write_str("the service is temporarily unavailable"),
            PageError::WrongAccount { page_for, .. } => write!(f, "{}", wrong_account(*page_for)),
            PageError::ExpiredForm(_) => f.write_str("the form expired"),
            PageError::Failed(_, e) => write!(f, "{e}"),
        }
    }
}

fn wrong_account(page_for: Role) -> &'static str {
    match page_for {
        Role::Owner => "This page is for site owners; this is a volunteer account.",
        Role::Volunteer => "This page is for volunteers; this is a site owner's account.",
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            PageError::SignedOut => StatusCode::SEE_OTHER,
            PageError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            PageError::WrongAccount { .. } | PageError::ExpiredForm(_) => StatusCode::FORBIDDEN,
            PageError::Failed(_, e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            PageError::SignedOut => see_other("/app/sign-in"),
            PageError::Unavailable => HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("The service is temporarily unavailable; try again shortly."),
            PageError::WrongAccount { nav, page_for } => html(
                StatusCode::FORBIDDEN,
                problem(Some(nav), "Not allowed", wrong_account(*page_for)),
            ),
            PageError::ExpiredForm(nav) => html(
                StatusCode::FORBIDDEN,
                problem(
                    Some(nav),
                    "Form expired",
                    "This form expired or came from another site; nothing was changed. \
                     Reload the page and try again.",
                ),
            ),
            PageError::Failed(nav, e) => {
                let title = match e.status_code().as_u16() {
                    404 => "Not found",
                    403 => "Not allowed",
                    _ => "Something went wrong",
                };
                html(e.status_code(), problem(Some(nav), title, &e.to_string()))
            }
        }
    }
}

/// Turns a domain result into a page result, shown with the signed-in user's navigation:
/// `state.db.run(...).await.or_page(&user)?`.
pub trait OrPage<T> {
    fn or_page(self, nav: &impl HasNav) -> Result<T, PageError>;
}

impl<T> OrPage<T> for Result<T, Error> {
    fn or_page(self, nav: &impl HasNav) -> Result<T, PageError> {
        self.map_err(|e| PageError::Failed(Box::new(nav.nav()), e))
    }
}

/// Whatever knows the navigation bar of the signed-in user.
pub trait HasNav {
    fn nav(&self) -> Nav;
}
