//! Dashboard sign-in: logins (email + argon2 password hash, for one owner or one
//! volunteer account) and sessions.
//!
//! A session is a random secret in an HttpOnly cookie; only its SHA-256 is stored, next
//! to the session's CSRF token, which every dashboard form must send back. Sessions
//! expire after [`SESSION_LIFETIME_US`]; signing out deletes the row.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use diesel::prelude::*;

use crate::accounts::{self, hash_secret, new_secret};
use crate::clock::{now_us, Micros};
use crate::error::{Error, Result};
pub use lastmile_storage::logins::{Login, Role};
use lastmile_storage::schema::{logins, sessions};
use lastmile_storage::{write_tx, DbConn};

/// How long a session lasts: 14 days.
pub const SESSION_LIFETIME_US: Micros = 14 * 24 * 3600 * 1_000_000;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// The role a sign-up form asked for.
pub fn parse_role(s: &str) -> Result<Role> {
    match s {
        "owner" => Ok(Role::Owner),
        "volunteer" => Ok(Role::Volunteer),
        other => Err(Error::invalid(
            "invalid_role",
            format!("role must be owner or volunteer, not {other:?}"),
        )),
    }
}

/// A live session: who, and the token its forms must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub login: Login,
    /// The account's display name.
    pub name: String,
    pub csrf_token: String,
}

/// Lower-cases and checks an email address (shape only; nothing is sent to it).
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if !valid {
        return Err(Error::invalid(
            "invalid_email",
            format!("{:?} is not an email address", raw.trim()),
        ));
    }
    Ok(email)
}

fn hash_password(password: &str) -> Result<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > 1024 {
        return Err(Error::invalid(
            "invalid_password",
            format!("the password must have at least {MIN_PASSWORD_CHARS} characters (and at most 1024 bytes)"),
        ));
    }
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("argon2: {e}")))
}

/// Creates an owner or volunteer account with its login, in one transaction.
pub fn sign_up(
    conn: &mut DbConn,
    role: Role,
    name: &str,
    email: &str,
    password: &str,
) -> Result<Login> {
    let email = normalize_email(email)?;
    let password_hash = hash_password(password)?;
    write_tx(conn, |c| {
        let taken: i64 = logins::table
            .filter(logins::email.eq(&email))
            .count()
            .get_result(c)?;
        if taken > 0 {
            return Err(Error::conflict(
                "email_taken",
                "an account with this email already exists; sign in instead",
            ));
        }
        let (owner_id, volunteer_id) = match role {
            Role::Owner => (Some(accounts::create_owner(c, name)?.0.id), None),
            Role::Volunteer => (None, Some(accounts::create_volunteer(c, name)?.0.id)),
        };
        let login = Login::new(
            email.clone(),
            password_hash,
            owner_id,
            volunteer_id,
            now_us(),
        );
        diesel::insert_into(logins::table)
            .values(&login)
            .execute(c)?;
        Ok(login)
    })
}

/// An existing account a login can open.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    Owner(&'a str),
    Volunteer(&'a str),
}

/// Adds a login to an account made elsewhere (by an operator, or the demo).
pub fn add_login(
    conn: &mut DbConn,
    account: Account,
    email: &str,
    password: &str,
) -> Result<Login> {
    let email = normalize_email(email)?;
    let password_hash = hash_password(password)?;
    let (owner_id, volunteer_id) = match account {
        Account::Owner(id) => (Some(id.to_owned()), None),
        Account::Volunteer(id) => (None, Some(id.to_owned())),
    };
    let login = Login::new(email, password_hash, owner_id, volunteer_id, now_us());
    diesel::insert_into(logins::table)
        .values(&login)
        .execute(conn)
        .map_err(|e| match e {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ) => Error::conflict("email_taken", "an account with this email already exists"),
            other => other.into(),
        })?;
    Ok(login)
}

/// The login with this email and password. Unknown email and wrong password give the
/// same answer, after the same work, so neither can be told from the other.
pub fn authenticate(conn: &mut DbConn, email: &str, password: &str) -> Result<Login> {
    let wrong = || Error::Unauthorized("the email or the password is wrong".into());
    let email = normalize_email(email).map_err(|_| wrong())?;
    let found: Option<Login> = logins::table
        .filter(logins::email.eq(&email))
        .select(Login::as_select())
        .first(conn)
        .optional()?;
    // A fixed hash to verify against when the email is unknown (same argon2 cost).
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Rz2G6Wz9cH0mS3xCbhPq0o4Ll6fUMQ0t1Sx8Yv5Ty1E";
    let stored = found.as_ref().map_or(DUMMY, |l| l.password_hash.as_str());
    let parsed =
        PasswordHash::new(stored).map_err(|e| Error::Internal(format!("stored hash: {e}")))?;
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    match found {
        Some(login) if ok => Ok(login),
        _ => Err(wrong()),
    }
}

/// Starts a session; returns the cookie secret (shown to the browser only).
pub fn start_session(conn: &mut DbConn, login_id: &str) -> Result<String> {
    let token = new_secret("lms_");
    let now = now_us();
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(hash_secret(&token)),
            sessions::login_id.eq(login_id),
            sessions::csrf_token.eq(new_secret("")),
            sessions::created_at.eq(now),
            sessions::expires_at.eq(now + SESSION_LIFETIME_US),
        ))
        .execute(conn)?;
    Ok(token)
}

/// The live session for a cookie secret, if any.
pub fn session(conn: &mut DbConn, token: &str) -> Result<Option<Session>> {
    let found: Option<(String, Login)> = sessions::table
        .inner_join(logins::table)
        .filter(sessions::token_hash.eq(hash_secret(token)))
        .filter(sessions::expires_at.gt(now_us()))
        .select((sessions::csrf_token, Login::as_select()))
        .first(conn)
        .optional()?;
    let Some((csrf_token, login)) = found else {
        return Ok(None);
    };
    let name = match (&login.owner_id, &login.volunteer_id) {
        (Some(id), _) => accounts::owner_name(conn, id)?,
        (_, Some(id)) => accounts::volunteer_name(conn, id)?,
        _ => String::new(),
    };
    Ok(Some(Session {
        login,
        name,
        csrf_token,
    }))
}

/// Ends a session (signing out); unknown tokens are ignored.
pub fn end_session(conn: &mut DbConn, token: &str) -> Result<()> {
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(hash_secret(token))))
        .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_nonsense_is_refused() {
        assert_eq!(
            normalize_email(" Ada@Example.ORG ").unwrap(),
            "ada@example.org"
        );
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@",
            "ada@example",
            "a da@example.org",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_are_hashed_with_argon2_and_short_ones_refused() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
        let err = hash_password("short").unwrap_err().to_string();
        assert!(err.contains("at least 10 characters"), "{err}");
    }

    #[test]
    fn the_dummy_hash_parses_so_unknown_emails_cost_the_same() {
        // authenticate() verifies against it when the email is unknown.
        let dummy = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Rz2G6Wz9cH0mS3xCbhPq0o4Ll6fUMQ0t1Sx8Yv5Ty1E";
        assert!(PasswordHash::new(dummy).is_ok());
    }
}
