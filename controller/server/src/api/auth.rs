//! Extractors that authenticate a request by its bearer token.
//!
//! Owners and agents hold different tokens (`lmo_...`, `lma_...`); a handler that
//! takes [`AuthOwner`] or [`AuthAgent`] cannot run for anyone else. [`AuthHolder`]
//! (balances) accepts an owner, or a volunteer by enrolment key or agent token.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{web, FromRequest, HttpRequest};
use lastmile_protocol::Location;

use crate::api::error::Failure;
use crate::state::AppState;
use lastmile_domain::accounts::{self, Owner};
use lastmile_domain::agents::{self, Agent};
use lastmile_domain::billing::HolderKind;
use lastmile_domain::clock;
use lastmile_domain::error::Error;
use lastmile_storage::DbConn;

pub(super) fn bearer(req: &HttpRequest) -> Result<String, Failure> {
    let header = req.headers().get(actix_web::http::header::AUTHORIZATION);
    Ok(bearer_token(header.map(|v| v.as_bytes()))?)
}

/// The token of an `Authorization: Bearer <token>` header, given its bytes (from
/// whichever listener read it); a 401 saying what is wrong otherwise.
pub(crate) fn bearer_token(header: Option<&[u8]>) -> Result<String, Error> {
    let header = header.ok_or_else(|| {
        Error::Unauthorized("missing Authorization: Bearer <token> header".into())
    })?;
    // Visible ASCII, as actix's `HeaderValue::to_str` reads it.
    let value = header
        .iter()
        .all(|b| *b == b'\t' || (32..127).contains(b))
        .then(|| std::str::from_utf8(header).ok())
        .flatten()
        .ok_or_else(|| Error::Unauthorized("Authorization header is not valid text".into()))?;
    value
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Unauthorized("Authorization header must be `Bearer <token>`".into()))
}

pub(super) fn state(req: &HttpRequest) -> Result<web::Data<AppState>, Failure> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| Failure(Error::Internal("application state missing".into())))
}

/// Whoever `find` says holds the request's bearer token, looked up off the async
/// threads; a 401 saying `refusal` when nobody does.
fn by_bearer<T, F>(
    req: &HttpRequest,
    find: F,
    refusal: &'static str,
) -> impl Future<Output = Result<T, Failure>> + 'static
where
    T: Send + 'static,
    F: FnOnce(&mut DbConn, &str) -> Result<Option<T>, Error> + Send + 'static,
{
    let found = bearer(req).and_then(|t| Ok((t, state(req)?)));
    async move {
        let (token, state) = found?;
        state
            .db
            .run(move |c| find(c, &token))
            .await?
            .ok_or_else(|| Failure(Error::Unauthorized(refusal.into())))
    }
}

/// How an owner proved who they are.
enum Credential {
    Token(String),
    Session(String),
}

/// The owner a request is authenticated as: by an API token (remembered for a few
/// seconds once found valid, `lastmile_domain::token_cache`), or on GET by the
/// dashboard's session cookie (read from the database each time).
pub struct AuthOwner(pub Owner);

impl FromRequest for AuthOwner {
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Failure>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // A signed-in dashboard session may *read* (GET) what its owner could read with
        // a token, so the dashboard's download links hit this same API. Writes need a
        // token: a cookie rides along on cross-site requests, a bearer header does not.
        let session = (req.method() == actix_web::http::Method::GET
            && req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .is_none())
        .then(|| {
            req.cookie(crate::web::SESSION_COOKIE)
                .map(|c| c.value().to_owned())
        })
        .flatten();
        let found = match session {
            Some(s) => state(req).map(|st| (Credential::Session(s), st)),
            None => bearer(req).and_then(|t| Ok((Credential::Token(t), state(req)?))),
        };
        Box::pin(async move {
            let (credential, state) = found?;
            if let Credential::Token(t) = &credential {
                if let Some(owner) = state.owner_tokens.owner(t, clock::now_us()) {
                    return Ok(AuthOwner(owner));
                }
            }
            let tokens = state.owner_tokens.clone();
            state
                .db
                .run(move |c| match credential {
                    Credential::Token(t) => {
                        let owner = lastmile_domain::api_tokens::authenticate(c, &t)?;
                        if let Some(owner) = &owner {
                            tokens.remember(&t, owner, clock::now_us());
                        }
                        Ok(owner)
                    }
                    Credential::Session(s) => match lastmile_domain::logins::session(c, &s)? {
                        Some(session) => match session.login.owner_id {
                            Some(id) => accounts::owner_by_id(c, &id),
                            None => Ok(None),
                        },
                        None => Ok(None),
                    },
                })
                .await?
                .map(AuthOwner)
                .ok_or_else(|| {
                    Failure(Error::Unauthorized(
                        "unknown or revoked owner token, or signed out".into(),
                    ))
                })
        })
    }
}

