//! Alerts in the dashboard: channels (list, make, delete, delivery log) and, on a
//! check's page, its incidents and rules (add, delete). Thin over `alerts`,
//! `incidents` and `alert_delivery`, like the API.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use lastmile_dashboard::alerts::{
    self as pages, ChannelItem, CheckAlerts, DeliveryItem, IncidentItem, RuleItem, TraceHopItem,
    TraceItem,
};
use lastmile_domain::alert_delivery::{self, DeliveryState};
use lastmile_domain::alerts::{
    self, Channel, ChannelKind, NewChannel, NewRule, RuleKind, RuleView,
};
use lastmile_domain::check_terms::StoredCheck;
use lastmile_domain::error::Error;
use lastmile_domain::incidents::{self, window_words, IncidentState};
use lastmile_domain::path_traces::PathTraceView;
use lastmile_storage::DbConn;
use serde::Deserialize;
use uuid::Uuid;

use super::error::{HasNav, OrPage, PageError};
use super::session::{CsrfForm, CsrfOnly, SignedInOwner};
use super::{html, see_other};
use crate::http_status::HttpStatus;
use crate::state::AppState;

const TIME: &str = "%Y-%m-%d %H:%M UTC";

fn channel_item(c: &Channel) -> ChannelItem {
    let v = c.view();
    ChannelItem {
        id: c.id.clone(),
        name: c.name.clone(),
        kind: c.kind.clone(),
        target: c.target.clone(),
        created: v.created_at.format(TIME).to_string(),
    }
}

async fn render_channels(
    user: &SignedInOwner,
    state: &AppState,
    status: StatusCode,
    made: Option<(&str, Option<&str>)>,
    error: Option<&str>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let found = state
        .db
        .run(move |c| alerts::list_channels(c, &owner))
        .await
        .or_page(user)?;
    let items: Vec<ChannelItem> = found.iter().map(channel_item).collect();
    let made = made.map(|(name, secret)| pages::NewChannel { name, secret });
    // It may hold a webhook's fresh secret.
    Ok(super::no_store(html(
        status,
        pages::channels(&user.nav(), &items, made, error),
    )))
}

pub async fn list(
    user: SignedInOwner,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    render_channels(&user, &state, StatusCode::OK, None, None).await
}

#[derive(Deserialize)]
pub struct ChannelFields {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    target: String,
}

/// Makes a channel and shows a webhook's secret in this answer only.
pub async fn create(
    user: SignedInOwner,
    state: web::Data<AppState>,
    CsrfForm(form): CsrfForm<ChannelFields>,
) -> Result<HttpResponse, PageError> {
    let Some(kind) = ChannelKind::parse(&form.kind) else {
        let e = format!("kind must be webhook, slack or email, not {:?}", form.kind);
        return render_channels(
            &user,
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            Some(&e),
        )
        .await;
    };
    let target = form.target.trim().to_owned();
    let new = NewChannel {
        name: form.name.clone(),
        kind,
        url: (kind != ChannelKind::Email).then(|| target.clone()),
        email: (kind == ChannelKind::Email).then_some(target),
    };
    let (owner, can_email) = (user.owner_id.clone(), state.mailer.delivers());
    match state
        .db
        .run(move |c| alerts::create_channel(c, &owner, &new, can_email))
        .await
    {
        Ok(made) => {
            render_channels(
                &user,
                &state,
                StatusCode::OK,
                Some((&made.name, made.secret.as_deref())),
                None,
            )
            .await
        }
        Err(e) => render_channels(&user, &state, e.status_code(), None, Some(&e.to_string())).await,
    }
}

pub async fn delete(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    state
        .db
        .run(move |c| alerts::delete_channel(c, &owner, &id))
        .await
        .or_page(&user)?;
    Ok(see_other("/app/alerts"))
}

