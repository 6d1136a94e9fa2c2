//! Owners (customers who schedule checks) and volunteers (people who run agents), and
//! the secrets they authenticate with.
//!
//! **Architecture Invariant:** secrets are stored only as SHA-256 hashes; the plain
//! token is shown once, when it is created. Tokens are 256 random bits, so a fast hash
//! is enough (there is nothing to brute-force, unlike a password).

use diesel::prelude::*;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::now_us;
use crate::error::Result;
pub use lastmile_storage::owners::Owner;
use lastmile_storage::schema::{owners, volunteers};
pub use lastmile_storage::volunteers::Volunteer;
use lastmile_storage::DbConn;

/// A fresh secret with a prefix that says what it is for (`lmo_`, `lma_`, `lmv_`).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates an owner; returns it with its API token (shown only now).
pub fn create_owner(conn: &mut DbConn, name: &str) -> Result<(Owner, String)> {
    let name = validate_name(name)?;
    let token = new_secret("lmo_");
    let owner = Owner {
        id: Uuid::new_v4().to_string(),
        name,
        token_hash: hash_secret(&token),
        created_at: now_us(),
    };
    diesel::insert_into(owners::table)
        .values(&owner)
        .execute(conn)?;
    Ok((owner, token))
}

/// The owner holding `token`, if any.
pub fn owner_by_token(conn: &mut DbConn, token: &str) -> Result<Option<Owner>> {
    Ok(lastmile_storage::owners::by_token_hash(
        conn,
        &hash_secret(token),
    )?)
}

/// The owner with this id.
pub fn owner_by_id(conn: &mut DbConn, id: &str) -> Result<Option<Owner>> {
    Ok(lastmile_storage::owners::by_id(conn, id)?)
}

/// Creates a volunteer; returns it with the enrolment key for its agents.
pub fn create_volunteer(conn: &mut DbConn, name: &str) -> Result<(Volunteer, String)> {
    let name = validate_name(name)?;
    let key = new_secret("lmv_");
    let volunteer = Volunteer {
        id: Uuid::new_v4().to_string(),
        name,
        enrol_key_hash: hash_secret(&key),
        created_at: now_us(),
    };
    diesel::insert_into(volunteers::table)
        .values(&volunteer)
        .execute(conn)?;
    Ok((volunteer, key))
}

/// The volunteer whose enrolment key this is, if any.
pub fn volunteer_by_enrol_key(conn: &mut DbConn, key: &str) -> Result<Option<Volunteer>> {
    Ok(lastmile_storage::volunteers::by_enrol_key_hash(
        conn,
        &hash_secret(key),
    )?)
}

/// Trims a display name and checks it is usable.
pub fn validate_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(crate::Error::invalid(
            "invalid_name",
            "name must be 1 to 200 characters",
        ));
    }
    Ok(name.to_owned())
}

/// An owner's display name.
pub fn owner_name(conn: &mut DbConn, id: &str) -> Result<String> {
    Ok(lastmile_storage::owners::name(conn, id)?)
}

/// A volunteer's display name.
pub fn volunteer_name(conn: &mut DbConn, id: &str) -> Result<String> {
    Ok(lastmile_storage::volunteers::name(conn, id)?)
}

/// Gives a volunteer a new enrolment key (shown only now); the old one stops enrolling
/// new agents. Agents already enrolled keep their own tokens.
pub fn rotate_enrol_key(conn: &mut DbConn, volunteer_id: &str) -> Result<String> {
    let key = new_secret("lmv_");
    let changed = diesel::update(volunteers::table.find(volunteer_id))
        .set(volunteers::enrol_key_hash.eq(hash_secret(&key)))
        .execute(conn)?;
    if changed == 0 {
        return Err(crate::Error::NotFound {
            what: "volunteer",
            code: "volunteer_not_found",
        });
    }
    Ok(key)
}
