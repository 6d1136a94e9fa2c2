//! An owner's API tokens: list, make (shown once), revoke.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use lastmile_dashboard::sites::problem;
use lastmile_dashboard::tokens::{self as pages, TokenItem};
use serde::Deserialize;

use super::session::SignedIn;
use super::{html, see_other};
use crate::api_tokens::{self, ApiToken};
use crate::server::AppState;

fn not_an_owner(user: &SignedIn) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        problem(
            Some(&user.nav()),
            "Not allowed",
            "API tokens belong to site owners; this is a volunteer account.",
        ),
    )
}

fn item(t: &ApiToken) -> TokenItem {
    TokenItem {
        id: t.id.clone(),
        name: t.name.clone(),
        created: t.created().format("%Y-%m-%d %H:%M UTC").to_string(),
        revoked: t
            .revoked()
            .map(|r| r.format("%Y-%m-%d %H:%M UTC").to_string()),
    }
}

async fn render(
    req: &HttpRequest,
    user: &SignedIn,
    state: &AppState,
    status: StatusCode,
    new_token: Option<(&str, &str)>,
    error: Option<&str>,
) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(user);
    };
    match state.db.run(move |c| api_tokens::list(c, &owner)).await {
        Ok(found) => {
            let items: Vec<TokenItem> = found.iter().map(item).collect();
            let mut res = html(
                status,
                pages::tokens(
                    &user.nav(),
                    &items,
                    new_token,
                    error,
                    &super::volunteers::controller_url(req),
                ),
            );
            // A page that may hold a fresh secret must not linger in caches or history.
            res.headers_mut().insert(
                actix_web::http::header::CACHE_CONTROL,
                actix_web::http::header::HeaderValue::from_static("no-store"),
            );
            res
        }
        Err(e) => html(
            e.status_code(),
            problem(Some(&user.nav()), "Something went wrong", &e.to_string()),
        ),
    }
}

pub async fn list(req: HttpRequest, user: SignedIn, state: web::Data<AppState>) -> HttpResponse {
    render(&req, &user, &state, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub struct NewTokenFields {
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: String,
}

/// Makes a token and shows it in this answer only (a redirect would have to carry the
/// secret in a URL).
pub async fn create(
    req: HttpRequest,
    user: SignedIn,
    state: web::Data<AppState>,
    form: web::Form<NewTokenFields>,
) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(&user);
    };
    if !user.csrf_ok(&form.csrf) {
        return super::sites::forbidden_form(&user);
    }
    let name = form.name.clone();
    match state
        .db
        .run(move |c| api_tokens::create(c, &owner, &name))
        .await
    {
        Ok((token, secret)) => {
            render(
                &req,
                &user,
                &state,
                StatusCode::OK,
                Some((&token.name, &secret)),
                None,
            )
            .await
        }
        Err(e) => {
            render(
                &req,
                &user,
                &state,
                e.status_code(),
                None,
                Some(&e.to_string()),
            )
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn revoke(
    user: SignedIn,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(&user);
    };
    if !user.csrf_ok(&form.csrf) {
        return super::sites::forbidden_form(&user);
    }
    let id = id.into_inner();
    match state
        .db
        .run(move |c| api_tokens::revoke(c, &owner, &id))
        .await
    {
        Ok(_) => see_other("/app/tokens"),
        Err(e) => html(
            e.status_code(),
            problem(
                Some(&user.nav()),
                if e.status_code() == StatusCode::NOT_FOUND {
                    "Not found"
                } else {
                    "Something went wrong"
                },
                &e.to_string(),
            ),
        ),
    }
}
