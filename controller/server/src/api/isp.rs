//! ISP endpoints: their ASNs, ownership claims, and SLA views of their networks.
//!
//! Every answer carries the token's quota in `RateLimit-Limit`, `RateLimit-Remaining`
//! and `RateLimit-Reset`; a request over quota gets 429 with `Retry-After`. Report
//! answers carry a strong `ETag` of their body, and `If-None-Match` with it gets 304, so
//! an ISP polling on a schedule transfers a report only when it changed.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header;
use actix_web::{get, post, web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use lastmile_protocol::ApiError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::error::Failure;
use crate::state::AppState;
use lastmile_domain::clock::HOUR_US;
use lastmile_domain::error::Error;
use lastmile_domain::isp::{self, ClaimView, Destination, Isp, IspQuery, SeriesPoint};
use lastmile_domain::rate_limit::Quota;
use lastmile_domain::reports::{self, ReportRow};

/// The ISP a request is authenticated as, with the quota this request used.
pub struct AuthIsp {
    pub isp: Isp,
    pub quota: Quota,
}

impl FromRequest for AuthIsp {
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Failure>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let token = super::auth::bearer(req);
        let state = super::auth::state(req);
        Box::pin(async move {
            let (token, state) = (token?, state?);
            let found = state.db.run(move |c| isp::by_token(c, &token)).await?;
            let isp = found.ok_or_else(|| {
                Failure(Error::Unauthorized("unknown or revoked ISP token".into()))
            })?;
            let quota = state.isp_quota.check(&isp.id);
            if !quota.allowed {
                return Err(Failure(Error::RateLimited {
                    quota: "this ISP token's request quota".into(),
                    retry_after_s: quota.reset_s,
                }));
            }
            Ok(AuthIsp { isp, quota })
        })
    }
}

/// A 200 JSON answer with quota headers, an ETag, and 304 when the client has it.
fn answer<T: Serialize>(
    req: &HttpRequest,
    quota: Quota,
    body: &T,
) -> Result<HttpResponse, Failure> {
    let json = serde_json::to_vec(body).map_err(|e| Failure(Error::Internal(e.to_string())))?;
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&json))[..32]);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header(("RateLimit-Limit", quota.limit.to_string()))
        .insert_header(("RateLimit-Remaining", quota.remaining.to_string()))
        .insert_header(("RateLimit-Reset", quota.reset_s.to_string()));
    Ok(if fresh {
        response.finish()
    } else {
        response.content_type("application/json").body(json)
    })
}

/// The ISP's networks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"isp": "Demo Telekom", "asns": [64501]}))]
pub struct IspAsns {
    pub isp: String,
    pub asns: Vec<u32>,
}

/// The autonomous systems this ISP token may read.
#[utoipa::path(get, path = "/api/v1/isp/asns", tag = "isp", security(("isp_token" = [])),
    responses((status = 200, body = IspAsns), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
#[get("/isp/asns")]
pub async fn list_asns(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: AuthIsp,
) -> Result<HttpResponse, Failure> {
    let id = auth.isp.id.clone();
    let asns = state.db.run(move |c| isp::asns_of(c, &id)).await?;
    answer(
        &req,
        auth.quota,
        &IspAsns {
            isp: auth.isp.name,
            asns,
        },
    )
}

/// Request body to start proving ownership of an ASN.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClaim {
    pub asn: u32,
}

/// Start proving ownership of an ASN: a code is mailed to its registered contact.
#[utoipa::path(post, path = "/api/v1/isp/asn-claims", tag = "isp", request_body = NewClaim, security(("isp_token" = [])),
    responses((status = 201, body = ClaimView), (status = 404, body = ApiError, description = "no registered contact for the ASN")))]
#[post("/isp/asn-claims")]
pub async fn start_claim(
    state: web::Data<AppState>,
    auth: AuthIsp,
    body: web::Json<NewClaim>,
) -> Result<HttpResponse, Failure> {
    let mailer = state.mailer.clone();
    let claim = state
        .db
        .run(move |c| isp::start_claim(c, mailer.as_ref(), &auth.isp, body.asn))
        .await?;
    Ok(HttpResponse::Created().json(claim))
}

/// Request body to confirm a claim.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimCode {
    pub code: String,
}

/// Confirm a claim with the mailed code; the answer lists the ISP's ASNs.
#[utoipa::path(post, path = "/api/v1/isp/asn-claims/{id}/confirm", tag = "isp", request_body = ClaimCode,
    params(("id" = Uuid, Path, description = "The claim's id, from starting it")),
    security(("isp_token" = [])),
    responses((status = 200, body = IspAsns), (status = 404, body = ApiError), (status = 409, body = ApiError),
        (status = 422, body = ApiError)))]
#[post("/isp/asn-claims/{id}/confirm")]
pub async fn confirm_claim(
    state: web::Data<AppState>,
    auth: AuthIsp,
    id: web::Path<Uuid>,
    body: web::Json<ClaimCode>,
) -> Result<HttpResponse, Failure> {
    let name = auth.isp.name.clone();
    let asns = state
        .db
        .run(move |c| isp::confirm_claim(c, &auth.isp, &id.to_string(), &body.code))
        .await?;
    Ok(HttpResponse::Ok().json(IspAsns { isp: name, asns }))
}

/// Window and scope of an ISP view.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IspParams {
    /// `1h`, `24h` (default), `7d` or `30d` before now; or give `from` and `to`.
    pub window: Option<String>,
    /// Window start (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Window end (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only this ASN (must be one of yours; 403 otherwise).
    pub asn: Option<u32>,
    /// Page number, from 1 (summary and destinations).
    pub page: Option<usize>,
    /// Rows per page, 1 to 500, default 100.
    pub per_page: Option<usize>,
    /// `hour` or `day` (series only).
    pub bucket: Option<String>,
}