/// A channel's delivery log.
pub async fn deliveries(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    let (channel, log) = state
        .db
        .run(move |c| {
            let channel = alerts::get_channel(c, &owner, &id)?;
            let log = alert_delivery::log(c, &owner, &id)?;
            Ok::<_, Error>((channel, log))
        })
        .await
        .or_page(&user)?;
    let rows: Vec<DeliveryItem> = log
        .iter()
        .map(|d| DeliveryItem {
            created: d.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            event: d.event.clone(),
            state: match d.state {
                DeliveryState::Delivered => "delivered",
                DeliveryState::Pending => "pending",
                DeliveryState::Failed => "failed",
            }
            .into(),
            attempts: d.attempts,
            last: match (&d.last_error, d.last_status) {
                (Some(e), _) => e.clone(),
                (None, Some(s)) => s.to_string(),
                (None, None) if d.state == DeliveryState::Delivered => "accepted".into(),
                (None, None) => "not tried yet".into(),
            },
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        pages::deliveries(&user.nav(), &channel_item(&channel), &rows),
    ))
}

/// A rule in words: "Availability below 99 % over 15 min (at least 3 results)".
pub fn rule_words(r: &RuleView) -> String {
    let window = window_words(i64::from(r.window_s));
    let threshold = r.threshold_percent.unwrap_or(50.0);
    match r.kind {
        RuleKind::AvailabilityBelow => format!(
            "Availability below {threshold} % over {window} (at least {} results)",
            r.min_samples
        ),
        RuleKind::SegmentFailing => format!(
            "A country, network or class below {threshold} % while the others are not, over {window} (at least {} results each)",
            r.min_samples
        ),
        RuleKind::ObjectiveBreached => {
            format!("An objective breached conclusively over {window}")
        }
        RuleKind::NoEligibleAgents => format!("A run with no eligible agent (within {window})"),
    }
}

