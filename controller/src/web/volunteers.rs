//! A volunteer's agents and their enrolment key.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use lastmile_dashboard::sites::problem;
use lastmile_dashboard::volunteers::{self as pages, AgentItem, AgentStatus, Install};
use serde::Deserialize;

use super::html;
use super::session::SignedIn;
use crate::accounts;
use crate::agents::{self, AgentActivity};
use crate::clock::now_us;
use crate::server::AppState;

fn not_a_volunteer(user: &SignedIn) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        problem(
            Some(&user.nav()),
            "Not allowed",
            "Agents belong to volunteers; this is a site owner account.",
        ),
    )
}

fn item(a: &AgentActivity, online_since: i64, now: i64) -> AgentItem {
    let agent = &a.agent;
    let online = agent.last_heartbeat_at.is_some_and(|t| t >= online_since);
    let status = match (&agent.paused_reason, online) {
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

fn controller_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

async fn render(
    req: &HttpRequest,
    user: &SignedIn,
    state: &AppState,
    new_key: Option<String>,
) -> HttpResponse {
    let Some(volunteer) = user.0.login.volunteer_id.clone() else {
        return not_a_volunteer(user);
    };
    let money = super::money_lines(
        state,
        crate::billing::HolderKind::Volunteer,
        volunteer.clone(),
    )
    .await;
    let now = now_us();
    let online_since = now - state.policy.online_window_us;
    match state
        .db
        .run(move |c| agents::of_volunteer(c, &volunteer))
        .await
    {
        Ok(found) => {
            let items: Vec<AgentItem> = found.iter().map(|a| item(a, online_since, now)).collect();
            let install = Install {
                controller_url: controller_url(req),
                new_key,
            };
            html(
                StatusCode::OK,
                pages::agents(&user.nav(), &items, &install, &money),
            )
        }
        Err(e) => html(
            e.status_code(),
            problem(Some(&user.nav()), "Something went wrong", &e.to_string()),
        ),
    }
}

pub async fn list(req: HttpRequest, user: SignedIn, state: web::Data<AppState>) -> HttpResponse {
    render(&req, &user, &state, None).await
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// Makes a new enrolment key and shows it once, on the page itself (a redirect would
/// have to carry the secret in a URL).
pub async fn new_enrol_key(
    req: HttpRequest,
    user: SignedIn,
    state: web::Data<AppState>,
    form: web::Form<CsrfOnly>,
) -> HttpResponse {
    let Some(volunteer) = user.0.login.volunteer_id.clone() else {
        return not_a_volunteer(&user);
    };
    if !user.csrf_ok(&form.csrf) {
        return super::sites::forbidden_form(&user);
    }
    match state
        .db
        .run(move |c| accounts::rotate_enrol_key(c, &volunteer))
        .await
    {
        Ok(key) => {
            let mut res = render(&req, &user, &state, Some(key)).await;
            // The key must not linger in caches or history.
            res.headers_mut().insert(
                actix_web::http::header::CACHE_CONTROL,
                actix_web::http::header::HeaderValue::from_static("no-store"),
            );
            res
        }
        Err(e) => html(
            e.status_code(),
            problem(Some(&user.nav()), "Something went wrong", &e.to_string()),
        ),
    }
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
