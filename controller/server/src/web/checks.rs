//! A site owner's checks: list, create (with a live count of matching agents), a check's
//! page with its runs, one run's results, and "run now".

use crate::http_status::HttpStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use lastmile_dashboard::checks::{self as pages, CheckDetail, CheckForm, CheckItem, RunItem};
use lastmile_dashboard::runs::{self, HopItem, PageItem, ResultRow, RunHeader};
use lastmile_protocol::{CheckKind, ConnectionClass};
use serde::Deserialize;

use super::error::{HasNav, OrPage, PageError};
use super::session::{CsrfForm, CsrfOnly, SignedInOwner};
use super::{html, see_other};
use crate::state::AppState;
use lastmile_domain::check_terms::{Selection, Spread, StoredCheck, DEFAULT_AGENTS_PER_RUN};
use lastmile_domain::checks::{
    self, Check, NewCheck, Schedule, ThroughputLoad, UdpStream, VideoSession,
};
use lastmile_domain::clock::now_us;
use lastmile_domain::error::Error;
use lastmile_domain::run_results::{self, ResultView};
use lastmile_domain::scheduling::{self, RunView};
use lastmile_domain::sites;

fn schedule_text(c: &Check) -> String {
    match c.interval_s {
        Some(s) if s % 3600 == 0 => format!("every {} h", s / 3600),
        Some(s) if s % 60 == 0 => format!("every {} min", s / 60),
        Some(s) => format!("every {s} s"),
        None => "once".into(),
    }
}

fn selection_text(s: &Selection) -> String {
    let mut parts = Vec::new();
    if !s.countries.is_empty() {
        parts.push(s.countries.join(", "));
    }
    if !s.asns.is_empty() {
        parts.push(
            s.asns
                .iter()
                .map(|a| format!("AS{a}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if !s.connection_classes.is_empty() {
        parts.push(
            s.connection_classes
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if parts.is_empty() {
        parts.push("anywhere".into());
    }
    parts.push(format!("up to {} agents", s.agents_per_run));
    if s.spread == Spread::Equal {
        parts.push("spread equally".into());
    }
    parts.join(" · ")
}

/// Where Stripe's Checkout sent the owner back to the checks page.
#[derive(Debug, Default, Deserialize)]
pub struct CheckoutBack {
    #[serde(default)]
    checkout: String,
}

pub async fn list(
    user: SignedInOwner,
    state: web::Data<AppState>,
    back: web::Query<CheckoutBack>,
) -> Result<HttpResponse, PageError> {
    // Coming back from Stripe credits nothing: the signed webhook does that.
    let notice = match back.checkout.as_str() {
        "paid" => Some(
            "Thank you. Stripe has your payment; the credit appears here as soon as \
             Stripe confirms it (usually within a minute). Reload to see it."
                .to_owned(),
        ),
        "cancelled" => Some("The purchase was cancelled; nothing was charged.".to_owned()),
        _ => None,
    };
    let credit = pages::Credit {
        notice,
        ..pages::Credit::default()
    };
    render_list(&user, &state, credit, StatusCode::OK).await
}

/// The checks page with the owner's credit (`credit.lines` filled in here).
pub(super) async fn render_list(
    user: &SignedInOwner,
    state: &AppState,
    mut credit: pages::Credit,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    credit.lines = super::money_lines(
        state,
        lastmile_domain::billing::HolderKind::Owner,
        owner.clone(),
    )
    .await;
    let (found, health) = state
        .db
        .run(move |c| {
            let found = checks::list(c, &owner)?;
            let health = lastmile_domain::check_health::of_checks(
                c,
                &found,
                lastmile_domain::clock::now_us(),
            )?;
            Ok::<_, Error>((found, health))
        })
        .await
        .or_page(user)?;
    let items: Vec<CheckItem> = found
        .iter()
        .zip(&health)
        .map(|(c, h)| CheckItem {
            id: c.id.clone(),
            name: c.name.clone(),
            url: c.url.clone(),
            schedule: schedule_text(c),
            selection: selection_text(&c.selection()),
            paused: c.paused_at.is_some(),
            state: h.state.as_str().to_owned(),
            last_run: match &h.last_run {
                None => "never".to_owned(),
                Some(r) => {
                    let when = r.created_at.format("%Y-%m-%d %H:%M UTC");
                    if r.done > 0 {
                        let ok = i64::from(r.done) - h.last_run_failed;
                        format!("{when} · {ok} of {} ok", r.done)
                    } else {
                        format!("{when} · {}", run_state(r))
                    }
                }
            },
            availability_24h: match h.availability_24h {
                None => "no data".to_owned(),
                Some((a, n)) => format!("{:.1} % of {n}", a * 100.0),
            },
            sla_24h: h.sla_24h.as_str().to_owned(),
        })
        .collect();
    Ok(html(status, pages::list(&user.nav(), &items, &credit)))
}

/// The form's fields as posted (repeated `connection_classes` keys).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CheckFields {
    action: String,
    site_id: String,
    name: String,
    url: String,
    kind: String,
    expected_status: String,
    body_contains: String,
    max_bytes: String,
    timeout_ms: String,
    max_redirects: String,
    connections: String,
    duration_ms: String,
    play_ms: String,
    max_bitrate_kbps: String,
    udp_interval_ms: String,
    udp_duration_ms: String,
    packet_bytes: String,
    objectives: String,
    every_seconds: String,
    countries: String,
    asns: String,
    connection_classes: Vec<String>,
    agents_per_run: String,
    spread: String,
    isp_sharing: Option<String>,
}

/// A comma/space separated list, each item parsed; the error names the field.
fn list_of<T: std::str::FromStr>(raw: &str, field: &str, what: &str) -> Result<Vec<T>, Error> {
    raw.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_start_matches("AS").parse().map_err(|_| {
                Error::invalid("invalid_form", format!("{field}: {s:?} is not {what}"))
            })
        })
        .collect()
}

fn optional_number(raw: &str, field: &str) -> Result<Option<u64>, Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        Error::invalid(
            "invalid_form",
            format!("{field}: {raw:?} is not a whole number"),
        )
    })
}

