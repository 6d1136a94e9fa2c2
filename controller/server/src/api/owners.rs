//! Owner endpoints: sites, checks, runs and reports.

use actix_web::http::header::ContentType;
use actix_web::{delete, get, patch, post, put, web, HttpResponse};
use chrono::{DateTime, Utc};
use lastmile_protocol::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{AuthHolder, AuthOwner};
use crate::api::error::Failure;
use crate::metrics::Metrics;
use crate::state::AppState;
use lastmile_domain::billing::{self, Balances};
use lastmile_domain::checks::{CheckView, NewCheck};
use lastmile_domain::confidence::Confidence;
use lastmile_domain::error::Error;
use lastmile_domain::reports::{self, Report, ReportQuery, TimeBucket};
use lastmile_domain::run_results::{self, ResultView};
use lastmile_domain::scheduling::{self, RunView};
use lastmile_domain::sites::{self, NewSite, SiteView};
use lastmile_domain::{checks, clock};

/// Who the token belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub name: String,
}

/// The owner behind the token.
#[utoipa::path(get, path = "/api/v1/me", tag = "owners", security(("owner_token" = [])),
    responses((status = 200, body = Me), (status = 401, body = ApiError)))]
#[get("/me")]
pub async fn me(AuthOwner(owner): AuthOwner) -> web::Json<Me> {
    web::Json(Me {
        id: owner.id.parse().unwrap_or_default(),
        name: owner.name,
    })
}

/// Your balances in integer minor units: an owner's prepaid credit (and how much of it
/// is held for assignments in progress), a volunteer's earnings and payouts in transit.
/// Owners send their API token; volunteers their enrolment key or an agent token.
#[utoipa::path(get, path = "/api/v1/me/balance", tag = "billing",
    security(("owner_token" = []), ("agent_token" = [])),
    responses((status = 200, body = Balances), (status = 401, body = ApiError)))]
#[get("/me/balance")]
pub async fn balance(
    state: web::Data<AppState>,
    AuthHolder(kind, id): AuthHolder,
) -> Result<web::Json<Balances>, Failure> {
    let balances = state
        .db
        .run(move |c| billing::balances(c, kind, &id))
        .await?;
    Ok(web::Json(balances))
}

/// Add a site; the answer says how to prove you control it.
#[utoipa::path(post, path = "/api/v1/sites", tag = "sites", request_body = NewSite, security(("owner_token" = [])),
    responses((status = 201, body = SiteView), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
#[post("/sites")]
pub async fn create_site(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    body: web::Json<NewSite>,
) -> Result<HttpResponse, Failure> {
    let site = state
        .db
        .run(move |c| sites::create(c, &owner.id, &body))
        .await?;
    Ok(HttpResponse::Created().json(SiteView::from(&site)))
}

/// Your sites.
#[utoipa::path(get, path = "/api/v1/sites", tag = "sites", security(("owner_token" = [])),
    responses((status = 200, body = [SiteView])))]
#[get("/sites")]
pub async fn list_sites(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
) -> Result<web::Json<Vec<SiteView>>, Failure> {
    let sites = state.db.run(move |c| sites::list(c, &owner.id)).await?;
    Ok(web::Json(sites.iter().map(SiteView::from).collect()))
}

/// One of your sites.
#[utoipa::path(get, path = "/api/v1/sites/{id}", tag = "sites", params(("id" = Uuid, Path, description = "The site's id")), security(("owner_token" = [])),
    responses((status = 200, body = SiteView), (status = 404, body = ApiError)))]
#[get("/sites/{id}")]
pub async fn get_site(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<SiteView>, Failure> {
    let site = state
        .db
        .run(move |c| sites::get(c, &owner.id, &id.to_string()))
        .await?;
    Ok(web::Json(SiteView::from(&site)))
}

/// How to verify a site.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// `file` (default): fetch `verification_url`; `dns`: look up the TXT record at
    /// `verification_dns_name`.
    #[serde(default)]
    pub method: sites::Method,
}

/// Prove the site is yours: the controller fetches its verification URL (`file`, the
/// default) or looks up its `_lastmile.<host>` TXT record (`dns`), and marks it
/// verified if the token is there.
#[utoipa::path(post, path = "/api/v1/sites/{id}/verify", tag = "sites", params(("id" = Uuid, Path, description = "The site's id")), request_body(content = Option<VerifyRequest>), security(("owner_token" = [])),
    responses((status = 200, body = SiteView), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
#[post("/sites/{id}/verify")]
pub async fn verify_site(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    body: Option<web::Json<VerifyRequest>>,
) -> Result<web::Json<SiteView>, Failure> {
    let method = body.map(|b| b.method).unwrap_or_default();
    let site = match method {
        sites::Method::File => {
            sites::verify(
                &state.db,
                &state.config.site_fetch_policy(),
                owner.id,
                id.to_string(),
            )
            .await?
        }
        sites::Method::Dns => {
            sites::verify_dns(
                &state.db,
                state.config.dns_nameserver,
                owner.id,
                id.to_string(),
            )
            .await?
        }
    };
    Ok(web::Json(SiteView::from(&site)))
}

/// Create a check on one of your verified sites. A check without a schedule runs once, now.
/// A udp check's reflector must answer now with the site's token (422
/// `reflector_not_verified` otherwise; 403 `private_origin` for a private address; 429
/// past 20 reflector proofs a minute).
#[utoipa::path(post, path = "/api/v1/checks", tag = "checks", request_body = NewCheck, security(("owner_token" = [])),
    responses((status = 201, body = CheckView), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 429, body = ApiError)))]
