//! Public endpoints: no account needed.

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::error::Failure;
use crate::state::AppState;
use lastmile_domain::error::Error;
use lastmile_domain::leaderboard::{self as board, Leaderboard, Period};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaderboardParams {
    /// `week` (from Monday 00:00 UTC, the default) or `all_time`.
    pub period: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// The volunteers' leaderboard: points for time online and work done (formula in the
/// leaderboard module's documentation).
#[utoipa::path(get, path = "/api/v1/leaderboard", tag = "leaderboard", params(LeaderboardParams),
    responses((status = 200, body = Leaderboard, description = "JSON, or CSV with format=csv"),
        (status = 422, body = lastmile_protocol::ApiError)))]
#[get("/leaderboard")]
pub async fn leaderboard(
    state: web::Data<AppState>,
    params: web::Query<LeaderboardParams>,
) -> Result<HttpResponse, Failure> {
    let period: Period = params.period.as_deref().unwrap_or("week").parse()?;
    let csv = match params.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(Failure(Error::invalid(
                "invalid_format",
                format!("format {other:?} is not json or csv"),
            )))
        }
    };
    let ranked = state
        .db
        .run(move |c| board::build(c, period, chrono::Utc::now()))
        .await?;
    Ok(if csv {
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                "content-disposition",
                format!(
                    "attachment; filename=\"lastmile-leaderboard-{}.csv\"",
                    match period {
                        Period::Week => "week",
                        Period::AllTime => "all-time",
                    }
                ),
            ))
            .body(board::to_csv(&ranked))
    } else {
        HttpResponse::Ok().json(ranked)
    })
}
