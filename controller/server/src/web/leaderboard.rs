//! The public leaderboard page: the same [`lastmile_domain::leaderboard::build`] the public API
//! serves, readable without signing in.

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use lastmile_dashboard::leaderboard::{self as pages, Place};
use lastmile_dashboard::sites::problem;
use serde::Deserialize;

use super::error::HasNav;
use super::html;
use super::session::SignedIn;
use crate::state::AppState;
use lastmile_domain::leaderboard::{self as board, Period};

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    /// `week` (default) or `all_time`.
    period: Option<String>,
}

pub async fn page(
    user: Option<SignedIn>,
    state: web::Data<AppState>,
    params: web::Query<Params>,
) -> HttpResponse {
    let nav = user.as_ref().map(HasNav::nav);
    let period: Period = match params.period.as_deref().unwrap_or("week").parse() {
        Ok(p) => p,
        Err(e) => {
            return html(
                e.status_code(),
                problem(nav.as_ref(), "Unknown period", &e.to_string()),
            )
        }
    };
    let ranked = match state
        .db
        .run(move |c| board::build(c, period, chrono::Utc::now()))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return html(
                e.status_code(),
                problem(nav.as_ref(), "Something went wrong", &e.to_string()),
            )
        }
    };
    let me = user.as_ref().and_then(|u| u.0.login.volunteer_id.clone());
    let places: Vec<Place> = ranked
        .entries
        .iter()
        .map(|e| Place {
            rank: e.rank,
            volunteer: e.volunteer.clone(),
            points: e.points,
            online_hours: e.online_hours,
            measurements: e.measurements,
            you: me.as_deref() == Some(e.volunteer_id.as_str()),
        })
        .collect();
    let (value, since) = match (period, ranked.from) {
        (Period::Week, Some(from)) => (
            "week",
            format!("This week began {} UTC.", from.format("%A %b %d, %H:%M")),
        ),
        (Period::Week, None) => ("week", String::new()),
        (Period::AllTime, _) => ("all_time", "All time.".to_owned()),
    };
    html(
        StatusCode::OK,
        pages::leaderboard(nav.as_ref(), value, &since, &places),
    )
}