#[post("/checks")]
pub async fn create_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    body: web::Json<NewCheck>,
) -> Result<HttpResponse, Failure> {
    let min_interval = state.config.min_check_interval_s;
    let policy = state.config.site_fetch_policy();
    let write = checks::create_proven(
        &state.db,
        &policy,
        owner.id.clone(),
        body.into_inner(),
        min_interval,
    );
    let check = state.writing_checks(&owner.id, write).await?;
    Ok(HttpResponse::Created().json(CheckView::from(&check)))
}

/// Your checks.
#[utoipa::path(get, path = "/api/v1/checks", tag = "checks", security(("owner_token" = [])),
    responses((status = 200, body = [CheckView])))]
#[get("/checks")]
pub async fn list_checks(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
) -> Result<HttpResponse, Failure> {
    let body = check_list(&state, owner.id).await?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}

/// The owner's checks as `GET /api/v1/checks` answers, from memory until one of them
/// changes (`lastmile_domain::check_lists`).
async fn check_list(state: &AppState, owner_id: String) -> Result<web::Bytes, Error> {
    if let Some(body) = state.check_lists.get(&owner_id) {
        return Ok(body);
    }
    let reading = state.check_lists.begin();
    let owner = owner_id.clone();
    let list = state.db.run(move |c| checks::list(c, &owner)).await?;
    let views: Vec<CheckView> = list.iter().map(CheckView::from).collect();
    let body =
        web::Bytes::from(serde_json::to_vec(&views).map_err(|e| Error::Internal(e.to_string()))?);
    state
        .check_lists
        .keep(&owner_id, reading, body.clone(), list.len());
    Ok(body)
}

/// One of your checks.
#[utoipa::path(get, path = "/api/v1/checks/{id}", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 200, body = CheckView), (status = 404, body = ApiError)))]
#[get("/checks/{id}")]
pub async fn get_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<CheckView>, Failure> {
    let (check, flagged, last_run) = state
        .db
        .run(move |c| {
            let check = checks::get(c, &owner.id, &id.to_string())?;
            let flagged = lastmile_domain::verification::flagged_count(c, &check.id)?;
            let last_run = lastmile_domain::scheduling::latest_run(c, &check.id)?;
            Ok::<_, Error>((check, flagged, last_run))
        })
        .await?;
    Ok(web::Json(CheckView {
        flagged_results: Some(flagged.max(0) as u64),
        last_run,
        ..CheckView::from(&check)
    }))
}

/// Change one of your checks: the whole check as when creating it, under the same rules.
#[utoipa::path(put, path = "/api/v1/checks/{id}", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), request_body = NewCheck, security(("owner_token" = [])),
    responses((status = 200, body = CheckView), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 429, body = ApiError)))]
#[put("/checks/{id}")]
pub async fn update_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    body: web::Json<NewCheck>,
) -> Result<web::Json<CheckView>, Failure> {
    let min_interval = state.config.min_check_interval_s;
    let policy = state.config.site_fetch_policy();
    let write = checks::update_proven(
        &state.db,
        &policy,
        owner.id.clone(),
        id.to_string(),
        body.into_inner(),
        min_interval,
    );
    let check = state.writing_checks(&owner.id, write).await?;
    Ok(web::Json(CheckView::from(&check)))
}

/// Change some fields of one of your checks (a JSON merge patch, RFC 7396): the fields
/// named change, `null` resets one to its default, the rest stay; the result must pass
/// the rules of creation.
#[utoipa::path(patch, path = "/api/v1/checks/{id}", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")),
    request_body(content = Object, description = "The fields to change, as in NewCheck", content_type = "application/json"),
    security(("owner_token" = [])),
    responses((status = 200, body = CheckView), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 422, body = ApiError), (status = 429, body = ApiError)))]