/// What the form's "measure" field asks for; `http` when not given.
fn kind_of(f: &CheckFields) -> Result<CheckKind, Error> {
    match f.kind.trim() {
        "" => Ok(CheckKind::Http),
        k => k.parse().map_err(|e| {
            Error::invalid(
                "invalid_form",
                format!("measure: {e} (http, page, throughput, video or udp)"),
            )
        }),
    }
}

/// A throughput check's load from the form: the defaults for what is left empty. For
/// another kind the fields are left alone when empty and passed on when filled, so
/// that the check's rules say why they do not fit.
fn load_of(f: &CheckFields, kind: CheckKind) -> Result<Option<ThroughputLoad>, Error> {
    let connections = optional_number(&f.connections, "connections")?;
    let duration_ms = optional_number(&f.duration_ms, "load duration")?;
    if kind != CheckKind::Throughput && connections.is_none() && duration_ms.is_none() {
        return Ok(None);
    }
    let default = ThroughputLoad::default();
    Ok(Some(ThroughputLoad {
        connections: connections.map_or(default.connections, |n| n.min(u64::from(u32::MAX)) as u32),
        duration_ms: duration_ms.unwrap_or(default.duration_ms),
    }))
}

fn selection_of(f: &CheckFields) -> Result<Selection, Error> {
    let classes = f
        .connection_classes
        .iter()
        .map(|c| c.parse::<ConnectionClass>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("invalid_form", format!("connection classes: {e}")))?;
    Ok(Selection {
        countries: list_of::<String>(&f.countries, "countries", "a country code")?
            .into_iter()
            .map(|c| c.to_uppercase())
            .collect(),
        asns: list_of(&f.asns, "networks", "an AS number")?,
        connection_classes: classes,
        agents_per_run: optional_number(&f.agents_per_run, "agents per run")?
            .map_or(DEFAULT_AGENTS_PER_RUN, |n| {
                n.min(u64::from(u32::MAX)) as u32
            }),
        spread: match f.spread.trim() {
            "" | "proportional" => Spread::Proportional,
            "equal" => Spread::Equal,
            other => {
                return Err(Error::invalid(
                    "invalid_form",
                    format!("spread: {other:?} is neither proportional nor equal"),
                ))
            }
        },
    })
}

