//! A volunteer's agents and their enrolment key.

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use lastmile_dashboard::volunteers::{
    self as pages, AgentItem, AgentStatus, Earnings, Install, PayoutItem, PayoutSetup, Standing,
};
use serde::Deserialize;

use super::error::{HasNav, OrPage, PageError};
use super::session::{CsrfForm, CsrfOnly, SignedInVolunteer};
use super::{html, see_other};
use crate::state::AppState;
use lastmile_domain::accounts;
use lastmile_domain::agents::{self, AgentActivity};
use lastmile_domain::billing::{self, HolderKind};
use lastmile_domain::clock::now_us;
use lastmile_domain::leaderboard::{self, Period};
use lastmile_domain::payouts::{self, status};

fn item(a: &AgentActivity, online_since: i64, now: i64) -> AgentItem {
    let agent = &a.agent;
    let online = agent.last_heartbeat_at.is_some_and(|t| t >= online_since);
    let status = match (&agent.paused_reason, online) {
        _ if agent.revoked_at.is_some() => AgentStatus::Revoked,
        (_, false) => AgentStatus::Offline,
        (Some(why), true) => AgentStatus::Paused(why.clone()),
        (None, true) => AgentStatus::Online,
    };
    let place = [agent.city.as_deref(), agent.country.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
    let network = match (agent.asn, &agent.as_org) {
        (Some(asn), Some(org)) => format!("AS{asn} {org}"),
        (Some(asn), None) => format!("AS{asn}"),
        _ => String::new(),
    };
    let location = [place, network]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" · ");
    AgentItem {
        id: agent.id.clone(),
        name: agent.name.clone(),
        status,
        declared_class: agent.declared_class.clone(),
        measured_class: agent.measured_class.clone(),
        class_mismatch: agent.class_mismatch,
        location: if location.is_empty() {
            "unknown".into()
        } else {
            location
        },
        last_result: a
            .last_result_at
            .map_or_else(|| "never".into(), |t| ago(now - t)),
        results: a.results,
    }
}

/// "12 s ago", "3 min ago", "5 h ago", "2 d ago".
fn ago(us: i64) -> String {
    let s = (us / 1_000_000).max(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

pub(super) fn controller_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// Said on the page after an action: (notice, error).
type Said = (Option<String>, Option<String>);

async fn render(
    req: &HttpRequest,
    user: &SignedInVolunteer,
    state: &AppState,
    new_key: Option<String>,
    (notice, error): Said,
) -> Result<HttpResponse, PageError> {
    let volunteer = user.volunteer_id.clone();
    let mut earnings = earnings(state, volunteer.clone()).await;
    earnings.notice = notice;
    earnings.error = error;

    let now = now_us();
    let online_since = now - state.policy.online_window_us;
    let found = state
        .db
        .run(move |c| agents::of_volunteer(c, &volunteer))
        .await
        .or_page(user)?;
    let items: Vec<AgentItem> = found.iter().map(|a| item(a, online_since, now)).collect();
    let install = Install {
        controller_url: controller_url(req),
        new_key,
    };
    Ok(html(
        StatusCode::OK,
        pages::agents(&user.nav(), &items, &install, &earnings),
    ))
}

/// Rank and points (the leaderboard the public page and API show), balances (the
/// ledger's, as `/api/v1/me/balance` serves them), the Connect account and payouts
/// (`payouts::list`, as `/api/v1/volunteer/payouts` serves them). A part that cannot
/// be read is left out rather than failing the page.
async fn earnings(state: &AppState, volunteer: String) -> Earnings {
    let found = state
        .db
        .run(move |c| {
            let now = chrono::Utc::now();
            let week = leaderboard::build(c, Period::Week, now)?;
            let all = leaderboard::build(c, Period::AllTime, now)?;
            let standing = |b: &leaderboard::Leaderboard| {
                leaderboard::standing(b, &volunteer).map(|e| Standing {
                    rank: e.rank,
                    points: e.points,
                    of: b.entries.len(),
                })
            };
            let balances = billing::balances(c, HolderKind::Volunteer, &volunteer)?;
            let payouts = payouts::list(c, &volunteer)?;
            let account = payouts::account_of(c, &volunteer)?;
            Ok::<_, lastmile_domain::Error>((
                standing(&week),
                standing(&all),
                balances,
                payouts,
                account,
            ))
        })
        .await;
    let threshold = payouts::threshold(&state.config.stripe);
    let (week, all_time, balances, payouts, account) = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "volunteer earnings unavailable");
            return Earnings::default();
        }
    };
    Earnings {
        week,
        all_time,
        setup: match (&state.stripe, account) {
            (None, _) => PayoutSetup::Unavailable,
            (Some(_), None) => PayoutSetup::NotStarted,
            (Some(_), Some(a)) if a.payouts_enabled => PayoutSetup::Enabled,
            (Some(_), Some(_)) => PayoutSetup::Pending,
        },
        threshold: super::money(threshold.minor, threshold.currency.as_str()),
        notice: None,
        error: None,
        balances: balances
            .balances
            .iter()
            .filter(|b| {
                b.kind != "payouts_in_transit" || b.balance_minor != 0 || b.currency == "usd"
            })
            .map(|b| {
                let label = match b.kind.as_str() {
                    "volunteer_earnings" => "Earned, not yet paid out",
                    "payouts_in_transit" => "Payouts on their way",
                    other => other,
                };
                (label.to_owned(), super::money(b.balance_minor, &b.currency))
            })
            .collect(),
        payouts: payouts.iter().map(payout_item).collect(),
    }
}

