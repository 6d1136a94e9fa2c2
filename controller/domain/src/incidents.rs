//! Incidents: alert rules judged, and what comes of it.
//!
//! An alert pass ([`evaluate`]) judges every rule over its window (see
//! [`crate::alerts`] for what each kind means). A rule that fires with no open incident
//! opens one; one that keeps firing with something else broken (another segment,
//! another objective) updates it; one that has stopped firing resolves it, with a
//! message that says what is fine again. A rule without enough data to judge changes
//! nothing. Each opening, update and resolution queues one delivery per channel of the
//! rule (`alert_deliveries`, the outbox) in the same transaction, so an incident
//! change is never lost and never announced twice. At most one incident per rule is
//! open (a unique index); on PostgreSQL each rule is judged under its row's lock, taken
//! with `SKIP LOCKED`, so replicas judge different rules side by side.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::alerts::{ChannelKind, Rule, RuleKind};
use crate::clock::{to_datetime, Micros};
use crate::error::{Error, Result};
use crate::objectives::ObjectiveOutcome;
use crate::reports::{Dimension, ReportQuery};
use lastmile_storage::checks::Check;
use lastmile_storage::schema::{alert_channels, alert_deliveries, alert_rules, incidents, runs};
use lastmile_storage::{write_tx, DbConn};

/// A stored incident.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = incidents)]
pub struct Incident {
    pub id: String,
    pub check_id: String,
    pub rule_id: String,
    pub opened_at: i64,
    pub updated_at: i64,
    pub resolved_at: Option<i64>,
    pub summary: String,
    pub resolution: Option<String>,
    pub fingerprint: String,
    pub details: String,
}

/// Open or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Resolved,
}

/// An incident as the API, the dashboard and webhooks show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncidentView {
    pub id: Uuid,
    pub check_id: Uuid,
    pub rule_id: Uuid,
    pub rule: RuleKind,
    pub state: IncidentState,
    pub opened_at: DateTime<Utc>,
    /// When what is broken last changed (the opening, or the last update).
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// What is broken, in words, as of `updated_at`'s judgement or later.
    pub summary: String,
    /// What is fine again, in words (resolved incidents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// The figures behind the summary.
    #[schema(value_type = Object)]
    pub details: Value,
    /// The paths traced by agents that saw the incident open (see
    /// [`crate::path_traces`]); absent in webhook bodies, sent before any trace ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_traces: Vec<crate::path_traces::PathTraceView>,
}

impl Incident {
    pub fn view(&self, rule: RuleKind) -> IncidentView {
        let uuid = |s: &str| Uuid::parse_str(s).unwrap_or_default();
        IncidentView {
            id: uuid(&self.id),
            check_id: uuid(&self.check_id),
            rule_id: uuid(&self.rule_id),
            rule,
            state: if self.resolved_at.is_some() {
                IncidentState::Resolved
            } else {
                IncidentState::Open
            },
            opened_at: to_datetime(self.opened_at),
            updated_at: to_datetime(self.updated_at),
            resolved_at: self.resolved_at.map(to_datetime),
            summary: self.summary.clone(),
            resolution: self.resolution.clone(),
            details: serde_json::from_str(&self.details).unwrap_or(Value::Null),
            path_traces: Vec::new(),
        }
    }
}

/// What judging a rule found.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Broken: what, in words; what identifies it (an update is sent when it changes);
    /// the figures.
    Firing {
        summary: String,
        fingerprint: String,
        details: Value,
    },
    /// Fine, and why, in words.
    Clear(String),
    /// Not enough data to say.
    Unknown,
}

/// "15 min", "1 h", "90 s".
pub fn window_words(seconds: i64) -> String {
    if seconds % 3600 == 0 {
        format!("{} h", seconds / 3600)
    } else if seconds % 60 == 0 {
        format!("{} min", seconds / 60)
    } else {
        format!("{seconds} s")
    }
}

/// A percentage as people read it: at most one decimal, none when whole.
fn percent(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0} %")
    } else {
        format!("{rounded:.1} %")
    }
}