fn new_check_of(f: &CheckFields) -> Result<NewCheck, Error> {
    let site_id = f
        .site_id
        .parse()
        .map_err(|_| Error::invalid("invalid_form", "choose one of your verified sites"))?;
    Ok(NewCheck {
        site_id,
        name: Some(f.name.trim().to_owned()).filter(|n| !n.is_empty()),
        url: f.url.trim().to_owned(),
        kind: kind_of(f)?,
        throughput: load_of(f, kind_of(f)?)?,
        video: session_of(f, kind_of(f)?)?,
        udp: stream_of(f, kind_of(f)?)?,
        expected_status: list_of(&f.expected_status, "expected status codes", "a status code")?,
        max_bytes: optional_number(&f.max_bytes, "max bytes")?,
        timeout_ms: optional_number(&f.timeout_ms, "timeout")?,
        max_redirects: optional_number(&f.max_redirects, "redirects to follow")?
            .map(|n| n.min(u64::from(u32::MAX)) as u32),
        selection: selection_of(f)?,
        schedule: Schedule {
            every_seconds: optional_number(&f.every_seconds, "run every")?,
        },
        body_contains: Some(f.body_contains.clone()).filter(|b| !b.is_empty()),
        isp_sharing: f.isp_sharing.is_some(),
        objectives: f
            .objectives
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(lastmile_domain::objectives::Objective::parse_line)
            .collect::<Result<_, _>>()?,
    })
}

fn form_of(f: &CheckFields, sites: Vec<(String, String)>) -> CheckForm {
    CheckForm {
        sites,
        site_id: f.site_id.clone(),
        name: f.name.clone(),
        url: f.url.clone(),
        kind: f.kind.clone(),
        expected_status: f.expected_status.clone(),
        body_contains: f.body_contains.clone(),
        max_bytes: f.max_bytes.clone(),
        timeout_ms: f.timeout_ms.clone(),
        max_redirects: f.max_redirects.clone(),
        connections: f.connections.clone(),
        duration_ms: f.duration_ms.clone(),
        play_ms: f.play_ms.clone(),
        max_bitrate_kbps: f.max_bitrate_kbps.clone(),
        udp_interval_ms: f.udp_interval_ms.clone(),
        udp_duration_ms: f.udp_duration_ms.clone(),
        packet_bytes: f.packet_bytes.clone(),
        objectives: f.objectives.clone(),
        every_seconds: f.every_seconds.clone(),
        countries: f.countries.clone(),
        asns: f.asns.clone(),
        classes: f.connection_classes.clone(),
        agents_per_run: f.agents_per_run.clone(),
        spread: f.spread.clone(),
        isp_sharing: f.isp_sharing.is_some(),
        eligible: None,
        error: None,
        editing: None,
    }
}

/// "41.0 ms idle, 288 ms loaded" from a throughput result's figures, "1.2 s to start,
/// 0.0 ms stalled" from a video session's, "40.2 ms round trip, 1.9 ms jitter, 0.40 %
/// lost" from a udp stream's; what is there, `None` for other kinds.
fn latency_under_load(r: &ResultView) -> Option<String> {
    use lastmile_protocol::Figure;
    let side = |figure, word| {
        r.figures
            .get(&figure)
            .map(|&us| format!("{} {word}", super::reports::ms(us)))
    };
    let sides: Vec<String> = [
        side(Figure::IdleLatency, "idle"),
        side(Figure::LoadedLatency, "loaded"),
        side(Figure::StartupDelay, "to start"),
        side(Figure::StallTime, "stalled"),
        side(Figure::Rtt, "round trip"),
        side(Figure::Jitter, "jitter"),
        r.figures
            .get(&Figure::Loss)
            .map(|&ppm| format!("{} lost", super::reports::percent(ppm))),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!sides.is_empty()).then(|| sides.join(", "))
}

