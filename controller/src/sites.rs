//! Sites: origins an owner has proven to control.
//!
//! **Architecture Invariant:** checks only target verified sites, so the network can
//! never be pointed at someone else's server. Ownership is proven by serving the site's
//! verification token at `<origin>/.well-known/lastmile/<token>`. The controller fetches
//! that URL itself; it refuses private and loopback origins unless the operator enabled
//! `allow_private_sites` (local testing), so verification cannot probe the controller's
//! own network.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::accounts::new_secret;
use crate::clock::{now_us, to_datetime};
use crate::db::schema::sites;
use crate::db::{Db, DbConn};
use crate::error::{Error, Result};

/// A site as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sites)]
pub struct Site {
    pub id: String,
    pub owner_id: String,
    pub origin: String,
    pub verification_token: String,
    pub verified_at: Option<i64>,
    pub created_at: i64,
    /// How ownership was proven: `file` or `dns` (`None` before, and for sites verified
    /// before the DNS method existed).
    pub verified_by: Option<String>,
}

/// Request body to add a site.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    /// The site's origin: scheme, host and optional port, e.g. `https://shop.example`.
    pub origin: String,
}

/// A site as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SiteView {
    pub id: Uuid,
    pub origin: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
    /// Serve this token as the body of `verification_url`, then call verify.
    pub verification_token: String,
    pub verification_url: String,
    /// Or publish the token as a TXT record at this name, then call verify with
    /// `{"method": "dns"}`.
    pub verification_dns_name: Option<String>,
    /// `file` or `dns` once verified.
    pub verified_by: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&Site> for SiteView {
    fn from(s: &Site) -> SiteView {
        SiteView {
            id: s.id.parse().unwrap_or_default(),
            origin: s.origin.clone(),
            verified: s.verified_at.is_some(),
            verified_at: s.verified_at.map(to_datetime),
            verification_token: s.verification_token.clone(),
            verification_url: verification_url(&s.origin, &s.verification_token),
            verification_dns_name: dns_name(&s.origin),
            verified_by: s.verified_by.clone(),
            created_at: to_datetime(s.created_at),
        }
    }
}

fn verification_url(origin: &str, token: &str) -> String {
    format!("{origin}/.well-known/lastmile/{token}")
}

/// `_lastmile.<host>` for a site on a host name; `None` for an IP address origin,
/// which has no DNS name to publish a record under.
pub fn dns_name(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    match url.host()? {
        url::Host::Domain(d) => Some(crate::dns_verify::record_name(d)),
        _ => None,
    }
}

/// How an owner proves a site is theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Serve the token at `/.well-known/lastmile/<token>`.
    #[default]
    File,
    /// Publish the token as a TXT record at `_lastmile.<host>`.
    Dns,
}