#[derive(QueryableByName, Debug, Clone)]
struct Segment {
    #[diesel(sql_type = Text)]
    country: String,
    #[diesel(sql_type = BigInt)]
    asn: i64,
    #[diesel(sql_type = Text)]
    connection_class: String,
    #[diesel(sql_type = BigInt)]
    total: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
}

/// Counted results (neither late nor flagged) of `check_id` received since `from`, per
/// (country, ASN, class).
fn segments_since(conn: &mut DbConn, check_id: &str, from: Micros) -> Result<Vec<Segment>> {
    Ok(diesel::sql_query(
        "SELECT country, asn, connection_class, COUNT(*) AS total, \
                SUM(CASE WHEN error_kind IS NULL THEN 0 ELSE 1 END) AS failed \
         FROM results WHERE check_id = $1 AND received_at >= $2 AND NOT late AND NOT flagged \
         GROUP BY country, asn, connection_class",
    )
    .bind::<Text, _>(check_id)
    .bind::<BigInt, _>(from)
    .load(conn)?)
}

/// Judges `rule` of `check` as of `now`.
pub fn judge(conn: &mut DbConn, check: &Check, rule: &Rule, now: Micros) -> Result<Judgement> {
    let from = now - rule.window_us();
    let window = window_words(rule.window_s);
    let min = rule.min_samples.max(1);
    let threshold = rule.threshold_percent.unwrap_or(50.0);
    match rule.kind() {
        None => Ok(Judgement::Unknown),
        Some(RuleKind::AvailabilityBelow) => {
            let segments = segments_since(conn, &check.id, from)?;
            let total: i64 = segments.iter().map(|s| s.total).sum();
            let failed: i64 = segments.iter().map(|s| s.failed).sum();
            if total < min {
                return Ok(Judgement::Unknown);
            }
            let availability = (total - failed) as f64 / total as f64 * 100.0;
            let details = json!({
                "window_s": rule.window_s, "measurements": total, "failed": failed,
                "availability_percent": availability, "threshold_percent": threshold,
            });
            if availability < threshold {
                Ok(Judgement::Firing {
                    summary: format!(
                        "Availability {} over the last {window} ({failed} of {total} measurements failed), below {}",
                        percent(availability),
                        percent(threshold)
                    ),
                    fingerprint: "availability".into(),
                    details,
                })
            } else {
                Ok(Judgement::Clear(format!(
                    "Availability {} over the last {window} ({total} measurements), at or above {}",
                    percent(availability),
                    percent(threshold)
                )))
            }
        }
        Some(RuleKind::SegmentFailing) => {
            let segments = segments_since(conn, &check.id, from)?;
            Ok(judge_segments(
                &segments,
                min,
                threshold,
                &window,
                rule.window_s,
            ))
        }
        Some(RuleKind::ObjectiveBreached) => judge_objectives(conn, check, rule, now),
        Some(RuleKind::NoEligibleAgents) => {
            let latest: Option<(i64, i32)> = runs::table
                .filter(runs::check_id.eq(&check.id))
                .filter(runs::created_at.ge(from))
                .order(runs::created_at.desc())
                .select((runs::created_at, runs::eligible_agents))
                .first(conn)
                .optional()?;
            Ok(match latest {
                None => Judgement::Unknown,
                Some((at, 0)) => Judgement::Firing {
                    summary: format!(
                        "The run at {} found no eligible agent for the check's selection",
                        to_datetime(at).format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                    fingerprint: "no_eligible_agents".into(),
                    details: json!({ "run_created_at": to_datetime(at), "eligible_agents": 0 }),
                },
                Some((at, n)) => Judgement::Clear(format!(
                    "The run at {} had {n} eligible agent{}",
                    to_datetime(at).format("%Y-%m-%d %H:%M:%S UTC"),
                    if n == 1 { "" } else { "s" }
                )),
            })
        }
    }
}

/// `segment_failing`: every country, network and class whose availability is below
/// `threshold` while the check's other ones, together, are at or above it.
fn judge_segments(
    segments: &[Segment],
    min: i64,
    threshold: f64,
    window: &str,
    window_s: i64,
) -> Judgement {
    let total: i64 = segments.iter().map(|s| s.total).sum();
    let failed: i64 = segments.iter().map(|s| s.failed).sum();
    type Key = fn(&Segment) -> String;
    let dimensions: [(&str, Key); 3] = [
        ("connection_class", |s| s.connection_class.clone()),
        ("country", |s| s.country.clone()),
        ("asn", |s| format!("AS{}", s.asn)),
    ];
    let mut failing = Vec::new();
    let mut judged_any = false;
    for (dimension, key) in dimensions {
        let mut per: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for s in segments {
            let e = per.entry(key(s)).or_default();
            e.0 += s.total;
            e.1 += s.failed;
        }
        if per.len() < 2 {
            continue;
        }
        for (value, (n, bad)) in per {
            let (rest_n, rest_bad) = (total - n, failed - bad);
            if n < min || rest_n < min {
                continue;
            }
            judged_any = true;
            let here = (n - bad) as f64 / n as f64 * 100.0;
            let rest = (rest_n - rest_bad) as f64 / rest_n as f64 * 100.0;
            if here < threshold && rest >= threshold {
                failing.push(json!({
                    "dimension": dimension, "segment": value,
                    "measurements": n, "availability_percent": here,
                    "others_measurements": rest_n, "others_availability_percent": rest,
                }));
            }
        }
    }
    if failing.is_empty() {
        return if judged_any {
            Judgement::Clear(format!(
                "No country, network or connection class below {} over the last {window} while the others are above it",
                percent(threshold)
            ))
        } else {
            Judgement::Unknown
        };
    }
    let words: Vec<String> = failing
        .iter()
        .map(|f| {
            format!(
                "{} ({} of {} succeeded; the others {} of {})",
                f["segment"].as_str().unwrap_or_default(),
                percent(f["availability_percent"].as_f64().unwrap_or_default()),
                f["measurements"],
                percent(
                    f["others_availability_percent"]
                        .as_f64()
                        .unwrap_or_default()
                ),
                f["others_measurements"],
            )
        })
        .collect();
    let fingerprint = failing
        .iter()
        .map(|f| {
            format!(
                "{}={}",
                f["dimension"].as_str().unwrap_or_default(),
                f["segment"].as_str().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    Judgement::Firing {
        summary: format!(
            "Failing in {} over the last {window}, below {} while the rest is not",
            words.join("; "),
            percent(threshold)
        ),
        fingerprint,
        details: json!({ "window_s": window_s, "threshold_percent": threshold, "failing": failing }),
    }
}

/// What an outcome's `actual` counts: `ms` (a phase), `percent` (availability, or a
/// share figure such as loss) or `kbps` (a rate figure).
fn actual_unit(o: &ObjectiveOutcome) -> &'static str {
    if o.objective.availability_min.is_some() || o.objective.is_share() {
        "percent"
    } else if o.objective.is_rate() {
        "kbps"
    } else {
        "ms"
    }
}

/// `ttfb p95 <= 300 ms on dsl (actual 412.0 ms, interval 398.1–430.2 ms)`: a breached
/// objective as the incident says it, in its own unit (ms, %, or Mbit/s for a rate).
fn breach_words(o: &ObjectiveOutcome, class: &str) -> String {
    let (unit, scale) = match actual_unit(o) {
        "percent" => (" %", 1.0),
        "kbps" => (" Mbit/s", 1e-3),
        _ => (" ms", 1.0),
    };
    let ci = o
        .actual_ci
        .map(|[lo, hi]| format!(", interval {:.1}–{:.1}{unit}", lo * scale, hi * scale))
        .unwrap_or_default();
    format!(
        "{} on {class} (actual {:.1}{unit}{ci})",
        o.objective.to_line(),
        o.actual.unwrap_or_default() * scale
    )
}

/// `objective_breached`: the report over the window, by connection class, and every
/// objective it finds breached with the whole interval on the wrong side.
fn judge_objectives(
    conn: &mut DbConn,
    check: &Check,
    rule: &Rule,
    now: Micros,
) -> Result<Judgement> {
    let window = window_words(rule.window_s);
    let report = crate::reports::build(
        conn,
        check,
        &ReportQuery {
            from: to_datetime(now - rule.window_us()),
            to: to_datetime(now),
            group_by: vec![Dimension::ConnectionClass],
            confidence: Default::default(),
            histograms: false,
            bucket: None,
            compare: false,
        },
    )?;
    let mut breached = Vec::new();
    let mut breached_words = Vec::new();
    let mut judged_any = false;
    for row in &report.rows {
        if (row.samples as i64) < rule.min_samples {
            continue;
        }
        let class = row
            .group
            .connection_class
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        for o in &row.objectives {
            if o.conclusive == Some(true) {
                judged_any = true;
            }
            if o.met == Some(false) && o.conclusive == Some(true) {
                breached_words.push(breach_words(o, &class));
                breached.push(json!({
                    "objective": o.objective.to_line(), "connection_class": class,
                    "actual": o.actual, "actual_ci": o.actual_ci, "unit": actual_unit(o),
                    "samples": row.samples,
                }));
            }
        }
    }
    if breached.is_empty() {
        return Ok(if judged_any {
            Judgement::Clear(format!(
                "No objective breached conclusively over the last {window}"
            ))
        } else {
            Judgement::Unknown
        });
    }
    let words: Vec<&str> = breached_words.iter().map(String::as_str).collect();
    let fingerprint = breached
        .iter()
        .map(|b| {
            format!(
                "{}|{}",
                b["objective"].as_str().unwrap_or_default(),
                b["connection_class"].as_str().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok(Judgement::Firing {
        summary: format!("Breached over the last {window}: {}", words.join("; ")),
        fingerprint,
        details: json!({ "window_s": rule.window_s, "breached": breached }),
    })
}

/// What one alert pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evaluated {
    pub opened: u32,
    pub updated: u32,
    pub resolved: u32,
}

/// One alert pass over every rule (and every deleted rule with an open incident).
pub fn evaluate(conn: &mut DbConn, now: Micros) -> Result<Evaluated> {
    let ids: Vec<String> = alert_rules::table
        .filter(
            alert_rules::deleted_at.is_null().or(alert_rules::id.eq_any(
                incidents::table
                    .filter(incidents::resolved_at.is_null())
                    .select(incidents::rule_id),
            )),
        )
        .order(alert_rules::id)
        .select(alert_rules::id)
        .load(conn)?;
    let mut done = Evaluated::default();
    for id in ids {
        match evaluate_rule(conn, &id, now) {
            Ok(Some(Change::Opened)) => done.opened += 1,
            Ok(Some(Change::Updated)) => done.updated += 1,
            Ok(Some(Change::Resolved)) => done.resolved += 1,
            Ok(None) => {}
            // One rule's trouble (a check's report failing) does not stop the others.
            Err(e) => tracing::warn!(rule = %id, error = %e, "alert rule not judged"),
        }
    }
    Ok(done)
}

enum Change {
    Opened,
    Updated,
    Resolved,
}

fn evaluate_rule(conn: &mut DbConn, rule_id: &str, now: Micros) -> Result<Option<Change>> {
    write_tx(conn, |c| {
        let rule: Option<Rule> = match c {
            DbConn::Pg(pg) => alert_rules::table
                .find(rule_id)
                .select(Rule::as_select())
                .for_update()
                .skip_locked()
                .first(pg)
                .optional()?,
            DbConn::Sqlite(lite) => alert_rules::table
                .find(rule_id)
                .select(Rule::as_select())
                .first(lite)
                .optional()?,
        };
        let Some(rule) = rule else {
            return Ok(None);
        };
        let Some(kind) = rule.kind() else {
            return Ok(None);
        };
        let open: Option<Incident> = incidents::table
            .filter(incidents::rule_id.eq(&rule.id))
            .filter(incidents::resolved_at.is_null())
            .select(Incident::as_select())
            .first(c)
            .optional()?;
        let mut check = None;
        let judgement = if lastmile_storage::checks::is_deleted(c, &rule.check_id)? {
            Judgement::Clear("The check was deleted".into())
        } else if rule.deleted_at.is_some() {
            Judgement::Clear("The alert rule was deleted".into())
        } else {
            let judged = check.insert(crate::checks::get_any(c, &rule.check_id)?);
            judge(c, judged, &rule, now)?
        };
        match (judgement, open) {
            (
                Judgement::Firing {
                    summary,
                    fingerprint,
                    details,
                },
                None,
            ) => {
                let incident = Incident {
                    id: Uuid::new_v4().to_string(),
                    check_id: rule.check_id.clone(),
                    rule_id: rule.id.clone(),
                    opened_at: now,
                    updated_at: now,
                    resolved_at: None,
                    summary,
                    resolution: None,
                    fingerprint,
                    details: details.to_string(),
                };
                diesel::insert_into(incidents::table)
                    .values((
                        incidents::id.eq(&incident.id),
                        incidents::check_id.eq(&incident.check_id),
                        incidents::rule_id.eq(&incident.rule_id),
                        incidents::opened_at.eq(now),
                        incidents::updated_at.eq(now),
                        incidents::summary.eq(&incident.summary),
                        incidents::fingerprint.eq(&incident.fingerprint),
                        incidents::details.eq(&incident.details),
                    ))
                    .execute(c)?;
                queue(c, &rule, kind, &incident, Event::Opened, now)?;
                if let Some(check) = &check {
                    // Where the time is lost: the agents that saw it trace the path.
                    crate::path_traces::request_for_incident(
                        c,
                        &incident.id,
                        check,
                        now - rule.window_us(),
                        now,
                    )?;
                }
                Ok(Some(Change::Opened))
            }
            (
                Judgement::Firing {
                    summary,
                    fingerprint,
                    details,
                },
                Some(open),
            ) => {
                let changed = fingerprint != open.fingerprint;
                let updated_at = if changed { now } else { open.updated_at };
                diesel::update(incidents::table.find(&open.id))
                    .set((
                        incidents::summary.eq(&summary),
                        incidents::fingerprint.eq(&fingerprint),
                        incidents::details.eq(details.to_string()),
                        incidents::updated_at.eq(updated_at),
                    ))
                    .execute(c)?;
                if !changed {
                    return Ok(None);
                }
                let incident = Incident {
                    summary,
                    fingerprint,
                    details: details.to_string(),
                    updated_at,
                    ..open
                };
                queue(c, &rule, kind, &incident, Event::Updated, now)?;
                Ok(Some(Change::Updated))
            }
            (Judgement::Clear(message), Some(open)) => {
                diesel::update(incidents::table.find(&open.id))
                    .set((
                        incidents::resolved_at.eq(now),
                        incidents::resolution.eq(&message),
                    ))
                    .execute(c)?;
                let incident = Incident {
                    resolved_at: Some(now),
                    resolution: Some(message),
                    ..open
                };
                queue(c, &rule, kind, &incident, Event::Resolved, now)?;
                Ok(Some(Change::Resolved))
            }
            (Judgement::Clear(_) | Judgement::Unknown, None) | (Judgement::Unknown, Some(_)) => {
                Ok(None)
            }
        }
    })
}

/// What happened to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Opened,
    Updated,
    Resolved,
}

impl Event {
    /// The webhook's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Opened => "incident.opened",
            Event::Updated => "incident.updated",
            Event::Resolved => "incident.resolved",
        }
    }
}

/// Queues one delivery of `event` per channel of `rule` (deleted channels left out),
/// its body fixed now: a retry sends the same bytes.
fn queue(
    conn: &mut DbConn,
    rule: &Rule,
    kind: RuleKind,
    incident: &Incident,
    event: Event,
    now: Micros,
) -> Result<()> {
    let check_name: String = lastmile_storage::schema::checks::table
        .find(&incident.check_id)
        .select(lastmile_storage::schema::checks::name)
        .first(conn)?;
    let channels: Vec<(String, String)> = alert_channels::table
        .inner_join(lastmile_storage::schema::alert_rule_channels::table)
        .filter(lastmile_storage::schema::alert_rule_channels::rule_id.eq(&rule.id))
        .filter(alert_channels::deleted_at.is_null())
        .select((alert_channels::id, alert_channels::kind))
        .load(conn)?;
    let view = incident.view(kind);
    for (channel_id, channel_kind) in channels {
        let id = Uuid::new_v4();
        let body = match ChannelKind::parse(&channel_kind) {
            Some(ChannelKind::Slack) => json!({ "text": headline(&check_name, &view, event) }),
            Some(ChannelKind::Email) => json!({
                "subject": format!("[Lastmile] {}", headline(&check_name, &view, event)),
                "text": email_text(&check_name, &view, event),
            }),
            _ => json!({
                "id": id, "type": event.as_str(), "created_at": to_datetime(now),
                "check": { "id": view.check_id, "name": check_name },
                "incident": view,
            }),
        };
        diesel::insert_into(alert_deliveries::table)
            .values((
                alert_deliveries::id.eq(id.to_string()),
                alert_deliveries::incident_id.eq(&incident.id),
                alert_deliveries::channel_id.eq(&channel_id),
                alert_deliveries::event.eq(event.as_str()),
                alert_deliveries::body.eq(body.to_string()),
                alert_deliveries::created_at.eq(now),
                alert_deliveries::attempts.eq(0),
                alert_deliveries::next_attempt_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// One line: what happened to which check, and the summary.
pub fn headline(check_name: &str, incident: &IncidentView, event: Event) -> String {
    match event {
        Event::Opened => format!("Incident opened on {check_name}: {}", incident.summary),
        Event::Updated => format!("Incident updated on {check_name}: {}", incident.summary),
        Event::Resolved => format!(
            "Resolved on {check_name}: {}",
            incident.resolution.as_deref().unwrap_or("fine again")
        ),
    }
}

fn email_text(check_name: &str, incident: &IncidentView, event: Event) -> String {
    let mut text = format!("{}\n\n", headline(check_name, incident, event));
    text.push_str(&format!("Check: {check_name} ({})\n", incident.check_id));
    text.push_str(&format!("Rule: {}\n", incident.rule.as_str()));
    text.push_str(&format!("Opened: {}\n", incident.opened_at.to_rfc3339()));
    if let Some(at) = incident.resolved_at {
        text.push_str(&format!("Resolved: {}\n", at.to_rfc3339()));
    }
    text.push_str(&format!("What broke: {}\n", incident.summary));
    text.push_str(&format!("Incident: {}\n", incident.id));
    text
}

/// The incidents of one of the owner's checks, newest first (at most 100); only open
/// ones with `open_only`.
pub fn list(
    conn: &mut DbConn,
    owner_id: &str,
    check_id: &str,
    open_only: bool,
) -> Result<Vec<IncidentView>> {
    crate::checks::get(conn, owner_id, check_id)?;
    let mut q = incidents::table
        .inner_join(alert_rules::table.on(alert_rules::id.eq(incidents::rule_id)))
        .filter(incidents::check_id.eq(check_id))
        .into_boxed();
    if open_only {
        q = q.filter(incidents::resolved_at.is_null());
    }
    let rows: Vec<(Incident, String)> = q
        .order((incidents::opened_at.desc(), incidents::id))
        .limit(100)
        .select((Incident::as_select(), alert_rules::kind))
        .load(conn)?;
    let ids: Vec<String> = rows.iter().map(|(i, _)| i.id.clone()).collect();
    let mut traces = crate::path_traces::of_incidents(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|(i, kind)| {
            let mut view = i.view(RuleKind::parse(&kind).unwrap_or(RuleKind::AvailabilityBelow));
            view.path_traces = traces.remove(&i.id).unwrap_or_default();
            view
        })
        .collect())
}

/// The owner's check's incident `id`.
pub fn get(conn: &mut DbConn, owner_id: &str, check_id: &str, id: &str) -> Result<IncidentView> {
    list(conn, owner_id, check_id, false)?
        .into_iter()
        .find(|i| i.id.to_string() == id)
        .ok_or(Error::NotFound {
            what: "incident",
            code: "incident_not_found",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objectives::Objective;

    fn breach(objective: &str, actual: f64, ci: [f64; 2]) -> ObjectiveOutcome {
        ObjectiveOutcome {
            objective: Objective::parse_line(objective).unwrap(),
            met: Some(false),
            actual: Some(actual),
            actual_ci: Some(ci),
            conclusive: Some(true),
            margin: None,
            bad_samples: 0,
            allowed_bad_samples: 0.0,
            error_budget_remaining: None,
        }
    }

    #[test]
    fn a_breach_is_said_in_its_objectives_unit() {
        assert_eq!(
            breach_words(&breach("ttfb p95 <= 300 ms", 412.0, [398.1, 430.2]), "dsl"),
            "ttfb p95 <= 300 ms on dsl (actual 412.0 ms, interval 398.1–430.2 ms)"
        );
        assert_eq!(
            breach_words(
                &breach("availability >= 99.5 %", 97.26, [95.0, 98.5]),
                "cable"
            ),
            "availability >= 99.5 % on cable (actual 97.3 %, interval 95.0–98.5 %)"
        );
        assert_eq!(
            breach_words(
                &breach("goodput p10 >= 20 Mbit/s", 15_904.0, [15_800.0, 16_010.0]),
                "dsl"
            ),
            "goodput p10 >= 20 Mbit/s on dsl (actual 15.9 Mbit/s, interval 15.8–16.0 Mbit/s)"
        );
        assert_eq!(
            breach_words(&breach("loss p95 <= 1 %", 8.04, [5.5, 12.0]), "mobile"),
            "loss p95 <= 1 % on mobile (actual 8.0 %, interval 5.5–12.0 %)"
        );
    }

    fn seg(class: &str, asn: i64, total: i64, failed: i64) -> Segment {
        Segment {
            country: "DE".into(),
            asn,
            connection_class: class.into(),
            total,
            failed,
        }
    }

    #[test]
    fn a_segment_fails_only_while_the_others_succeed() {
        // dsl in AS1 fails, cable in AS2 succeeds: both the class and the network fire.
        let split = [seg("dsl", 1, 6, 6), seg("cable", 2, 6, 0)];
        let Judgement::Firing {
            fingerprint,
            summary,
            ..
        } = judge_segments(&split, 3, 50.0, "15 min", 900)
        else {
            panic!("should fire");
        };
        assert_eq!(fingerprint, "connection_class=dsl,asn=AS1");
        assert!(
            summary.starts_with("Failing in dsl (0 % of 6 succeeded; the others 100 % of 6)"),
            "{summary}"
        );
        // Everything failing is the site, not a segment.
        let all = [seg("dsl", 1, 6, 6), seg("cable", 2, 6, 6)];
        assert!(matches!(
            judge_segments(&all, 3, 50.0, "15 min", 900),
            Judgement::Clear(_)
        ));
        // Too few results on one side: no verdict.
        let few = [seg("dsl", 1, 2, 2), seg("cable", 2, 6, 0)];
        assert_eq!(
            judge_segments(&few, 3, 50.0, "15 min", 900),
            Judgement::Unknown
        );
        // One segment only: nothing to compare.
        assert_eq!(
            judge_segments(&[seg("dsl", 1, 9, 9)], 3, 50.0, "15 min", 900),
            Judgement::Unknown
        );
    }

    #[test]
    fn windows_and_percentages_read_as_people_write_them() {
        assert_eq!(window_words(900), "15 min");
        assert_eq!(window_words(7200), "2 h");
        assert_eq!(window_words(90), "90 s");
        assert_eq!(percent(62.5), "62.5 %");
        assert_eq!(percent(100.0), "100 %");
        assert_eq!(percent(99.96), "100 %");
    }
}