/// A video check's session from the form, as [`load_of`] makes a load.
fn session_of(f: &CheckFields, kind: CheckKind) -> Result<Option<VideoSession>, Error> {
    let play_ms = optional_number(&f.play_ms, "media to play")?;
    let max_bitrate_kbps = optional_number(&f.max_bitrate_kbps, "highest bitrate")?;
    if kind != CheckKind::Video && play_ms.is_none() && max_bitrate_kbps.is_none() {
        return Ok(None);
    }
    Ok(Some(VideoSession {
        play_ms: play_ms.unwrap_or(VideoSession::default().play_ms),
        max_bitrate_kbps,
    }))
}

/// A udp check's stream from the form, as [`load_of`] reads a load.
fn stream_of(f: &CheckFields, kind: CheckKind) -> Result<Option<UdpStream>, Error> {
    let interval_ms = optional_number(&f.udp_interval_ms, "between packets")?;
    let duration_ms = optional_number(&f.udp_duration_ms, "stream duration")?;
    let packet_bytes = optional_number(&f.packet_bytes, "packet size")?;
    if kind != CheckKind::Udp
        && interval_ms.is_none()
        && duration_ms.is_none()
        && packet_bytes.is_none()
    {
        return Ok(None);
    }
    let default = UdpStream::default();
    Ok(Some(UdpStream {
        interval_ms: interval_ms.unwrap_or(default.interval_ms),
        duration_ms: duration_ms.unwrap_or(default.duration_ms),
        packet_bytes: packet_bytes
            .map_or(default.packet_bytes, |n| n.min(u64::from(u32::MAX)) as u32),
    }))
}

/// The form's fields filled from a stored check (for editing).
fn fields_of(c: &Check) -> CheckFields {
    let join = |v: Vec<String>, sep: &str| v.join(sep);
    let selection = c.selection();
    let load = c.throughput();
    let session = c.video();
    let stream = c.udp();
    CheckFields {
        site_id: c.site_id.clone(),
        name: c.name.clone(),
        url: c.url.clone(),
        kind: c.kind.clone(),
        connections: load.map(|l| l.connections.to_string()).unwrap_or_default(),
        duration_ms: load.map(|l| l.duration_ms.to_string()).unwrap_or_default(),
        play_ms: session.map(|v| v.play_ms.to_string()).unwrap_or_default(),
        max_bitrate_kbps: session
            .and_then(|v| v.max_bitrate_kbps)
            .map(|k| k.to_string())
            .unwrap_or_default(),
        udp_interval_ms: stream
            .map(|s| s.interval_ms.to_string())
            .unwrap_or_default(),
        udp_duration_ms: stream
            .map(|s| s.duration_ms.to_string())
            .unwrap_or_default(),
        packet_bytes: stream
            .map(|s| s.packet_bytes.to_string())
            .unwrap_or_default(),
        expected_status: join(
            c.expected_status().iter().map(u16::to_string).collect(),
            ", ",
        ),
        body_contains: c.body_contains.clone().unwrap_or_default(),
        max_bytes: c.max_bytes.to_string(),
        timeout_ms: c.timeout_ms.to_string(),
        max_redirects: c.max_redirects.to_string(),
        objectives: join(
            c.objectives()
                .iter()
                .map(lastmile_domain::objectives::Objective::to_line)
                .collect(),
            "\n",
        ),
        every_seconds: c.interval_s.map(|s| s.to_string()).unwrap_or_default(),
        countries: join(selection.countries.clone(), ", "),
        asns: join(selection.asns.iter().map(u32::to_string).collect(), ", "),
        connection_classes: selection
            .connection_classes
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        agents_per_run: selection.agents_per_run.to_string(),
        spread: selection.spread.as_str().to_owned(),
        isp_sharing: c.isp_sharing.then(|| "true".to_owned()),
        ..CheckFields::default()
    }
}

