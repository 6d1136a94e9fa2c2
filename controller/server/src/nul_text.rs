//! No NUL character (U+0000) gets into the database through a request.
//!
//! PostgreSQL cannot store NUL in `TEXT` ("invalid byte sequence for encoding UTF8:
//! 0x00"), so a NUL in any string a client sends would be a 500 there (and on SQLite a
//! name that displays truncated). Rather than checking field by field, every request
//! passes one guard per input kind before any extractor runs:
//!
//! - JSON bodies (the API, [`json_bodies`]): a string anywhere in the document
//!   containing NUL is a 422 `invalid_text` naming its path (`selection.countries[0]`).
//! - Form bodies (the dashboard, [`form_bodies`]): a field containing NUL is a 422
//!   page naming the field.
//! - Query strings (both): a parameter containing NUL is a 422 naming the parameter.
//! - Paths (both): an id or name containing NUL names nothing that exists, a 404.
//!
//! One exception: in a result (`POST /api/v1/results`) the texts that are the agent's
//! own report of what a server sent ([`agent_observed`]: error messages, redirect URLs
//! and locations, the page summary's URLs and errors) pass through, and ingest strips
//! their NULs (`ingest::to_stored`): refusing them would throw away an honest
//! measurement of a strange server.
//!
//! A body is only read here when it is small enough for its extractor to accept
//! (`max_body_bytes` for JSON, [`FORM_LIMIT`] for forms); it is handed on unchanged,
//! and a larger one is handed on unread for its extractor to refuse as too large.

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage, HttpResponse};
use futures_util::StreamExt;
use lastmile_protocol::ApiError;
use serde_json::Value;

use crate::state::AppState;

/// The largest form body inspected: actix's default payload limit, which the
/// dashboard's form extractors keep.
pub const FORM_LIMIT: usize = 256 * 1024;

/// The result submission route, whose agent-observed texts are stripped, not refused.
const RESULTS_PATH: &str = "/api/v1/results";

/// What a request carries that it must not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// A field, parameter or JSON path holding NUL: 422 naming it.
    Text(String),
    /// The path holds NUL: nothing by that name exists.
    Path,
}

impl Refusal {
    fn message(&self) -> String {
        match self {
            Refusal::Text(what) => format!("{what} contains a NUL character"),
            Refusal::Path => "no such resource: the path contains a NUL character".to_owned(),
        }
    }
}

/// The API's guard (wraps `/api/v1`): JSON bodies, query strings and paths.
pub async fn json_bodies(
    mut req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refusal = match uri_refusal(&req) {
        Some(r) => Some(r),
        None if is_json(&req) => {
            let limit = req
                .app_data::<web::Data<AppState>>()
                .map_or(FORM_LIMIT, |s| s.config.max_body_bytes);
            let results = req.path() == RESULTS_PATH;
            body_refusal(&mut req, limit, |body| json_refusal(body, results)).await
        }
        None => None,
    };
    match refusal {
        None => Ok(next.call(req).await?.map_into_boxed_body()),
        Some(r) => {
            let (status, code) = match r {
                Refusal::Text(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_text"),
                Refusal::Path => (StatusCode::NOT_FOUND, "not_found"),
            };
            let answer = HttpResponse::build(status).json(ApiError {
                error: code.to_owned(),
                message: r.message(),
            });
            Ok(req.into_response(answer))
        }
    }
}

/// The dashboard's guard (wraps `/app`): form bodies, query strings and paths,
/// answered with a page.
pub async fn form_bodies(
    mut req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refusal = match uri_refusal(&req) {
        Some(r) => Some(r),
        None if is_form(&req) => body_refusal(&mut req, FORM_LIMIT, form_refusal).await,
        None => None,
    };
    match refusal {
        None => Ok(next.call(req).await?.map_into_boxed_body()),
        Some(r) => {
            let (status, title) = match r {
                Refusal::Text(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid text"),
                Refusal::Path => (StatusCode::NOT_FOUND, "Not found"),
            };
            let page = lastmile_dashboard::sites::problem(None, title, &r.message());
            let answer = HttpResponse::build(status)
                .content_type("text/html; charset=utf-8")
                .body(page.into_string());
            Ok(req.into_response(answer))
        }
    }
}

/// A NUL in the (percent-encoded) path or query string.
fn uri_refusal(req: &ServiceRequest) -> Option<Refusal> {
    // The URI parser refuses raw NUL bytes, so one can only arrive percent-encoded.
    if req.path().contains("%00") {
        return Some(Refusal::Path);
    }
    let query = req.query_string();
    if !query.contains("%00") {
        return None;
    }
    Some(Refusal::Text(match nul_pair(query.as_bytes()) {
        Some(name) => format!("query parameter {name}"),
        None => "the query string".to_owned(),
    }))
}

fn is_json(req: &ServiceRequest) -> bool {
    req.mime_type().ok().flatten().is_some_and(|m| {
        m.subtype().as_str() == "json" || m.suffix().is_some_and(|s| s.as_str() == "json")
    })
}

fn is_form(req: &ServiceRequest) -> bool {
    req.mime_type()
        .ok()
        .flatten()
        .is_some_and(|m| m.essence_str() == "application/x-www-form-urlencoded")
}

/// Reads the body (when at most `limit` bytes), judges it with `judge`, and puts it
/// back for the handler.
async fn body_refusal(
    req: &mut ServiceRequest,
    limit: usize,
    judge: impl FnOnce(&[u8]) -> Option<Refusal>,
) -> Option<Refusal> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Its extractor refuses it by its length without reading it.
        return None;
    }
    let mut stream = req.take_payload();
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    // Too large to inspect: hand on what was read followed by the rest,
                    // for the extractor to refuse.
                    let head = futures_util::stream::once(async move { Ok(body.freeze()) });
                    req.set_payload(Payload::Stream {
                        payload: Box::pin(head.chain(stream)),
                    });
                    return None;
                }
            }
            Err(e) => {
                // Hand the failure on: the extractor reports it as it always does.
                let failed = futures_util::stream::once(async move { Err(e) });
                let head = futures_util::stream::once(async move { Ok(body.freeze()) });
                req.set_payload(Payload::Stream {
                    payload: Box::pin(head.chain(failed)),
                });
                return None;
            }
        }
    }
    let body: Bytes = body.freeze();
    let refusal = judge(&body);
    req.set_payload(Payload::from(body));
    refusal
}

