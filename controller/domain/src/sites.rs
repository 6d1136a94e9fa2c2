//! Sites: origins an owner has proven to control.
//!
//! **Architecture Invariant:** checks only target verified sites, so the network can
//! never be pointed at someone else's server. Ownership is proven by serving the site's
//! verification token at `<origin>/.well-known/lastmile/<token>`. The controller fetches
//! that URL itself; it refuses private and loopback origins unless the operator enabled
//! `allow_private_sites` (local testing) or listed the network in `allow_site_nets`, so
//! verification cannot probe the controller's own network.
//!
//! The fetch cannot be DNS-rebound: the origin's host is resolved once, every address is
//! judged by [`lastmile_protocol::address`], and the client is pinned to those addresses
//! (`resolve_to_addrs`), so reqwest never resolves it again. A redirect (at most
//! [`MAX_VERIFY_REDIRECTS`]) to an IP literal is judged by the redirect policy; one to
//! another name is resolved, once and through the same judgement, by [`GuardedResolver`],
//! the client's only resolver. No proxy is used. An IP-literal origin
//! (`http://[2001:db8::1]:8080`) is judged as it is, never sent to a resolver.
//!
//! Once the controller has connected, every failure reads the same to the owner (a
//! closed port, a refused redirect, a wrong status or body), so verification cannot be
//! used to scan ports; the cause goes to the log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use lastmile_protocol::address::{self, NonPublic};

use crate::accounts::new_secret;
use crate::clock::{now_us, to_datetime};
use crate::error::{Error, Result};
use lastmile_storage::schema::sites;
pub use lastmile_storage::sites::Site;
use lastmile_storage::{Db, DbConn};

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
    lastmile_storage::write_tx(conn, |c| {
        // A site the owner deleted is added anew in its old row (origins are unique per
        // owner): unverified, with a fresh token; its deleted checks stay deleted.
        let deleted: Option<String> = sites::table
            .filter(sites::owner_id.eq(owner_id))
            .filter(sites::origin.eq(&site.origin))
            .filter(sites::deleted_at.is_not_null())
            .select(sites::id)
            .first(c)
            .optional()?;
        if let Some(id) = deleted {
            diesel::update(sites::table.find(&id))
                .set((
                    sites::verification_token.eq(&site.verification_token),
                    sites::verified_at.eq(None::<i64>),
                    sites::verified_by.eq(None::<String>),
                    sites::created_at.eq(site.created_at),
                    sites::deleted_at.eq(None::<i64>),
                ))
                .execute(c)?;
            return Ok(Site { id, ..site.clone() });
        }
        diesel::insert_into(sites::table)
            .values(&site)
            .execute(c)
            .map_err(|e| match Error::from(e) {
                Error::Conflict { .. } => Error::conflict(
                    "site_exists",
                    format!("you already have the site {}", site.origin),
                ),
                other => other,
            })?;
        Ok(site.clone())
    })
}

