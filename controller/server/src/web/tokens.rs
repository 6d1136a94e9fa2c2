//! An owner's API tokens: list, make (shown once), revoke.

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use lastmile_dashboard::tokens::{self as pages, TokenItem};
use lastmile_domain::api_tokens::{self, ApiToken};
use serde::Deserialize;

use super::error::{HasNav, OrPage, PageError};
use super::session::{CsrfForm, CsrfOnly, SignedInOwner};
use super::{html, see_other};
use crate::state::AppState;

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
    user: &SignedInOwner,
    state: &AppState,
    status: StatusCode,
    new_token: Option<(&str, &str)>,
    error: Option<&str>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let found = state
        .db
        .run(move |c| api_tokens::list(c, &owner))
        .await
        .or_page(user)?;
    let items: Vec<TokenItem> = found.iter().map(item).collect();
    let res = html(
        status,
        pages::tokens(
            &user.nav(),
            &items,
            new_token,
            error,
            &super::volunteers::controller_url(req),
        ),
    );
    // It may hold a fresh token.
    Ok(super::no_store(res))
}

pub async fn list(
    req: HttpRequest,
    user: SignedInOwner,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    render(&req, &user, &state, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub struct NewTokenFields {
    #[serde(default)]
    name: String,
}

/// Makes a token and shows it in this answer only (a redirect would have to carry the
/// secret in a URL).
pub async fn create(
    req: HttpRequest,
    user: SignedInOwner,
    state: web::Data<AppState>,
    CsrfForm(form): CsrfForm<NewTokenFields>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
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

pub async fn revoke(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    state
        .db
        .run(move |c| api_tokens::revoke(c, &owner, &id))
        .await
        .or_page(&user)?;
    // Refused here at once; other replicas check their tokens again within
    // `agent_refresh_ms`.
    state.owner_tokens.forget_owner(&user.owner_id);
    Ok(see_other("/app/tokens"))
}
