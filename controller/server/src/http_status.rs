//! The HTTP status of each kind of domain error: one table for the JSON API
//! (`api::error`) and the dashboard's pages (`web::error`), so that a 404 is a 404 in
//! both.

use actix_web::http::StatusCode;
use lastmile_domain::error::Error;

/// The HTTP status of a domain error, for the JSON API and the dashboard alike.
pub trait HttpStatus {
    fn status_code(&self) -> StatusCode;
}

impl HttpStatus for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Upstream { code, .. } if *code == "stripe_not_configured" => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
