//! The `logins` table: an e-mail and password that opens one owner or volunteer
//! account in the dashboard.

use diesel::prelude::*;

use crate::schema::logins;

/// Which account a login opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Volunteer,
}

/// A login as stored.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = logins)]
pub struct Login {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub owner_id: Option<String>,
    pub volunteer_id: Option<String>,
    pub created_at: i64,
}

impl Login {
    /// A new login for the owner or the volunteer named (one of the two).
    pub fn new(
        email: String,
        password_hash: String,
        owner_id: Option<String>,
        volunteer_id: Option<String>,
        now: i64,
    ) -> Login {
        Login {
            id: uuid::Uuid::new_v4().to_string(),
            email,
            password_hash,
            owner_id,
            volunteer_id,
            created_at: now,
        }
    }

    pub fn role(&self) -> Role {
        if self.owner_id.is_some() {
            Role::Owner
        } else {
            Role::Volunteer
        }
    }
}