/// The owner's site with this id.
pub fn get(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<Site> {
    Ok(lastmile_storage::sites::get(conn, owner_id, id)?)
}

/// The owner's sites, oldest first.
pub fn list(conn: &mut DbConn, owner_id: &str) -> Result<Vec<Site>> {
    Ok(lastmile_storage::sites::list(conn, owner_id)?)
}

/// Fetches the verification URL and marks the site verified if it serves the token.
/// What may be fetched, and which nameserver resolves the origin, come from `policy`
/// (`allow_private_sites`, `allow_site_nets`, `dns_nameserver`).
pub async fn verify(db: &Db, policy: &FetchPolicy, owner_id: String, id: String) -> Result<Site> {
    let site = db.run(move |c| get(c, &owner_id, &id)).await?;
    if site.verified_at.is_some() {
        return Ok(site);
    }
    let url = verification_url(&site.origin, &site.verification_token);
    let client = policy.client_for(&site.origin).await?;
    let outcome = fetch_token(&client, &url).await;
    let served = match &outcome {
        Ok((status, body)) => status.is_success() && body.trim() == site.verification_token,
        Err(_) => false,
    };
    if !served {
        // The owner learns only that the token was not read; whether the port was
        // closed, a redirect refused or the status wrong stays in the log, so that
        // verification is no port scanner.
        match &outcome {
            Ok((status, _)) => tracing::info!(
                site = %site.id, %url, %status,
                "site verification: the site answered without the token"
            ),
            Err(cause) => tracing::info!(
                site = %site.id, %url, %cause,
                "site verification: cannot fetch the token"
            ),
        }
        return Err(Error::invalid(
            "verification_failed",
            format!(
                "could not read the verification token at {url}: serve exactly the token as \
                 the body, with status 200 (at most {MAX_VERIFY_REDIRECTS} redirects are \
                 followed, to public addresses only)"
            ),
        ));
    }
    mark_verified(db, site, Method::File).await
}

/// What a refusal of a private address adds: how an operator lets one through.
const PRIVATE_HINT: &str = " (to test on your own machine, start the controller with \
    --allow-private-sites or LASTMILE_ALLOW_PRIVATE_SITES=true; for a lab network, \
    --allow-site-net CIDR)";

/// Redirects site verification follows at most.
pub const MAX_VERIFY_REDIRECTS: usize = 5;

/// The most of a verification answer's body that is read: a token is short.
const MAX_TOKEN_BODY: usize = 4096;

/// An error and every cause under it, joined by ": " (reqwest's own text alone is
/// "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Fetches `url` with the pinned client: its status and (the start of) its body. The
/// error is the whole cause chain, for the log.
async fn fetch_token(
    client: &reqwest::Client,
    url: &str,
) -> std::result::Result<(reqwest::StatusCode, String), String> {
    let chain = |e: reqwest::Error| error_chain(&e);
    let mut response = client.get(url).send().await.map_err(chain)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(chain)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_TOKEN_BODY {
            break;
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What site verification may connect to: the address guard with the operator's
/// exceptions, and the nameserver that resolves names.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    nameserver: Option<SocketAddr>,
    allow_private: bool,
    allow_nets: Arc<[ipnet::IpNet]>,
}

/// Why a host may not be fetched.
#[derive(Debug)]
enum Refusal {
    /// No address: the resolver's reason.
    Unresolvable(String),
    /// An address that is not public, and the registry block it lies in.
    NotPublic(IpAddr, NonPublic),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unresolvable(why) => f.write_str(why),
            Refusal::NotPublic(ip, why) => write!(f, "{ip} is not public ({why})"),
        }
    }
}

impl std::error::Error for Refusal {}

impl FetchPolicy {
    /// `nameserver` resolves origins (unset: the system's resolver); `allow_private`
    /// lets every address through (local testing); `allow_nets` lists networks allowed
    /// although not public.
    pub fn new(
        nameserver: Option<SocketAddr>,
        allow_private: bool,
        allow_nets: &[ipnet::IpNet],
    ) -> FetchPolicy {
        FetchPolicy {
            nameserver,
            allow_private,
            allow_nets: allow_nets.into(),
        }
    }

    /// The block that forbids `ip`, unless local testing or an allowed network lets it
    /// through.
    fn refuses(&self, ip: IpAddr) -> Option<NonPublic> {
        if self.allow_private || self.allow_nets.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        address::non_public(ip)
    }

    /// Resolves `host` once; every address must pass (a name that mixes public and
    /// private addresses is refused, as a misconfiguration or a rebinding attempt).
    async fn resolve(&self, host: &str) -> std::result::Result<Vec<IpAddr>, Refusal> {
        let ips = crate::dns_verify::lookup_ips(self.nameserver, host)
            .await
            .map_err(Refusal::Unresolvable)?;
        for ip in &ips {
            if let Some(why) = self.refuses(*ip) {
                return Err(Refusal::NotPublic(*ip, why));
            }
        }
        Ok(ips)
    }