async fn verified_sites(state: &AppState, owner: &str) -> Result<Vec<(String, String)>, Error> {
    let owner = owner.to_owned();
    let found = state.db.run(move |c| sites::list(c, &owner)).await?;
    Ok(found
        .into_iter()
        .filter(|s| s.verified_at.is_some())
        .map(|s| (s.id, s.origin))
        .collect())
}

async fn count(state: &AppState, selection: Selection, kind: CheckKind) -> Result<usize, Error> {
    let policy = state.policy;
    state
        .db
        .run(move |c| scheduling::count_eligible(c, &selection, kind, &policy, now_us()))
        .await
}

pub async fn new_form(
    user: SignedInOwner,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let sites = verified_sites(&state, &user.owner_id)
        .await
        .or_page(&user)?;
    let mut form = form_of(
        &CheckFields {
            agents_per_run: DEFAULT_AGENTS_PER_RUN.to_string(),
            url: sites
                .first()
                .map(|(_, o)| format!("{o}/"))
                .unwrap_or_default(),
            ..CheckFields::default()
        },
        sites,
    );
    form.eligible = count(&state, Selection::default(), CheckKind::Http)
        .await
        .ok();
    Ok(html(StatusCode::OK, pages::new(&user.nav(), &form)))
}

/// `GET /app/checks/eligible?countries=..&asns=..&connection_classes=..&kind=..`: the live
/// count (agents that measure `kind` only: an older agent takes no page checks).
pub async fn eligible(
    _: SignedInOwner,
    state: web::Data<AppState>,
    query: web::Query<Vec<(String, String)>>,
) -> HttpResponse {
    let mut fields = CheckFields::default();
    for (k, v) in query.into_inner() {
        match k.as_str() {
            "countries" => fields.countries = v,
            "asns" => fields.asns = v,
            "connection_classes" => fields.connection_classes.push(v),
            "kind" => fields.kind = v,
            _ => {}
        }
    }
    let result = match selection_of(&fields).and_then(|s| Ok((s, kind_of(&fields)?))) {
        Ok((selection, kind)) => count(&state, selection, kind).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => HttpResponse::Ok().json(serde_json::json!({"eligible": n})),
        Err(e) => {
            HttpResponse::build(e.status_code()).json(serde_json::json!({"error": e.to_string()}))
        }
    }
}

/// `POST /app/checks`: creates through [`checks::create`]; a refused form comes back
/// with what was typed and why.
pub async fn create(
    user: SignedInOwner,
    state: web::Data<AppState>,
    CsrfForm(fields): CsrfForm<CheckFields>,
) -> Result<HttpResponse, PageError> {
    submit(user, state, fields, None).await
}

/// The check form posted, for a new check (`editing` is `None`) or to edit the check
/// `editing`: the one path from the form to [`checks::create`] or [`checks::update`],
/// so that both follow the same rules. "Count" only counts the matching agents; a
/// refused form comes back with what was typed and why.
async fn submit(
    user: SignedInOwner,
    state: web::Data<AppState>,
    fields: CheckFields,
    editing: Option<String>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let current = match editing.clone() {
        Some(id) => {
            let o = owner.clone();
            let check = state.db.run(move |c| checks::get(c, &o, &id)).await;
            Some(check.or_page(&user)?)
        }
        None => None,
    };
    let sites = verified_sites(&state, &owner).await.or_page(&user)?;
    let again = |status: StatusCode, eligible: Option<usize>, error: Option<String>| {
        let mut form = form_of(&fields, sites.clone());
        form.editing = current.as_ref().map(|c| (c.id.clone(), c.name.clone()));
        form.eligible = eligible;
        form.error = error;
        html(status, pages::new(&user.nav(), &form))
    };
    if fields.action == "count" {
        return Ok(
            match selection_of(&fields).and_then(|s| Ok((s, kind_of(&fields)?))) {
                Ok((selection, kind)) => match count(&state, selection, kind).await {
                    Ok(n) => again(StatusCode::OK, Some(n), None),
                    Err(e) => again(e.status_code(), None, Some(e.to_string())),
                },
                Err(e) => again(e.status_code(), None, Some(e.to_string())),
            },
        );
    }
    let new = match new_check_of(&fields) {
        Ok(n) => n,
        Err(e) => return Ok(again(e.status_code(), None, Some(e.to_string()))),
    };
    let min_interval = state.config.min_check_interval_s;
    let policy = state.config.site_fetch_policy();
    let owner_id = owner.clone();
    let saved = state
        .writing_checks(&owner_id, async {
            match editing {
                None => checks::create_proven(&state.db, &policy, owner, new, min_interval).await,
                Some(id) => {
                    checks::update_proven(&state.db, &policy, owner, id, new, min_interval).await
                }
            }
        })
        .await;
    Ok(match saved {
        Ok(check) => see_other(&format!("/app/checks/{}", check.id)),
        Err(e) => again(e.status_code(), None, Some(e.to_string())),
    })
}