/// What a check's page shows of its alerting.
/// `check` is the owner's, already read by the page.
pub(super) fn check_alerts(
    conn: &mut DbConn,
    owner: &str,
    check: &lastmile_domain::checks::Check,
) -> Result<CheckAlerts, Error> {
    let check_id = check.id.as_str();
    let channels = alerts::list_channels(conn, owner)?;
    let name_of = |id: &Uuid| {
        channels
            .iter()
            .find(|c| c.id == id.to_string())
            .map_or_else(|| "a deleted channel".to_owned(), |c| c.name.clone())
    };
    let rules = alerts::list_rules(conn, owner, check_id)?;
    let rule_items = rules
        .iter()
        .map(|r| RuleItem {
            id: r.id.to_string(),
            words: rule_words(r),
            channels: r
                .channels
                .iter()
                .map(name_of)
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let incidents = incidents::list(conn, owner, check_id, false)?;
    let incident_items = incidents
        .iter()
        .take(20)
        .map(|i| IncidentItem {
            opened: i.opened_at.format(TIME).to_string(),
            rule: i.rule.as_str().replace('_', " "),
            state: match i.state {
                IncidentState::Open => "open",
                IncidentState::Resolved => "resolved",
            }
            .into(),
            summary: i.summary.clone(),
            resolved: i.resolved_at.map(|at| {
                (
                    at.format(TIME).to_string(),
                    i.resolution.clone().unwrap_or_default(),
                )
            }),
            traces: i.path_traces.iter().map(trace_item).collect(),
        })
        .collect();
    Ok(CheckAlerts {
        incidents: incident_items,
        rules: rule_items,
        channels: channels
            .iter()
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect(),
        has_objectives: !check.objectives().is_empty(),
    })
}

#[derive(Deserialize)]
pub struct RuleFields {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    threshold_percent: String,
    #[serde(default)]
    window_minutes: String,
    #[serde(default)]
    channels: Vec<String>,
}

fn parse_rule(form: &RuleFields) -> Result<NewRule, Error> {
    let kind = RuleKind::parse(&form.kind)
        .ok_or_else(|| Error::invalid("invalid_rule", format!("no such rule: {:?}", form.kind)))?;
    let number = |raw: &str, what: &str| -> Result<Option<f64>, Error> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        raw.parse::<f64>().map(Some).map_err(|_| {
            Error::invalid(
                "invalid_rule",
                format!("{what} must be a number, not {raw:?}"),
            )
        })
    };
    let threshold = number(&form.threshold_percent, "the threshold")?;
    let window_s = match number(&form.window_minutes, "the window")? {
        None => None,
        Some(m) if m.is_finite() && m > 0.0 => {
            Some((m * 60.0).round().min(f64::from(u32::MAX)) as u32)
        }
        Some(m) => {
            return Err(Error::invalid(
                "invalid_rule",
                format!("the window must be a positive number of minutes, not {m}"),
            ))
        }
    };
    let channels = form
        .channels
        .iter()
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| Error::invalid("invalid_rule", format!("{c:?} is not a channel")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if channels.is_empty() {
        return Err(Error::invalid(
            "invalid_rule",
            "tick at least one channel for the alerts to go to",
        ));
    }
    Ok(NewRule {
        kind,
        // A threshold typed in for a kind that takes none is ignored, not an error: the
        // form shows one field for all kinds.
        threshold_percent: threshold
            .filter(|_| matches!(kind, RuleKind::AvailabilityBelow | RuleKind::SegmentFailing)),
        window_s,
        min_samples: None,
        channels,
    })
}

pub async fn create_rule(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    CsrfForm(form): CsrfForm<RuleFields>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    let check = id.clone();
    let made = match parse_rule(&form) {
        Ok(rule) => {
            state
                .db
                .run(move |c| alerts::create_rule(c, &owner, &check, &rule))
                .await
        }
        Err(e) => Err(e),
    };
    match made {
        Ok(_) => Ok(see_other(&format!("/app/checks/{id}#alert-rules"))),
        Err(e @ Error::NotFound { .. }) => Err(e).or_page(&user),
        Err(e) => {
            super::checks::render_detail(
                &user,
                &state,
                id,
                None,
                Some(e.to_string()),
                e.status_code(),
            )
            .await
        }
    }
}

pub async fn delete_rule(
    user: SignedInOwner,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let (check, rule) = path.into_inner();
    let (owner, c_id) = (user.owner_id.clone(), check.clone());
    state
        .db
        .run(move |c| alerts::delete_rule(c, &owner, &c_id, &rule))
        .await
        .or_page(&user)?;
    Ok(see_other(&format!("/app/checks/{check}#alert-rules")))
}

/// A path trace as the check page shows it.
fn trace_item(t: &PathTraceView) -> TraceItem {
    let a = &t.agent;
    let mut about: Vec<String> = Vec::new();
    about.extend(a.connection_class.clone());
    about.extend(a.country.clone());
    about.extend(a.asn.map(|n| format!("AS{n}")));
    let mut from = a.name.clone();
    if !about.is_empty() {
        from.push_str(&format!(" ({})", about.join(", ")));
    }
    if let Some(target) = &t.target_addr {
        from.push_str(&format!(" to {target}"));
    }
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    TraceItem {
        from,
        state: match t.state.as_str() {
            "pending" => "asked".into(),
            "leased" => "running".into(),
            other => other.to_owned(),
        },
        finding: t.jumps.finding.clone(),
        hops: t
            .hops
            .iter()
            .map(|h| TraceHopItem {
                ttl: h.ttl,
                addr: h.addr.clone().unwrap_or_else(|| "no answer".into()),
                loss: format!("{:.0} %", h.loss_percent),
                rtt: match (h.rtt_min_us, h.rtt_median_us, h.rtt_max_us) {
                    (Some(min), Some(median), Some(max)) => {
                        format!("{} / {} / {} ms", ms(min), ms(median), ms(max))
                    }
                    _ => "–".into(),
                },
                jump: Some(h.ttl) == t.jumps.latency_ttl || Some(h.ttl) == t.jumps.loss_ttl,
            })
            .collect(),
        error: t.error.clone(),
    }
}
