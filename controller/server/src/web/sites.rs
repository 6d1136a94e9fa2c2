//! A site owner's sites, and a volunteer's agents.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use lastmile_dashboard::sites::{self as pages, SiteItem};
use serde::Deserialize;

use super::session::SignedIn;
use super::{html, see_other};
use crate::error::Error;
use crate::server::AppState;
use crate::sites::{self, NewSite, Site};

fn item(s: &Site) -> SiteItem {
    SiteItem {
        id: s.id.clone(),
        origin: s.origin.clone(),
        verified: s.verified_at.is_some(),
        verification_token: s.verification_token.clone(),
        dns_name: sites::dns_name(&s.origin),
        verified_by: s.verified_by.as_deref().map(|m| match m {
            "dns" => "DNS TXT record".to_owned(),
            _ => "file".to_owned(),
        }),
    }
}

/// The answer to a form whose CSRF token is wrong.
pub fn forbidden_form(user: &SignedIn) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        pages::problem(
            Some(&user.nav()),
            "Form expired",
            "This form expired or came from another site; nothing was changed. Reload the page and try again.",
        ),
    )
}

fn problem(user: &SignedIn, e: &Error) -> HttpResponse {
    let title = match e.status_code().as_u16() {
        404 => "Not found",
        403 => "Not allowed",
        _ => "Something went wrong",
    };
    html(
        e.status_code(),
        pages::problem(Some(&user.nav()), title, &e.to_string()),
    )
}

/// The page a volunteer gets for an owner's page.
fn not_an_owner(user: &SignedIn) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        pages::problem(
            Some(&user.nav()),
            "Not allowed",
            "Sites belong to site owners; this is a volunteer account.",
        ),
    )
}

pub async fn list(user: SignedIn, state: web::Data<AppState>) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(&user);
    };
    match state.db.run(move |c| sites::list(c, &owner)).await {
        Ok(found) => {
            let items: Vec<SiteItem> = found.iter().map(item).collect();
            html(StatusCode::OK, pages::list(&user.nav(), &items, None, ""))
        }
        Err(e) => problem(&user, &e),
    }
}

#[derive(Deserialize)]
pub struct NewSiteFields {
    origin: String,
    #[serde(default)]
    csrf: String,
}

pub async fn create(
    user: SignedIn,
    state: web::Data<AppState>,
    form: web::Form<NewSiteFields>,
) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(&user);
    };
    if !user.csrf_ok(&form.csrf) {
        return forbidden_form(&user);
    }
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
    user: SignedIn,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(&user);
    };
    let id = id.into_inner();
    match state.db.run(move |c| sites::get(c, &owner, &id)).await {
        Ok(site) => html(
            StatusCode::OK,
            pages::detail(&user.nav(), &item(&site), None),
        ),
        Err(e) => problem(&user, &e),
    }
}

#[derive(Deserialize)]
pub struct VerifyFields {
    #[serde(default)]
    csrf: String,
    /// `file` (default) or `dns`.
    #[serde(default)]
    method: String,
}

pub async fn verify(
    user: SignedIn,
    state: web::Data<AppState>,
    id: web::Path<String>,
    form: web::Form<VerifyFields>,
) -> HttpResponse {
    let Some(owner) = user.0.login.owner_id.clone() else {
        return not_an_owner(&user);
    };
    if !user.csrf_ok(&form.csrf) {
        return forbidden_form(&user);
    }
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
        _ => sites::verify(&state.db, &state.config, owner.clone(), id.clone()).await,
    };
    match verified {
        Ok(site) => see_other(&format!("/app/sites/{}", site.id)),
        Err(e @ Error::NotFound { .. }) => problem(&user, &e),
        Err(e) => {
            // Verification failed: say why on the site's page.
            match state.db.run(move |c| sites::get(c, &owner, &id)).await {
                Ok(site) => html(
                    e.status_code(),
                    pages::detail(&user.nav(), &item(&site), Some(&e.to_string())),
                ),
                Err(e) => problem(&user, &e),
            }
        }
    }
}