fn run_item(r: &RunView) -> RunItem {
    RunItem {
        id: r.id.to_string(),
        created: r.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        requested: r.requested,
        done: r.done,
        state: run_state(r),
    }
}

/// A run's progress in words, or why it measured nothing.
fn run_state(r: &RunView) -> String {
    if let Some(scheduling::RunProblem::NoEligibleAgents) = r.problem {
        return "no eligible agents: no online agent matched the selection; nothing was charged"
            .to_owned();
    }
    let progress = if r.finished {
        "finished".to_owned()
    } else {
        format!("{} waiting, {} measuring", r.pending, r.leased)
    };
    // Flagged results count as done but are in no report and were not charged.
    if r.flagged > 0 {
        format!("{progress}; {} flagged, not counted", r.flagged)
    } else {
        progress
    }
}

/// A check's page; `error` at the top, `rule_error` by the form that adds an alert rule.
pub(super) async fn render_detail(
    user: &SignedInOwner,
    state: &AppState,
    id: String,
    error: Option<String>,
    rule_error: Option<String>,
    status: StatusCode,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let (check, runs, alerts) = state
        .db
        .run(move |c| {
            let check = checks::get(c, &owner, &id)?;
            let runs = scheduling::list_runs(c, &owner, &id, 20)?;
            let alerts = super::alerts::check_alerts(c, &owner, &check)?;
            Ok::<_, Error>((check, runs, alerts))
        })
        .await
        .or_page(user)?;
    let expected = check.expected_status();
    let mut expectations = if expected.is_empty() {
        "status 2xx or 3xx".to_owned()
    } else {
        format!(
            "status {}",
            expected
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        )
    };
    if let Some(b) = &check.body_contains {
        expectations.push_str(&format!(", body contains {b:?}"));
    }
    expectations.push_str(&format!(
        ", at most {} bytes, within {} ms",
        check.max_bytes, check.timeout_ms
    ));
    let objectives: Vec<String> = check
        .objectives()
        .iter()
        .map(lastmile_domain::objectives::Objective::to_line)
        .collect();
    let detail = CheckDetail {
        id: check.id.clone(),
        name: check.name.clone(),
        url: check.url.clone(),
        kind: match (check.kind.as_str(), check.throughput()) {
            ("page", _) => "page: the HTML and its sub-resources, as a browser loads it".into(),
            ("video", _) => {
                let session = check.video().unwrap_or_default();
                format!(
                    "video: {} s of the stream's {}, played against a player's buffer",
                    session.play_ms as f64 / 1000.0,
                    match session.max_bitrate_kbps {
                        Some(k) => format!("highest rendition at or under {}", super::reports::kbps(k)),
                        None => "highest rendition".to_owned(),
                    }
                )
            }
            ("throughput", Some(load)) => format!(
                "throughput: the URL downloaded over {} connections at once for {} s, with the round trip before and during the load",
                load.connections,
                load.duration_ms as f64 / 1000.0
            ),
            ("udp", _) => {
                let stream = check.udp().unwrap_or_default();
                format!(
                    "udp: a {}-byte packet every {} ms for {} s to the reflector, which must answer with the site's token; round trip, jitter and loss",
                    stream.packet_bytes,
                    stream.interval_ms,
                    stream.duration_ms as f64 / 1000.0
                )
            }
            _ => "http: one fetch of the URL".into(),
        },
        schedule: schedule_text(&check),
        selection: selection_text(&check.selection()),
        expectations,
        objectives,
        paused: check.paused_at.map(|t| {
            format!(
                "since {}",
                lastmile_domain::clock::to_datetime(t).format("%Y-%m-%d %H:%M UTC")
            )
        }),
        price: {
            let p = lastmile_domain::billing::price_of(&check);
            format!(
                "{} per result",
                super::money(p.minor, &p.currency.to_string())
            )
        },
    };
    let items: Vec<RunItem> = runs.iter().map(run_item).collect();
    Ok(html(
        status,
        pages::detail(
            &user.nav(),
            &detail,
            &items,
            &alerts,
            error.as_deref(),
            rule_error.as_deref(),
        ),
    ))
}

