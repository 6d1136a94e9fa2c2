//! A site owner's sites, and a volunteer's agents.

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use lastmile_dashboard::sites::{self as pages, SiteItem};
use lastmile_domain::error::Error;
use lastmile_domain::sites::{self, NewSite, Site};
use serde::Deserialize;

use super::error::{HasNav, OrPage, PageError};
use super::session::{CsrfForm, CsrfOnly, SignedInOwner};
use super::{html, see_other};
use crate::state::AppState;

fn item(s: &Site) -> SiteItem {
    SiteItem {
        id: s.id.clone(),
        origin: s.origin.clone(),
        verified: s.verified_at.is_some(),
        verification_token: s.verification_token.clone(),
        dns_name: sites::dns_name(&s.origin),
        host: url::Url::parse(&s.origin)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default(),
        verified_by: s.verified_by.as_deref().map(|m| match m {
            "dns" => "DNS TXT record".to_owned(),
            _ => "file".to_owned(),
        }),
    }
}

pub async fn list(
    user: SignedInOwner,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let found = state
        .db
        .run(move |c| sites::list(c, &owner))
        .await
        .or_page(&user)?;
    let items: Vec<SiteItem> = found.iter().map(item).collect();
    Ok(html(
        StatusCode::OK,
        pages::list(&user.nav(), &items, None, ""),
    ))
}

#[derive(Deserialize)]
pub struct NewSiteFields {
    origin: String,
}

pub async fn create(
    user: SignedInOwner,
    state: web::Data<AppState>,
    CsrfForm(form): CsrfForm<NewSiteFields>,
) -> HttpResponse {
    let owner = user.owner_id.clone();
    let origin = form.origin.clone();
    let owner_for_list = owner.clone();
    match state
        .db
        .run(move |c| sites::create(c, &owner, &NewSite { origin }))
        .await
    {
        Ok(site) => see_other(&format!("/app/sites/{}", site.id)),
        Err(e) => {
            // Show the list again with what was typed and what is wrong with it.
            let found = state
                .db
                .run(move |c| sites::list(c, &owner_for_list))
                .await
                .unwrap_or_default();
            let items: Vec<SiteItem> = found.iter().map(item).collect();
            html(
                e.status_code(),
                pages::list(&user.nav(), &items, Some(&e.to_string()), &form.origin),
            )
        }
    }
}

pub async fn detail(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    site_page(&user, &state, id.into_inner(), StatusCode::OK, None).await
}

/// The site's page, with why verifying failed when it did.
async fn site_page(
    user: &SignedInOwner,
    state: &AppState,
    id: String,
    status: StatusCode,
    failure: Option<&str>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let site = state
        .db
        .run(move |c| sites::get(c, &owner, &id))
        .await
        .or_page(user)?;
    Ok(html(
        status,
        pages::detail(&user.nav(), &item(&site), failure),
    ))
}

/// `POST /app/sites/{id}/delete`: the site and its checks go (their history stays).
pub async fn delete(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    let write = state
        .db
        .run(move |c| lastmile_domain::deletions::delete_site(c, &owner, &id));
    state
        .writing_checks(&user.owner_id, write)
        .await
        .or_page(&user)?;
    Ok(see_other("/app/sites"))
}

#[derive(Deserialize)]
pub struct VerifyFields {
    /// `file` (default) or `dns`.
    #[serde(default)]
    method: String,
}

pub async fn verify(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    CsrfForm(form): CsrfForm<VerifyFields>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let id = id.into_inner();
    let verified = match form.method.as_str() {
        "dns" => {
            sites::verify_dns(
                &state.db,
                state.config.dns_nameserver,
                owner.clone(),
                id.clone(),
            )
            .await
        }
        _ => {
            sites::verify(
                &state.db,
                &state.config.site_fetch_policy(),
                owner.clone(),
                id.clone(),
            )
            .await
        }
    };
    match verified {
        Ok(site) => Ok(see_other(&format!("/app/sites/{}", site.id))),
        Err(e @ Error::NotFound { .. }) => Err(PageError::Failed(Box::new(user.nav()), e)),
        Err(e) => {
            // Verification failed: say why on the site's page.
            site_page(&user, &state, id, e.status_code(), Some(&e.to_string())).await
        }
    }
}