fn payout_item(p: &payouts::PayoutView) -> PayoutItem {
    let (state, note) = match p.status.as_str() {
        status::COMPLETED => ("paid", None),
        status::IN_TRANSIT => ("in transit", p.failure_reason.clone()),
        status::FAILED => (
            "failed",
            Some(format!(
                "{}. The amount is back in your earnings.",
                p.failure_reason
                    .as_deref()
                    .unwrap_or("Stripe refused it")
                    .trim_end_matches('.')
            )),
        ),
        status::REVERSED => (
            "reversed",
            Some("The amount is back in your earnings.".to_owned()),
        ),
        other => (other, None),
    };
    PayoutItem {
        date: p.created_at.get(..10).unwrap_or_default().to_owned(),
        amount: super::money(p.amount_minor, &p.currency),
        state: state.to_owned(),
        done: p.status == status::COMPLETED,
        note,
    }
}

/// Where Stripe's onboarding sent the volunteer back to the agents page.
#[derive(Debug, Default, Deserialize)]
pub struct OnboardingBack {
    #[serde(default)]
    onboarding: String,
}

pub async fn list(
    req: HttpRequest,
    user: SignedInVolunteer,
    state: web::Data<AppState>,
    back: web::Query<OnboardingBack>,
) -> Result<HttpResponse, PageError> {
    let notice = match back.onboarding.as_str() {
        "done" => Some(
            "Back from Stripe. Payouts start once Stripe has enabled your account; \
             this page says so when it has."
                .to_owned(),
        ),
        "refresh" => {
            Some("That Stripe link has expired; press the button below to continue.".to_owned())
        }
        _ => None,
    };
    render(&req, &user, &state, None, (notice, None)).await
}

/// "Set up payouts": creates the Connect account the first time (through `payouts`,
/// as `POST /api/v1/volunteer/stripe/onboarding` does) and sends the browser to
/// Stripe's onboarding; once payouts are enabled, back to the page.
pub async fn set_up_payouts(
    req: HttpRequest,
    user: SignedInVolunteer,
    state: web::Data<AppState>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let base = lastmile_domain::payments::return_base(&state.config.stripe, &controller_url(&req));
    let onboarded = payouts::onboard(
        &state.db,
        state.stripe.as_deref(),
        &user.volunteer_id,
        &base,
    )
    .await;
    match onboarded {
        Ok(view) => Ok(super::see_other(
            view.url.as_deref().unwrap_or("/app/agents"),
        )),
        Err(e) => {
            let why = format!("Could not set up payouts: {e}");
            let mut res = render(&req, &user, &state, None, (None, Some(why))).await?;
            *res.status_mut() = e.status_code();
            Ok(res)
        }
    }
}

/// Makes a new enrolment key and shows it once, on the page itself (a redirect would
/// have to carry the secret in a URL).
pub async fn new_enrol_key(
    req: HttpRequest,
    user: SignedInVolunteer,
    state: web::Data<AppState>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let volunteer = user.volunteer_id.clone();
    let key = state
        .db
        .run(move |c| accounts::rotate_enrol_key(c, &volunteer))
        .await
        .or_page(&user)?;
    let res = render(&req, &user, &state, Some(key), (None, None)).await?;
    // It holds the new enrolment key.
    Ok(super::no_store(res))
}

/// "Revoke": the agent's token stops working (as `POST
/// /api/v1/volunteer/agents/{id}/revoke`); back to the agents page.
pub async fn revoke(
    user: SignedInVolunteer,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    crate::agent_work::revoke(&state, user.volunteer_id.clone(), id.into_inner())
        .await
        .or_page(&user)?;
    Ok(see_other("/app/agents"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(ago(5_000_000), "5 s ago");
        assert_eq!(ago(180 * 1_000_000), "3 min ago");
        assert_eq!(ago(5 * 3600 * 1_000_000), "5 h ago");
        assert_eq!(ago(2 * 86_400 * 1_000_000), "2 d ago");
    }
}