pub async fn detail(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    render_detail(&user, &state, id.into_inner(), None, None, StatusCode::OK).await
}

pub async fn run_now(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let id = id.into_inner();
    let policy = state.policy;
    let (o, i) = (user.owner_id.clone(), id.clone());
    let created = state
        .db
        .run(move |c| {
            let check = checks::get(c, &o, &i)?;
            scheduling::create_run(c, &check, &policy, now_us())
        })
        .await;
    match created {
        Ok(run) => {
            crate::agent_work::announce_runs(&state, vec![run.id.to_string()]).await;
            Ok(see_other(&format!("/app/checks/{id}")))
        }
        Err(e @ Error::NotFound { .. }) => Err(PageError::Failed(Box::new(user.nav()), e)),
        Err(e) => {
            render_detail(
                &user,
                &state,
                id,
                Some(e.to_string()),
                None,
                e.status_code(),
            )
            .await
        }
    }
}

/// `GET /app/checks/{id}/edit`: the check's form, filled in.
pub async fn edit_form(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    let check = state
        .db
        .run(move |c| checks::get(c, &owner, &id))
        .await
        .or_page(&user)?;
    let sites = verified_sites(&state, &user.owner_id)
        .await
        .or_page(&user)?;
    let mut form = form_of(&fields_of(&check), sites);
    form.editing = Some((check.id.clone(), check.name.clone()));
    form.eligible = match check.check_kind() {
        Ok(kind) => count(&state, check.selection(), kind).await.ok(),
        Err(_) => None,
    };
    Ok(html(StatusCode::OK, pages::new(&user.nav(), &form)))
}

/// `POST /app/checks/{id}/edit`: saves through [`checks::update`], the rules of
/// creation; a refused form comes back with what was typed and why.
pub async fn update(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    CsrfForm(fields): CsrfForm<CheckFields>,
) -> Result<HttpResponse, PageError> {
    submit(user, state, fields, Some(id.into_inner())).await
}

async fn set_paused(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: String,
    paused: bool,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let write = state
        .db
        .run(move |c| checks::set_paused(c, &owner, &id, paused));
    let check = state
        .writing_checks(&user.owner_id, write)
        .await
        .or_page(&user)?;
    Ok(see_other(&format!("/app/checks/{}", check.id)))
}

/// `POST /app/checks/{id}/pause`.
pub async fn pause(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    set_paused(user, state, id.into_inner(), true).await
}

/// `POST /app/checks/{id}/delete`: the check goes (its history stays); back to the list.
pub async fn delete(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    let (owner, id) = (user.owner_id.clone(), id.into_inner());
    let write = state
        .db
        .run(move |c| lastmile_domain::deletions::delete_check(c, &owner, &id));
    state
        .writing_checks(&user.owner_id, write)
        .await
        .or_page(&user)?;
    Ok(see_other("/app/checks"))
}