/// The agent a request is authenticated as: from the agents this replica holds in
/// memory (no query), else read once by its token and held from then on.
pub struct AuthAgent(pub Arc<Agent>);

impl FromRequest for AuthAgent {
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Failure>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let found = bearer(req).and_then(|t| Ok((t, state(req)?)));
        Box::pin(async move {
            let (token, state) = found?;
            Ok(AuthAgent(agent_by_token(&state, token).await?))
        })
    }
}

/// The agent holding `token`: from memory (`Presence`), else from the database (and
/// then held); a 401 when no agent holds it or it was revoked.
pub(crate) async fn agent_by_token(state: &AppState, token: String) -> Result<Arc<Agent>, Error> {
    if let Some(agent) = state.presence.agent_by_token(&token) {
        return Ok(agent);
    }
    let agent = state
        .db
        .run(move |c| agents::agent_by_token(c, &token))
        .await?
        .ok_or_else(|| Error::Unauthorized("unknown or revoked agent token".into()))?;
    Ok(state.presence.hold(agent))
}

/// An operator, by the configured admin token (`LASTMILE_ADMIN_TOKEN`). Without a
/// configured token nobody is an operator. Tokens are compared by their SHA-256, so
/// the comparison takes the same time wherever the two differ.
pub struct AuthAdmin;

impl FromRequest for AuthAdmin {
    type Error = Failure;
    type Future = std::future::Ready<Result<Self, Failure>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready((|| {
            let state = state(req)?;
            let Some(expected) = state
                .config
                .admin_token
                .as_deref()
                .filter(|t| !t.is_empty())
            else {
                return Err(Failure(Error::Unauthorized(
                    "the admin API is off: start the controller with LASTMILE_ADMIN_TOKEN".into(),
                )));
            };
            let given = bearer(req)?;
            if accounts::hash_secret(&given) == accounts::hash_secret(expected) {
                Ok(AuthAdmin)
            } else {
                Err(Failure(Error::Unauthorized("not the admin token".into())))
            }
        })())
    }
}

/// An owner or a volunteer: whoever holds money. Owners send their API token;
/// volunteers send their enrolment key or one of their agents' tokens.
pub struct AuthHolder(pub HolderKind, pub String);

impl FromRequest for AuthHolder {
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Failure>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Box::pin(by_bearer(
            req,
            |c, token| {
                if let Some(owner) = lastmile_domain::api_tokens::authenticate(c, token)? {
                    return Ok(Some(AuthHolder(HolderKind::Owner, owner.id)));
                }
                if let Some(v) = accounts::volunteer_by_enrol_key(c, token)? {
                    return Ok(Some(AuthHolder(HolderKind::Volunteer, v.id)));
                }
                Ok(agents::agent_by_token(c, token)?
                    .map(|a| AuthHolder(HolderKind::Volunteer, a.volunteer_id)))
            },
            "send an owner token, a volunteer's enrolment key or an agent token",
        ))
    }
}

/// Where a request comes from: the client address (the TCP peer, or the forwarded
/// address when the peer is a trusted proxy) and its resolved location.
pub struct Origin {
    pub ip: IpAddr,
    pub location: Location,
}

impl FromRequest for Origin {
    type Error = Failure;
    type Future = std::future::Ready<Result<Self, Failure>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready((|| {
            let state = state(req)?;
            let peer = req
                .peer_addr()
                .map(|a| a.ip())
                .ok_or_else(|| Failure(Error::Internal("request without peer address".into())))?;
            // Several X-Forwarded-For headers are one list, in order.
            let forwarded: Vec<&str> = req
                .headers()
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .collect();
            Ok(origin(&state, peer, &forwarded.join(",")))
        })())
    }
}

/// Where a request from `peer` comes from, given its `X-Forwarded-For` list (empty when
/// it had none): the forwarded address when `peer` is a trusted proxy.
pub(crate) fn origin(state: &AppState, peer: IpAddr, forwarded: &str) -> Origin {
    let ip = state
        .geo
        .client_ip(peer, Some(forwarded).filter(|f| !f.is_empty()));
    Origin {
        ip,
        location: state.geo.locate(ip),
    }
}

/// A volunteer, by enrolment key or one of their agents' tokens (an owner token is
/// refused: owners have no earnings to pay out).
pub struct AuthVolunteer(pub String);

impl FromRequest for AuthVolunteer {
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Failure>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let holder = AuthHolder::from_request(req, payload);
        Box::pin(async move {
            match holder.await? {
                AuthHolder(HolderKind::Volunteer, id) => Ok(AuthVolunteer(id)),
                AuthHolder(HolderKind::Owner, _) => Err(Failure(Error::forbidden(
                    "volunteers_only",
                    "this is for volunteers: send your enrolment key or an agent token",
                ))),
            }
        })
    }
}