#[patch("/checks/{id}")]
pub async fn patch_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    body: web::Json<serde_json::Value>,
) -> Result<web::Json<CheckView>, Failure> {
    let min_interval = state.config.min_check_interval_s;
    let policy = state.config.site_fetch_policy();
    let write = checks::patch_proven(
        &state.db,
        &policy,
        owner.id.clone(),
        id.to_string(),
        body.into_inner(),
        min_interval,
    );
    let check = state.writing_checks(&owner.id, write).await?;
    Ok(web::Json(CheckView::from(&check)))
}

/// Delete one of your checks: it is never run again, its open runs stop, its alert
/// rules go; its runs, results and payments stay on record.
#[utoipa::path(delete, path = "/api/v1/checks/{id}", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ApiError)))]
#[delete("/checks/{id}")]
pub async fn delete_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let owner_id = owner.id.clone();
    let write = state
        .db
        .run(move |c| lastmile_domain::deletions::delete_check(c, &owner_id, &id.to_string()));
    state.writing_checks(&owner.id, write).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Delete one of your sites and its checks (as `DELETE /api/v1/checks/{id}` each).
#[utoipa::path(delete, path = "/api/v1/sites/{id}", tag = "sites", params(("id" = Uuid, Path, description = "The site's id")), security(("owner_token" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = ApiError)))]
#[delete("/sites/{id}")]
pub async fn delete_site(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let owner_id = owner.id.clone();
    let write = state
        .db
        .run(move |c| lastmile_domain::deletions::delete_site(c, &owner_id, &id.to_string()));
    state.writing_checks(&owner.id, write).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Pause a check's schedule (no scheduled runs until resumed; run now still works).
#[utoipa::path(post, path = "/api/v1/checks/{id}/pause", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 200, body = CheckView), (status = 404, body = ApiError)))]
#[post("/checks/{id}/pause")]
pub async fn pause_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<CheckView>, Failure> {
    set_paused(state, owner.id, id.into_inner(), true).await
}

/// Resume a paused check's schedule.
#[utoipa::path(post, path = "/api/v1/checks/{id}/resume", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 200, body = CheckView), (status = 404, body = ApiError)))]
#[post("/checks/{id}/resume")]
pub async fn resume_check(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<CheckView>, Failure> {
    set_paused(state, owner.id, id.into_inner(), false).await
}

/// What pause and resume share: they differ only in the state they set.
async fn set_paused(
    state: web::Data<AppState>,
    owner_id: String,
    check_id: Uuid,
    paused: bool,
) -> Result<web::Json<CheckView>, Failure> {
    let owner = owner_id.clone();
    let write = state
        .db
        .run(move |c| checks::set_paused(c, &owner, &check_id.to_string(), paused));
    let check = state.writing_checks(&owner_id, write).await?;
    Ok(web::Json(CheckView::from(&check)))
}

/// Run a check now, in addition to its schedule.
#[utoipa::path(post, path = "/api/v1/checks/{id}/runs", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 201, body = RunView), (status = 402, body = ApiError, description = "your credit does not cover the run"), (status = 404, body = ApiError)))]
#[post("/checks/{id}/runs")]
pub async fn run_now(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, Failure> {
    let policy = state.policy;
    let run = state
        .db
        .run(move |c| {
            let check = checks::get(c, &owner.id, &id.to_string())?;
            scheduling::create_run(c, &check, &policy, clock::now_us())
        })
        .await?;
    Metrics::inc(&state.metrics.runs_created);
    crate::agent_work::announce_runs(&state, vec![run.id.to_string()]).await;
    Ok(HttpResponse::Created().json(run))
}

/// The check's recent runs, newest first.
#[utoipa::path(get, path = "/api/v1/checks/{id}/runs", tag = "checks", params(("id" = Uuid, Path, description = "The check's id")), security(("owner_token" = [])),
    responses((status = 200, body = [RunView]), (status = 404, body = ApiError)))]
#[get("/checks/{id}/runs")]
pub async fn list_runs(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
) -> Result<web::Json<Vec<RunView>>, Failure> {
    let runs = state
        .db
        .run(move |c| scheduling::list_runs(c, &owner.id, &id.to_string(), 100))
        .await?;
    Ok(web::Json(runs))
}

/// One run and its progress.
#[utoipa::path(get, path = "/api/v1/checks/{id}/runs/{run_id}", tag = "checks", params(("id" = Uuid, Path, description = "The check's id"), ("run_id" = Uuid, Path, description = "The run's id, one of the check's")), security(("owner_token" = [])),
    responses((status = 200, body = RunView), (status = 404, body = ApiError)))]
