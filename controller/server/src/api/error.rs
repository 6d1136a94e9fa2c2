//! The one place where errors become HTTP answers.
//!
//! Every error answer is `{"error": "<stable_code>", "message": "<what is wrong>"}`.
//! Domain errors map by kind (not found 404, unauthorized 401, forbidden 403, invalid
//! 400/422, credit too low 402, conflict 409, database unavailable 503); actix's own
//! extractor failures (malformed JSON, oversized body, bad query string, unknown route)
//! are mapped here too so that no client ever sees a bare text error.

use actix_web::body::BoxBody;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use lastmile_protocol::ApiError;

use lastmile_domain::error::Error;

use crate::http_status::HttpStatus;

/// A domain error on its way to an HTTP answer. The orphan rule keeps actix's
/// `ResponseError` off `lastmile_domain::Error`, so handlers and extractors return this,
/// and `?` on a domain result converts.
#[derive(Debug)]
pub struct Failure(pub Error);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for Failure {
    fn status_code(&self) -> StatusCode {
        HttpStatus::status_code(&self.0)
    }

    fn error_response(&self) -> HttpResponse<BoxBody> {
        let status = HttpStatus::status_code(&self.0);
        let mut response = HttpResponse::build(status);
        if let Some(header) = self.header() {
            response.insert_header(header);
        }
        response.json(self.body())
    }
}

impl Failure {
    /// The header the answer carries besides its body, if any: how to authenticate, or
    /// when to come back.
    pub fn header(&self) -> Option<(&'static str, String)> {
        match &self.0 {
            Error::Unauthorized(_) => Some(("www-authenticate", "Bearer".to_owned())),
            Error::RateLimited { retry_after_s, .. } => {
                Some(("retry-after", retry_after_s.to_string()))
            }
            _ => None,
        }
    }

    /// The JSON body of the answer: the error's code and what is wrong, in words.
    pub fn body(&self) -> ApiError {
        let message = match &self.0 {
            // Never leak SQL or internals to a client; the log has the detail.
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "something went wrong on our side; it has been logged".to_owned()
            }
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                "the service is temporarily unavailable; retry shortly".to_owned()
            }
            other => other.to_string(),
        };
        ApiError {
            error: self.0.code().to_owned(),
            message,
        }
    }
}

/// Malformed or oversized JSON bodies.
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let (status, code, message) = match &err {
        JsonPayloadError::OverflowKnownLength { length, limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body of {length} bytes is over the limit of {limit} bytes"),
        ),
        JsonPayloadError::Overflow { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is over the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json".to_owned(),
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the JSON does not have the expected shape: {e}"),
        ),
        JsonPayloadError::Deserialize(e) => (
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        ),
        other => (StatusCode::BAD_REQUEST, "invalid_body", other.to_string()),
    };
    plain(status, code, message)
}

/// Bad query strings.
pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    plain(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("invalid query string: {err}"),
    )
}

/// Path segments that do not parse (e.g. a malformed id): nothing by that name exists.
pub fn path_error(err: PathError, req: &HttpRequest) -> actix_web::Error {
    let text = err.to_string();
    let message = if text.contains("UUID parsing failed") {
        format!(
            "no such resource: {} holds something that is not an id; ids are UUIDs such as \
             123e4567-e89b-12d3-a456-426614174000",
            req.path()
        )
    } else {
        format!(
            "no such resource: {}",
            text.trim_start_matches("Path deserialize error: ")
        )
    };
    plain(StatusCode::NOT_FOUND, "not_found", message)
}

/// Routes that do not exist.
pub async fn no_route(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(ApiError {
        error: "not_found".into(),
        message: format!("no route for {} {}", req.method(), req.path()),
    })
}

fn plain(status: StatusCode, code: &str, message: String) -> actix_web::Error {
    let response = HttpResponse::build(status).json(ApiError {
        error: code.to_owned(),
        message: message.clone(),
    });
    actix_web::error::InternalError::from_response(message, response).into()
}