/// Normalises an origin (`https://Shop.Example:443/` -> `https://shop.example`).
pub fn normalize_origin(raw: &str) -> Result<String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| {
        Error::invalid(
            "invalid_origin",
            format!("origin {raw:?} is not a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "invalid_origin",
            "origin must be http:// or https://",
        ));
    }
    if url.host_str().is_none() || url.path() != "/" || url.query().is_some() {
        return Err(Error::invalid(
            "invalid_origin",
            "origin is scheme, host and optional port only, without a path",
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// Adds a site for an owner (unverified).
pub fn create(conn: &mut DbConn, owner_id: &str, new: &NewSite) -> Result<Site> {
    let site = Site {
        id: Uuid::new_v4().to_string(),
        owner_id: owner_id.to_owned(),
        origin: normalize_origin(&new.origin)?,
        verification_token: new_secret("lms_"),
        verified_at: None,
        created_at: now_us(),
        verified_by: None,
    };
    diesel::insert_into(sites::table)
        .values(&site)
        .execute(conn)
        .map_err(|e| match Error::from(e) {
            Error::Conflict { .. } => Error::conflict(
                "site_exists",
                format!("you already have the site {}", site.origin),
            ),
            other => other,
        })?;
    Ok(site)
}

/// The owner's site with this id.
pub fn get(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<Site> {
    sites::table
        .filter(sites::id.eq(id).and(sites::owner_id.eq(owner_id)))
        .select(Site::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound {
            what: "site",
            code: "site_not_found",
        })
}

/// The owner's sites, oldest first.
pub fn list(conn: &mut DbConn, owner_id: &str) -> Result<Vec<Site>> {
    Ok(sites::table
        .filter(sites::owner_id.eq(owner_id))
        .order(sites::created_at)
        .select(Site::as_select())
        .load(conn)?)
}

/// Fetches the verification URL and marks the site verified if it serves the token.
pub async fn verify(
    db: &Db,
    http: &reqwest::Client,
    allow_private: bool,
    owner_id: String,
    id: String,
) -> Result<Site> {
    let site = db.run(move |c| get(c, &owner_id, &id)).await?;
    if site.verified_at.is_some() {
        return Ok(site);
    }
    let url = verification_url(&site.origin, &site.verification_token);
    if !allow_private {
        ensure_public(&site.origin).await?;
    }
    let body = async {
        let response = http
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    }
    .await
    .map_err(|e| Error::invalid("verification_failed", format!("cannot fetch {url}: {e}")))?;
    if !body.0.is_success() || body.1.trim() != site.verification_token {
        return Err(Error::invalid(
            "verification_failed",
            format!(
                "{url} answered {} without the verification token; serve exactly the token as the body",
                body.0
            ),
        ));
    }
    mark_verified(db, site, Method::File).await
}

async fn mark_verified(db: &Db, site: Site, method: Method) -> Result<Site> {
    let verified_at = now_us();
    let by = match method {
        Method::File => "file",
        Method::Dns => "dns",
    };
    let id = site.id.clone();
    db.run(move |c| {
        diesel::update(sites::table.find(&id))
            .set((
                sites::verified_at.eq(verified_at),
                sites::verified_by.eq(by),
            ))
            .execute(c)
            .map_err(Error::from)
    })
    .await?;
    Ok(Site {
        verified_at: Some(verified_at),
        verified_by: Some(by.to_owned()),
        ..site
    })
}

/// Looks up `_lastmile.<host>` TXT records and marks the site verified if one of them
/// is exactly its token. `nameserver`: see [`crate::dns_verify`].
pub async fn verify_dns(
    db: &Db,
    nameserver: Option<std::net::SocketAddr>,
    owner_id: String,
    id: String,
) -> Result<Site> {
    let site = db.run(move |c| get(c, &owner_id, &id)).await?;
    if site.verified_at.is_some() {
        return Ok(site);
    }
    let name = dns_name(&site.origin).ok_or_else(|| {
        Error::invalid(
            "verification_failed",
            format!(
                "{} is an IP address, which has no DNS name for a TXT record; use the file method",
                site.origin
            ),
        )
    })?;
    let values = crate::dns_verify::txt_values(nameserver, &name).await?;
    if !values.iter().any(|v| v.trim() == site.verification_token) {
        let found = if values.is_empty() {
            "no TXT record".to_owned()
        } else {
            format!("{} TXT record(s), none of them the token", values.len())
        };
        return Err(Error::invalid(
            "verification_failed",
            format!(
                "{name} has {found}; publish a TXT record there whose value is exactly the token (DNS changes can take a few minutes to show)"
            ),
        ));
    }
    mark_verified(db, site, Method::Dns).await
}

async fn ensure_public(origin: &str) -> Result<()> {
    let url = url::Url::parse(origin).map_err(|e| Error::Internal(e.to_string()))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| {
            Error::invalid("verification_failed", format!("cannot resolve {host}: {e}"))
        })?;
    for addr in addrs {
        if lastmile_agent::guard::is_forbidden(addr.ip()) {
            return Err(Error::forbidden(
                "private_origin",
                format!(
                    "{host} resolves to a private address ({}); sites must be public",
                    addr.ip()
                ),
            ));
        }
    }
    Ok(())
}
