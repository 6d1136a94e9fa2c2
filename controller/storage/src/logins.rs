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
    pub fn role(&self) -> Role {
        if self.owner_id.is_some() {
            Role::Owner
        } else {
            Role::Volunteer
        }
    }
}