#[get("/checks/{id}/runs/{run_id}")]
pub async fn get_run(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<web::Json<RunView>, Failure> {
    let (check_id, run_id) = path.into_inner();
    let run = state
        .db
        .run(move |c| scheduling::get_run(c, &owner.id, &check_id.to_string(), &run_id.to_string()))
        .await?;
    Ok(web::Json(run))
}

/// Each agent's result in one run, oldest start first: status or error, phase timings,
/// address, HTTP version, the redirect hops followed and, for a page check, the page
/// summary. Raw results age out; reports keep the aggregates.
#[utoipa::path(get, path = "/api/v1/checks/{id}/runs/{run_id}/results", tag = "checks", params(("id" = Uuid, Path, description = "The check's id"), ("run_id" = Uuid, Path, description = "The run's id, one of the check's")), security(("owner_token" = [])),
    responses((status = 200, body = [ResultView]), (status = 404, body = ApiError)))]
#[get("/checks/{id}/runs/{run_id}/results")]
pub async fn list_run_results(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<web::Json<Vec<ResultView>>, Failure> {
    let (check_id, run_id) = path.into_inner();
    let results = state
        .db
        .run(move |c| run_results::list(c, &owner.id, &check_id.to_string(), &run_id.to_string()))
        .await?;
    Ok(web::Json(results))
}

/// Query parameters of a report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// `1h`, `24h` (default), `7d` or `30d`: whole hours ending with the current one. Or
    /// give `from`/`to`.
    pub window: Option<String>,
    /// Window start (RFC 3339); default 24 hours before `to`.
    pub from: Option<DateTime<Utc>>,
    /// Window end (RFC 3339); default now.
    pub to: Option<DateTime<Utc>>,
    /// Comma-separated dimensions: connection_class, country, region, asn.
    pub group_by: Option<String>,
    /// `json` (default), `csv`, or `hdr` (an HdrHistogram interval log of the merged
    /// histograms, one line per row and phase).
    pub format: Option<String>,
    /// Confidence level of the intervals: 0.9, 0.95 (default) or 0.99.
    pub confidence: Option<String>,
    /// `1h` or `1d`: split rows by time bucket too.
    pub bucket: Option<String>,
    /// `previous`: compare every row with the previous window of equal length.
    pub compare: Option<String>,
    /// `true`: include each row's merged histograms (base64 HdrHistogram V2) in JSON.
    pub histograms: Option<bool>,
}

/// The SLA report of a check over a window, grouped as asked.
#[utoipa::path(get, path = "/api/v1/checks/{id}/report", tag = "reports", params(("id" = Uuid, Path, description = "The check's id"), ReportParams), security(("owner_token" = [])),
    responses((status = 200, body = Report, description = "JSON, or CSV with format=csv"), (status = 404, body = ApiError),
        (status = 422, body = ApiError)))]
#[get("/checks/{id}/report")]
pub async fn report(
    state: web::Data<AppState>,
    AuthOwner(owner): AuthOwner,
    id: web::Path<Uuid>,
    params: web::Query<ReportParams>,
) -> Result<HttpResponse, Failure> {
    let params = params.into_inner();
    let format = match params.format.as_deref() {
        None | Some("json") => "json",
        Some("csv") => "csv",
        Some("hdr") => "hdr",
        Some(other) => {
            return Err(Failure(Error::invalid(
                "invalid_format",
                format!("format {other:?} is not json, csv or hdr"),
            )));
        }
    };
    let (from, to) =
        lastmile_domain::reports::window(params.window.as_deref(), params.from, params.to)?;
    let group_by = reports::parse_group_by(
        params
            .group_by
            .as_deref()
            .unwrap_or("connection_class,country"),
    )?;
    let confidence = match params.confidence.as_deref() {
        Some(raw) => Confidence::parse(raw)?,
        None => Confidence::default(),
    };
    let compare = match params.compare.as_deref() {
        None => false,
        Some("previous") => true,
        Some(other) => {
            return Err(Failure(Error::invalid(
                "invalid_compare",
                format!("compare {other:?} is not `previous`"),
            )));
        }
    };
    let query = ReportQuery {
        from,
        to,
        group_by,
        confidence,
        histograms: params.histograms.unwrap_or(false) || format == "hdr",
        bucket: params
            .bucket
            .as_deref()
            .map(TimeBucket::parse)
            .transpose()?,
        compare,
    };
    let report = state
        .db
        .run(move |c| {
            let check = checks::get(c, &owner.id, &id.to_string())?;
            reports::build(c, &check, &query)
        })
        .await?;
    Ok(match format {
        "csv" => HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            // Saved under a name that says what it is: the check and the window's days,
            // first and last (the window's end is not in it: a window ending at
            // midnight ends on the day before).
            .insert_header((
                "content-disposition",
                format!(
                    "attachment; filename=\"lastmile-report-{}-{}-to-{}.csv\"",
                    report.check.id,
                    report.window.from.format("%Y-%m-%d"),
                    (report.window.to - chrono::Duration::microseconds(1)).format("%Y-%m-%d")
                ),
            ))
            .body(reports::to_csv(&report)),
        "hdr" => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(reports::to_interval_log(&report)?),
        _ => HttpResponse::Ok().json(report),
    })
}
