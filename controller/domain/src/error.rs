//! The domain error type.
//!
//! Layers: storage code returns `diesel::QueryResult` or [`lastmile_storage::DbError`]; domain
//! functions return [`Error`], whose variants say what went wrong in the user's terms
//! (not found, not allowed, invalid input, conflict) or that the service itself failed
//! (database unavailable, internal). The one mapping to HTTP statuses and stable codes
//! is in `api::error`; `anyhow` is used only in `main` and the demo.

use lastmile_storage::DbError;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A thing the caller named does not exist (or is not theirs to see).
    #[error("{what} not found")]
    NotFound {
        what: &'static str,
        code: &'static str,
    },
    /// No or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials are fine but this is not theirs to do.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// The input is malformed or breaks a rule.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The request itself cannot be read or trusted (a webhook whose signature does
    /// not verify): 400, where `Invalid` is 422.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// A provider we depend on (Stripe) refused, failed or is not configured.
    #[error("{message}")]
    Upstream { code: &'static str, message: String },
    /// The request clashes with the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The owner's credit does not cover what they asked for.
    #[error("{message}")]
    PaymentRequired { code: &'static str, message: String },
    /// The client used up a quota (named in `quota`); it may retry after this many seconds.
    #[error("{quota} is used up; retry in {retry_after_s} s")]
    RateLimited { quota: String, retry_after_s: u64 },
    /// The database could not be reached or ran out of connections.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The stable machine code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound { code, .. } => code,
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden { code, .. }
            | Error::Invalid { code, .. }
            | Error::BadRequest { code, .. }
            | Error::Upstream { code, .. }
            | Error::Conflict { code, .. }
            | Error::PaymentRequired { code, .. } => code,
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable(_) => "service_unavailable",
            Error::Internal(_) => "internal_error",
        }
    }

    /// Bad input with a stable code and a message saying what is wrong.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    /// A state conflict with a stable code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    /// Not allowed, with a stable code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Error {
        Error::Forbidden {
            code,
            message: message.into(),
        }
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Error {
        match e {
            DbError::Pool(_) | DbError::Connect(_) => Error::Unavailable(e.to_string()),
            DbError::Query(q) => Error::from(q),
            DbError::NotFound { what, code } => Error::NotFound { what, code },
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Error {
        use diesel::result::{DatabaseErrorKind, Error as D};
        match e {
            D::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => Error::conflict(
                "already_exists",
                format!("already exists: {}", info.message()),
            ),
            D::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Error::Unavailable(info.message().to_owned())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<lastmile_billing::LedgerError> for Error {
    fn from(e: lastmile_billing::LedgerError) -> Error {
        use lastmile_billing::LedgerError as L;
        match e {
            L::Db(d) => Error::from(d),
            L::BelowFloor { .. } => Error::PaymentRequired {
                code: "insufficient_balance",
                message: e.to_string(),
            },
            L::Corrupt(_) => Error::Internal(e.to_string()),
            other => Error::invalid("invalid_transaction", other.to_string()),
        }
    }
}

/// The result of a domain function.
pub type Result<T, E = Error> = std::result::Result<T, E>;