/// `POST /app/checks/{id}/resume`.
pub async fn resume(
    user: SignedInOwner,
    state: web::Data<AppState>,
    id: web::Path<String>,
    _: CsrfForm<CsrfOnly>,
) -> Result<HttpResponse, PageError> {
    set_paused(user, state, id.into_inner(), false).await
}

/// `GET /app/checks/{id}/runs/{run_id}`: what each agent saw in one run. Access is
/// [`scheduling::get_run`]'s, as for the API's listing (another owner's or an unknown
/// run is its 404); the check is read for the page's heading.
pub async fn run_results(
    user: SignedInOwner,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let owner = user.owner_id.clone();
    let (id, run_id) = path.into_inner();
    let (check, run, results) = state
        .db
        .run(move |c| {
            let run = scheduling::get_run(c, &owner, &id, &run_id)?;
            let results = run_results::of_run(c, &run)?;
            let check = checks::get(c, &owner, &id)?;
            Ok::<_, Error>((check, run, results))
        })
        .await
        .or_page(&user)?;
    let header = RunHeader {
        check_id: check.id.clone(),
        check_name: check.name.clone(),
        url: check.url.clone(),
        started: run.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        progress: format!(
            "{} / {} measured · {}",
            run.done,
            run.requested,
            run_item(&run).state
        ),
        is_page: check.kind == "page",
        in_progress: !run.finished && run.problem.is_none(),
    };
    let rows: Vec<ResultRow> = results.iter().map(result_row).collect();
    Ok(html(
        StatusCode::OK,
        runs::results(&user.nav(), &header, &rows),
    ))
}

/// "340.2 kB" from bytes (decimal units, as browsers' network panels show them).
fn bytes_text(n: u64) -> String {
    match n {
        0..=999 => format!("{n} B"),
        1_000..=999_999 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

fn result_row(r: &ResultView) -> ResultRow {
    let mut place: Vec<String> = Vec::new();
    if let Some(country) = &r.country {
        place.push(country.clone());
    }
    if let Some(asn) = r.asn {
        place.push(format!("AS{asn}"));
    }
    ResultRow {
        class: r.connection_class.clone(),
        place: if place.is_empty() {
            "unknown location".into()
        } else {
            place.join(" · ")
        },
        status: r.status,
        error: r
            .error
            .as_ref()
            .map(|e| (e.kind.clone(), e.message.clone())),
        ttfb: super::reports::ms(r.timings_us.ttfb),
        total: super::reports::ms(r.timings_us.total),
        goodput: r
            .figures
            .get(&lastmile_protocol::Figure::Goodput)
            .map(|&kbps| super::reports::kbps(kbps)),
        latency_under_load: latency_under_load(r),
        remote_addr: r.remote_addr.clone(),
        ip_version: r.ip_version.map(|v| format!("IPv{v}")),
        http_version: r.http_version.as_ref().map(|v| format!("HTTP/{v}")),
        redirect_count: r.redirect_count,
        hops: r
            .redirects
            .iter()
            .map(|h| HopItem {
                status: h.status,
                url: h.url.clone(),
                location: h.location.clone(),
            })
            .collect(),
        page: r.page.as_ref().map(|p| PageItem {
            summary: format!("{} resources · {}", p.resources, bytes_text(p.bytes)),
            slowest: p.slowest.as_ref().map(|s| {
                format!(
                    "{} {} ({})",
                    s.kind,
                    s.url,
                    super::reports::ms(s.timings_us.total)
                )
            }),
            failed: p
                .failed
                .iter()
                .map(|f| match f.status {
                    Some(status) => format!("{} {}: {} {status}", f.kind, f.url, f.error.kind),
                    None => format!(
                        "{} {}: {} ({})",
                        f.kind, f.url, f.error.kind, f.error.message
                    ),
                })
                .collect(),
        }),
        late: r.late,
        flagged: r.flagged,
        flag_rules: r.flag_rules.clone(),
    }
}