impl IspParams {
    fn query(&self) -> Result<IspQuery, Error> {
        let (from, to) = reports::window(self.window.as_deref(), self.from, self.to)?;
        Ok(IspQuery {
            from,
            to,
            asn: self.asn,
        })
    }

    /// The window and scope, and the page asked for.
    fn paged(&self) -> Result<(IspQuery, usize, usize), Failure> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(100);
        if page == 0 || !(1..=500).contains(&per_page) {
            return Err(Failure(Error::invalid(
                "invalid_page",
                "page starts at 1 and per_page is between 1 and 500",
            )));
        }
        Ok((self.query()?, page, per_page))
    }
}

/// A page of rows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "window": {"from": "2026-11-24T10:00:00Z", "to": "2026-11-25T10:12:00Z"},
    "asns": [64501], "page": 1, "per_page": 100, "total_rows": 1,
    "rows": [{"group": {"asn": 64501, "connection_class": "dsl", "region": "BE"}, "samples": 120,
              "successes": 119, "failures": 1, "availability": 0.9917, "availability_ci": [0.9544, 0.9998],
              "phases": {"ttfb": {"samples": 119, "p50": 48211, "p50_ci": [47807, 48735], "p90": 51002,
                  "p90_ci": [50303, 52127], "p95": 52113, "p95_ci": [51103, 60255], "p99": 60211, "p99_ci": null,
                  "insufficient_samples": true, "note": "too few samples (119) for a 95% interval: p99 needs 299"}}}]
}))]
pub struct SummaryPage {
    pub window: Window,
    /// The ASNs the rows cover.
    pub asns: Vec<u32>,
    pub page: usize,
    pub per_page: usize,
    pub total_rows: usize,
    /// One row per ASN x connection class x region.
    pub rows: Vec<ReportRow>,
}

/// The window an answer covers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl From<&IspQuery> for Window {
    fn from(q: &IspQuery) -> Window {
        Window {
            from: q.from,
            to: q.to,
        }
    }
}

fn paginate<T>(rows: Vec<T>, page: usize, per_page: usize) -> (usize, Vec<T>) {
    let total = rows.len();
    (
        total,
        rows.into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect(),
    )
}

/// SLA summary per ASN x connection class x region, over checks that share with ISPs.
#[utoipa::path(get, path = "/api/v1/isp/summary", tag = "isp", params(IspParams), security(("isp_token" = [])),
    responses((status = 200, body = SummaryPage), (status = 304, description = "unchanged since the ETag given"),
        (status = 403, body = ApiError, description = "the ASN asked for is not yours"), (status = 429, body = ApiError)))]
#[get("/isp/summary")]
pub async fn summary(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: AuthIsp,
    params: web::Query<IspParams>,
) -> Result<HttpResponse, Failure> {
    let (query, page, per_page) = params.paged()?;
    let (isp, q) = (auth.isp.clone(), query.clone());
    let (asns, rows) = state.db.run(move |c| isp::summary(c, &isp, &q)).await?;
    let (total_rows, rows) = paginate(rows, page, per_page);
    let body = SummaryPage {
        window: Window::from(&query),
        asns,
        page,
        per_page,
        total_rows,
        rows,
    };
    answer(&req, auth.quota, &body)
}

/// Destinations ordered worst first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DestinationsPage {
    pub window: Window,
    pub page: usize,
    pub per_page: usize,
    pub total_rows: usize,
    pub rows: Vec<Destination>,
}

/// The destinations (site hosts, never URLs) that perform worst from your networks.
#[utoipa::path(get, path = "/api/v1/isp/destinations", tag = "isp", params(IspParams), security(("isp_token" = [])),
    responses((status = 200, body = DestinationsPage), (status = 403, body = ApiError), (status = 429, body = ApiError)))]
#[get("/isp/destinations")]
pub async fn destinations(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: AuthIsp,
    params: web::Query<IspParams>,
) -> Result<HttpResponse, Failure> {
    let (query, page, per_page) = params.paged()?;
    let (isp, q) = (auth.isp.clone(), query.clone());
    let rows = state
        .db
        .run(move |c| isp::worst_destinations(c, &isp, &q, usize::MAX))
        .await?;
    let (total_rows, rows) = paginate(rows, page, per_page);
    let body = DestinationsPage {
        window: Window::from(&query),
        page,
        per_page,
        total_rows,
        rows,
    };
    answer(&req, auth.quota, &body)
}

/// A time series of the ISP's networks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub window: Window,
    pub bucket: String,
    pub points: Vec<SeriesPoint>,
}

/// Hour or day buckets, each grouped by ASN and connection class.
#[utoipa::path(get, path = "/api/v1/isp/series", tag = "isp", params(IspParams), security(("isp_token" = [])),
    responses((status = 200, body = Series), (status = 403, body = ApiError), (status = 429, body = ApiError)))]
#[get("/isp/series")]
pub async fn series(
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: AuthIsp,
    params: web::Query<IspParams>,
) -> Result<HttpResponse, Failure> {
    let query = params.query()?;
    let (bucket, bucket_us) = match params.bucket.as_deref().unwrap_or("hour") {
        "hour" => ("hour", HOUR_US),
        "day" => ("day", 24 * HOUR_US),
        other => {
            return Err(Failure(Error::invalid(
                "invalid_bucket",
                format!("bucket {other:?} is not hour or day"),
            )))
        }
    };
    let (isp, q) = (auth.isp.clone(), query.clone());
    let points = state
        .db
        .run(move |c| isp::series(c, &isp, &q, bucket_us))
        .await?;
    let body = Series {
        window: Window::from(&query),
        bucket: bucket.into(),
        points,
    };
    answer(&req, auth.quota, &body)
}