    /// A client for verifying `origin`: its host judged (and, a name, resolved) now, the
    /// client pinned to those addresses, redirects and other names judged as they come.
    /// Refusing the origin itself says why: that is DNS, not a probe of the network.
    async fn client_for(&self, origin: &str) -> Result<reqwest::Client> {
        let url = url::Url::parse(origin).map_err(|e| Error::Internal(e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .user_agent(concat!("lastmile-controller/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(0)
            .dns_resolver(Arc::new(GuardedResolver(self.clone())));
        let policy = self.clone();
        builder = builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
            policy.redirect(attempt)
        }));
        match url.host() {
            Some(url::Host::Ipv4(v4)) => {
                self.judged_addresses(&v4.to_string()).await?;
            }
            Some(url::Host::Ipv6(v6)) => {
                self.judged_addresses(&v6.to_string()).await?;
            }
            Some(url::Host::Domain(host)) => {
                let ips = self.judged_addresses(host).await?;
                // Port 0: reqwest puts the URL's port in.
                let addrs: Vec<SocketAddr> =
                    ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
                builder = builder.resolve_to_addrs(host, &addrs);
            }
            None => {
                return Err(Error::invalid(
                    "invalid_origin",
                    format!("{origin} has no host"),
                ))
            }
        }
        builder
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the verification client: {e}")))
    }

    /// The addresses of `host` (a name, or an IP literal without brackets) that may be
    /// reached, judged now: a literal as it is (never handed to a resolver), a name
    /// resolved once with every address passing the guard. A refusal says why, as for a
    /// site's origin (that is DNS, not a probe of the network).
    pub async fn judged_addresses(&self, host: &str) -> Result<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return match self.refuses(ip) {
                Some(why) => Err(Error::forbidden(
                    "private_origin",
                    format!(
                        "{host} is {ip}, which is not a public address ({why}); sites must be \
                         public{PRIVATE_HINT}"
                    ),
                )),
                None => Ok(vec![ip]),
            };
        }
        self.resolve(host).await.map_err(|r| match r {
            Refusal::Unresolvable(why) => Error::invalid("verification_failed", why),
            Refusal::NotPublic(ip, why) => Error::forbidden(
                "private_origin",
                format!(
                    "{host} resolves to {ip}, which is not a public address ({why}); \
                     sites must be public{PRIVATE_HINT}"
                ),
            ),
        })
    }

    /// A client for posting to `url` (alert webhooks): the same guard as verifying a
    /// site's origin, its host judged and pinned now.
    pub async fn guarded_client(&self, url: &str) -> Result<reqwest::Client> {
        self.client_for(url).await
    }

    /// Follows a redirect only to http(s), within the hop limit, and to an IP literal
    /// only if it is allowed; a name is judged by [`GuardedResolver`] when it connects.
    fn redirect(&self, attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
        // The first of `previous` is the verification URL itself, not a redirect.
        if attempt.previous().len() > MAX_VERIFY_REDIRECTS {
            return attempt.error(format!("more than {MAX_VERIFY_REDIRECTS} redirects"));
        }
        let url = attempt.url();
        if !matches!(url.scheme(), "http" | "https") {
            let why = format!("redirect to {url}, which is not http(s)");
            return attempt.error(why);
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => None,
            None => {
                let why = format!("redirect to {url}, which has no host");
                return attempt.error(why);
            }
        };
        if let Some(why) = literal.and_then(|ip| self.refuses(ip).map(|w| (ip, w))) {
            let why = format!("redirect to {url}: {}", Refusal::NotPublic(why.0, why.1));
            return attempt.error(why);
        }
        attempt.follow()
    }
}

/// The verification client's resolver: a name is resolved once (configured nameserver
/// or the system's) and refused unless every address passes the guard, so reqwest only
/// ever connects to judged addresses.
struct GuardedResolver(FetchPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = policy.resolve(&host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
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
