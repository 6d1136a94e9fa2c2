//! Named API tokens: an owner makes as many as they need (one per script or CI job),
//! sees each once, and revokes any of them from the dashboard.
//!
//! Tokens are stored as SHA-256 hashes like every other secret ([`crate::accounts`]).
//! The token `owner create` printed lives in `owners.token_hash` and keeps working; the
//! API accepts it or any token here that is not revoked. A revoked token is answered
//! with a 401 that says it was revoked (and when), so a script's author knows to make a
//! new one rather than suspect a typo.

use diesel::prelude::*;
use uuid::Uuid;

use crate::accounts::{self, hash_secret, new_secret, Owner};
use crate::clock::now_us;
use crate::error::{Error, Result};
pub use lastmile_storage::api_tokens::ApiToken;
use lastmile_storage::schema::api_tokens;
use lastmile_storage::DbConn;

/// Live tokens an owner may hold at once; more is a leak waiting to happen.
pub const MAX_LIVE_TOKENS: i64 = 50;

/// Makes a token named `name` for the owner; returns it with the secret (shown only now).
pub fn create(conn: &mut DbConn, owner_id: &str, name: &str) -> Result<(ApiToken, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid(
            "invalid_token_name",
            "name the token (1 to 100 characters), e.g. after the script that will use it",
        ));
    }
    let live: i64 = api_tokens::table
        .filter(api_tokens::owner_id.eq(owner_id))
        .filter(api_tokens::revoked_at.is_null())
        .count()
        .get_result(conn)?;
    if live >= MAX_LIVE_TOKENS {
        return Err(Error::conflict(
            "too_many_tokens",
            format!("you have {live} live tokens; revoke one you no longer use first"),
        ));
    }
    let secret = new_secret("lmo_");
    let token = ApiToken {
        id: Uuid::new_v4().to_string(),
        owner_id: owner_id.to_owned(),
        name: name.to_owned(),
        token_hash: hash_secret(&secret),
        created_at: now_us(),
        revoked_at: None,
    };
    diesel::insert_into(api_tokens::table)
        .values(&token)
        .execute(conn)?;
    Ok((token, secret))
}

/// The owner's tokens, newest first (revoked ones too, marked).
pub fn list(conn: &mut DbConn, owner_id: &str) -> Result<Vec<ApiToken>> {
    Ok(api_tokens::table
        .filter(api_tokens::owner_id.eq(owner_id))
        .order((api_tokens::created_at.desc(), api_tokens::id))
        .select(ApiToken::as_select())
        .load(conn)?)
}

/// Revokes the owner's token `id`. Another owner's token is "not found", never touched.
/// Revoking twice keeps the first time.
pub fn revoke(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<ApiToken> {
    let token: ApiToken = api_tokens::table
        .filter(api_tokens::id.eq(id).and(api_tokens::owner_id.eq(owner_id)))
        .select(ApiToken::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound {
            what: "API token",
            code: "token_not_found",
        })?;
    if token.revoked_at.is_some() {
        return Ok(token);
    }
    let now = now_us();
    diesel::update(api_tokens::table.find(&token.id))
        .filter(api_tokens::revoked_at.is_null())
        .set(api_tokens::revoked_at.eq(now))
        .execute(conn)?;
    Ok(ApiToken {
        revoked_at: Some(now),
        ..token
    })
}

/// The owner a bearer token authenticates: the account's original token or a live
/// named one. `Ok(None)` for a token nobody holds; an `Unauthorized` error naming the
/// token for a revoked one.
pub fn authenticate(conn: &mut DbConn, token: &str) -> Result<Option<Owner>> {
    if let Some(owner) = accounts::owner_by_token(conn, token)? {
        return Ok(Some(owner));
    }
    let found: Option<ApiToken> = api_tokens::table
        .filter(api_tokens::token_hash.eq(hash_secret(token)))
        .select(ApiToken::as_select())
        .first(conn)
        .optional()?;
    match found {
        None => Ok(None),
        Some(t) => match t.revoked() {
            Some(when) => Err(Error::Unauthorized(format!(
                "the API token {:?} was revoked on {}; create a new one in the dashboard",
                t.name,
                when.format("%Y-%m-%d %H:%M UTC")
            ))),
            None => accounts::owner_by_id(conn, &t.owner_id),
        },
    }
}