/// The path of the first string (or key) containing NUL in a JSON body. `results`:
/// the body is a result submission, whose [`agent_observed`] texts pass.
fn json_refusal(body: &[u8], results: bool) -> Option<Refusal> {
    // JSON has no raw NUL inside strings (control characters must be escaped), so a
    // document without the escape `\u0000` has none; most bodies stop here.
    if !body.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    // A body that is not JSON is its extractor's to refuse.
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut path = Vec::new();
    find_nul(&value, &mut path, results).map(Refusal::Text)
}

/// One step into a JSON document.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn find_nul<'a>(value: &'a Value, path: &mut Vec<Step<'a>>, results: bool) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => {
            let shape = show(path, true);
            if results && agent_observed(&shape) {
                None
            } else {
                Some(show(path, false))
            }
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            path.push(Step::Index(i));
            let found = find_nul(v, path, results);
            path.pop();
            found
        }),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            path.push(Step::Key(k));
            let found = if k.contains('\0') {
                Some(format!("a field name in {}", show(path, false)))
            } else {
                find_nul(v, path, results)
            };
            path.pop();
            found
        }),
        _ => None,
    }
}

/// `selection.countries[0]`; with `shape`, indices left out (`redirects[].url`).
fn show(path: &[Step<'_>], shape: bool) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(_) if shape => out.push_str("[]"),
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "the body".to_owned()
    } else {
        out
    }
}

/// Whether a result's text at `shape` (a path without indices) is what a server sent,
/// as the agent saw it: kept (NULs stripped at ingest) rather than refused. The
/// agent's own fields (`remote_addr`, `http_version`) are not: an agent never writes
/// NUL there.
pub fn agent_observed(shape: &str) -> bool {
    matches!(
        shape,
        "measurement.error.message"
            | "measurement.redirects[].url"
            | "measurement.redirects[].location"
    ) || shape.starts_with("measurement.page.")
}

/// The first form field (of an `application/x-www-form-urlencoded` body) holding NUL.
fn form_refusal(body: &[u8]) -> Option<Refusal> {
    if !body.windows(3).any(|w| w == b"%00") && !body.contains(&0) {
        return None;
    }
    Some(Refusal::Text(
        nul_pair(body).unwrap_or_else(|| "the form".to_owned()),
    ))
}

/// The name of the first `name=value` pair of a urlencoded text with NUL in either.
fn nul_pair(text: &[u8]) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_html_form::from_bytes(text).ok()?;
    pairs
        .into_iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| {
            if k.contains('\0') {
                "a field name".to_owned()
            } else {
                k
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str, results: bool) -> Option<String> {
        json_refusal(body.as_bytes(), results).map(|r| r.message())
    }

    #[test]
    fn a_nul_anywhere_in_a_json_body_is_named_by_its_path() {
        assert_eq!(
            refusal(r#"{"name": "a\u0000b"}"#, false).as_deref(),
            Some("name contains a NUL character")
        );
        assert_eq!(
            refusal(r#"{"selection": {"countries": ["DE", "\u0000"]}}"#, false).as_deref(),
            Some("selection.countries[1] contains a NUL character")
        );
        assert_eq!(
            refusal(r#""\u0000""#, false).as_deref(),
            Some("the body contains a NUL character")
        );
        assert!(refusal(r#"{"a\u0000": 1}"#, false).is_some());
        // An escaped backslash followed by "u0000" is six ordinary characters.
        assert_eq!(refusal(r#"{"name": "\\u0000"}"#, false), None);
        assert_eq!(refusal(r#"{"name": "plain"}"#, false), None);
    }

    #[test]
    fn a_results_observed_texts_pass_but_its_own_fields_do_not() {
        let observed = r#"{"measurement": {"error": {"kind": "http_status", "message": "x\u0000"},
            "redirects": [{"url": "http://a/\u0000", "location": "\u0000"}],
            "page": {"failed": [{"url": "\u0000", "error": {"message": "\u0000"}}]}}}"#;
        assert_eq!(refusal(observed, true), None);
        assert!(refusal(observed, false).is_some());
        let own = r#"{"measurement": {"remote_addr": "127.0.0.1\u0000"}}"#;
        assert_eq!(
            refusal(own, true).as_deref(),
            Some("measurement.remote_addr contains a NUL character")
        );
    }

    #[test]
    fn a_nul_in_a_form_or_query_names_the_field() {
        let found = |s: &str| form_refusal(s.as_bytes()).map(|r| r.message());
        assert_eq!(
            found("csrf=1&name=a%00b").as_deref(),
            Some("name contains a NUL character")
        );
        assert_eq!(found("csrf=1&name=ab"), None);
        assert_eq!(nul_pair(b"from=1&q=%00").as_deref(), Some("q"));
    }
}
