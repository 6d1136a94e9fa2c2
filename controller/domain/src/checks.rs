//! Checks: what to measure, how to judge it, which agents, and how often.
//!
//! A check targets a URL on one of the owner's verified sites. Its selection filters
//! (countries, ASNs, connection classes) are matched against agents when a run is
//! created (see [`crate::scheduling`]); an empty filter matches everything.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use lastmile_protocol::{CheckKind, ThroughputTask, VideoTask};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::check_terms::UdpStream;
use crate::check_terms::{Selection, StoredCheck};
use crate::clock::{now_us, to_datetime};
use crate::error::{Error, Result};
use crate::objectives::{self, Objective};
use crate::sites::{self, FetchPolicy};
use lastmile_storage::schema::checks;
use lastmile_storage::{Db, DbConn};

/// When a check runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// Run every N seconds; absent means once, right after creation.
    pub every_seconds: Option<u64>,
}

/// Request body to create a check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCheck {
    pub site_id: Uuid,
    /// Display name; defaults to the URL.
    pub name: Option<String>,
    /// Absolute URL on the site's origin.
    pub url: String,
    /// `http` (default): one fetch of the URL. `page`: the HTML and its sub-resources,
    /// loaded as a browser would; reported on the page total. `throughput`: the URL
    /// downloaded over several connections at once for a while, as a speed test does,
    /// with the round trip measured before and during the load; reported on goodput,
    /// idle and loaded latency. `video`: the URL is an HLS playlist or a DASH MPD, played
    /// against a
    /// player's buffer model; reported on start-up delay and stall time. `udp`: the URL
    /// is `udp://host:port` on the site's host, the owner's reflector (run with the
    /// site's verification token), which agents send an isochronous stream of small
    /// packets, as a game or a call does; reported on round trip, jitter and loss.
    #[serde(default = "default_kind")]
    pub kind: CheckKind,
    /// A throughput check's load: `connections` (1–16, default 4) downloading at once
    /// for `duration_ms` (1,000–30,000, default 10,000, and at least 5 s less than
    /// `timeout_ms`). Only for kind `throughput`.
    #[serde(default)]
    pub throughput: Option<ThroughputLoad>,
    /// A video check's session: `play_ms` of media (1,000–120,000, default 20,000) of
    /// the master playlist's highest variant at or under `max_bitrate_kbps` (absent:
    /// the highest). Only for kind `video`.
    #[serde(default)]
    pub video: Option<VideoSession>,
    /// A udp check's stream: a probe of `packet_bytes` (40–1,200, default 172) every
    /// `interval_ms` (10–1,000, default 20) for `duration_ms` (1,000–60,000, default
    /// 10,000; at most 3,000 probes). Only for kind `udp`.
    #[serde(default)]
    pub udp: Option<UdpStream>,
    /// Statuses that count as success; empty means any 2xx or 3xx (for a page: of
    /// the HTML document).
    #[serde(default)]
    pub expected_status: Vec<u16>,
    /// Largest body agents read; default 10 MiB. For a page: the whole page. For a
    /// throughput load: every connection's bytes together (the load ends when they
    /// arrived), default 100 MiB.
    pub max_bytes: Option<u64>,
    /// Per-measurement time limit; default 30 s (60 s for a video session, and a
    /// throughput load's duration plus 5 s when that is longer).
    pub timeout_ms: Option<u64>,
    /// Redirects agents follow at most (0: none); one more fails with
    /// `too_many_redirects`. Default 5.
    pub max_redirects: Option<u32>,
    #[serde(default)]
    pub selection: Selection,
    #[serde(default)]
    pub schedule: Schedule,
    /// The body must contain this text, or the measurement fails with `body_mismatch`.
    pub body_contains: Option<String>,
    /// Share this check's results (never its URL) with the ISPs whose networks the
    /// measuring agents sit in.
    #[serde(default)]
    pub isp_sharing: bool,
    /// SLA objectives, judged in every report (see [`crate::objectives`]).
    #[serde(default)]
    pub objectives: Vec<Objective>,
}

/// A throughput check's load as owners write it: either field may be left out (its
/// default applies), a misspelt one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ThroughputLoad {
    /// Connections downloading at once; default 4.
    pub connections: u32,
    /// How long the load lasts, milliseconds; default 10,000.
    pub duration_ms: u64,
}

impl Default for ThroughputLoad {
    fn default() -> Self {
        ThroughputLoad::from(ThroughputTask::default())
    }
}

impl From<ThroughputTask> for ThroughputLoad {
    fn from(t: ThroughputTask) -> Self {
        ThroughputLoad {
            connections: t.connections,
            duration_ms: t.duration_ms,
        }
    }
}

impl From<ThroughputLoad> for ThroughputTask {
    fn from(l: ThroughputLoad) -> Self {
        ThroughputTask {
            connections: l.connections,
            duration_ms: l.duration_ms,
        }
    }
}

/// A video check's session as owners write it: either field may be left out, a
/// misspelt one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VideoSession {
    /// Media to play, milliseconds; default 20,000.
    pub play_ms: u64,
    /// The highest variant at or under this bitrate is played (the lowest when none
    /// is); absent: the highest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bitrate_kbps: Option<u64>,
}

impl Default for VideoSession {
    fn default() -> Self {
        VideoSession::from(VideoTask::default())
    }
}

impl From<VideoTask> for VideoSession {
    fn from(t: VideoTask) -> Self {
        VideoSession {
            play_ms: t.play_ms,
            max_bitrate_kbps: t.max_bitrate_kbps,
        }
    }
}

impl From<VideoSession> for VideoTask {
    fn from(v: VideoSession) -> Self {
        VideoTask {
            play_ms: v.play_ms,
            max_bitrate_kbps: v.max_bitrate_kbps,
        }
    }
}

fn default_kind() -> CheckKind {
    CheckKind::Http
}

impl NewCheck {
    /// The request that would make `check` as it is now (a `PATCH` is merged into it).
    pub fn of(check: &Check) -> NewCheck {
        NewCheck {
            site_id: check.site_id.parse().unwrap_or_default(),
            name: Some(check.name.clone()),
            url: check.url.clone(),
            kind: check.kind.parse().unwrap_or(CheckKind::Http),
            throughput: check.throughput().map(ThroughputLoad::from),
            video: check.video().map(VideoSession::from),
            udp: check.udp(),
            expected_status: check.expected_status(),
            max_bytes: Some(check.max_bytes.max(0) as u64),
            timeout_ms: Some(check.timeout_ms.max(0) as u64),
            max_redirects: Some(check.max_redirects.max(0) as u32),
            selection: check.selection(),
            schedule: Schedule {
                every_seconds: check.interval_s.map(|s| s.max(0) as u64),
            },
            body_contains: check.body_contains.clone(),
            isp_sharing: check.isp_sharing,
            objectives: check.objectives(),
        }
    }
}

/// Merges JSON merge patch `patch` (RFC 7396) into `target`: objects merge key by key,
/// `null` removes a key (the field's default then applies), anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (key, value) in p {
                if value.is_null() {
                    t.remove(key);
                } else {
                    merge_patch(
                        t.entry(key.clone()).or_insert(serde_json::Value::Null),
                        value,
                    );
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Changes the fields of one of the owner's checks that `patch` names (a JSON merge
/// patch: the other fields stay; `null` resets a field to its default), under the rules
/// of creation.
pub fn patch(
    conn: &mut DbConn,
    owner_id: &str,
    id: &str,
    patch: &serde_json::Value,
    min_interval_s: u64,
) -> Result<Check> {
    let current = get(conn, owner_id, id)?;
    let new = patched(&current, patch)?;
    update(conn, owner_id, id, &new, min_interval_s)
}

/// The request `patch` makes of `current` (see [`patch`]).
fn patched(current: &Check, patch: &serde_json::Value) -> Result<NewCheck> {
    if !patch.is_object() {
        return Err(Error::invalid(
            "invalid_patch",
            "a PATCH body is a JSON object of the fields to change",
        ));
    }
    let mut merged = serde_json::to_value(NewCheck::of(current))
        .map_err(|e| Error::Internal(format!("check {} as JSON: {e}", current.id)))?;
    merge_patch(&mut merged, patch);
    serde_json::from_value(merged).map_err(|e| {
        Error::invalid(
            "invalid_patch",
            format!("the patched check is not valid: {e}"),
        )
    })
}

/// [`create`], once a udp check's reflector proved to be its site's
/// ([`crate::reflectors::prove`]): what the API and the dashboard call.
pub async fn create_proven(
    db: &Db,
    policy: &FetchPolicy,
    owner_id: String,
    new: NewCheck,
    min_interval_s: u64,
) -> Result<Check> {
    prove_target(db, policy, &owner_id, &new, None, min_interval_s).await?;
    db.run(move |c| create(c, &owner_id, &new, min_interval_s))
        .await
}

/// [`update`], once a udp check's new reflector proved to be its site's.
pub async fn update_proven(
    db: &Db,
    policy: &FetchPolicy,
    owner_id: String,
    id: String,
    new: NewCheck,
    min_interval_s: u64,
) -> Result<Check> {
    let current = {
        let (owner_id, id) = (owner_id.clone(), id.clone());
        db.run(move |c| get(c, &owner_id, &id)).await?
    };
    prove_target(db, policy, &owner_id, &new, Some(&current), min_interval_s).await?;
    db.run(move |c| update(c, &owner_id, &id, &new, min_interval_s))
        .await
}

/// [`patch`], once a udp check's new reflector proved to be its site's.
pub async fn patch_proven(
    db: &Db,
    policy: &FetchPolicy,
    owner_id: String,
    id: String,
    patch: serde_json::Value,
    min_interval_s: u64,
) -> Result<Check> {
    let current = {
        let (owner_id, id) = (owner_id.clone(), id.clone());
        db.run(move |c| get(c, &owner_id, &id)).await?
    };
    let new = patched(&current, &patch)?;
    prove_target(db, policy, &owner_id, &new, Some(&current), min_interval_s).await?;
    db.run(move |c| update(c, &owner_id, &id, &new, min_interval_s))
        .await
}

/// Proves the reflector of `new` when it is a udp check whose target is new (made now,
/// or another URL or kind than `current`'s): as a site is verified once, a reflector is
/// proven when a check first points at it, not at every edit. The check must pass the
/// rules first, so that a refused field is named before any packet is sent.
async fn prove_target(
    db: &Db,
    policy: &FetchPolicy,
    owner_id: &str,
    new: &NewCheck,
    current: Option<&Check>,
    min_interval_s: u64,
) -> Result<()> {
    if new.kind != CheckKind::Udp {
        return Ok(());
    }
    let Ok(url) = url::Url::parse(new.url.trim()) else {
        return Ok(());
    };
    if current.is_some_and(|c| c.kind == CheckKind::Udp.as_str() && c.url == url.as_str()) {
        return Ok(());
    }
    let quota_key = owner_id.to_owned();
    let (owner_id, checked) = (owner_id.to_owned(), new.clone());
    let token = db
        .run(move |c| {
            validated(
                c,
                &owner_id,
                &checked,
                min_interval_s,
                String::new(),
                now_us(),
            )?;
            Ok::<_, Error>(
                sites::get(c, &owner_id, &checked.site_id.to_string())?.verification_token,
            )
        })
        .await?;
    // The rules held: the URL is udp://host:port on the site's host.
    let (Some(host), Some(port)) = (url.host_str(), url.port()) else {
        return Ok(());
    };
    crate::reflectors::take_proof(&quota_key)?;
    crate::reflectors::prove(policy, host.trim_matches(['[', ']']), port, &token).await
}

pub use lastmile_storage::checks::Check;

/// The owner's check with this id.
pub fn get(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<Check> {
    Ok(lastmile_storage::checks::get(conn, owner_id, id)?)
}

/// Any check by id (for the scheduler, which acts for every owner).
pub fn get_any(conn: &mut DbConn, id: &str) -> Result<Check> {
    Ok(lastmile_storage::checks::get_any(conn, id)?)
}

/// The owner's checks, oldest first.
pub fn list(conn: &mut DbConn, owner_id: &str) -> Result<Vec<Check>> {
    Ok(lastmile_storage::checks::list(conn, owner_id)?)
}

/// A check as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckView {
    pub id: Uuid,
    pub site_id: Uuid,
    pub name: String,
    pub kind: CheckKind,
    /// A throughput check's load; absent for the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputLoad>,
    /// A video check's session; absent for the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSession>,
    /// A udp check's stream; absent for the other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpStream>,
    pub url: String,
    pub expected_status: Vec<u16>,
    pub max_bytes: u64,
    pub timeout_ms: u64,
    pub selection: Selection,
    pub schedule: Schedule,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub body_contains: Option<String>,
    pub max_redirects: u32,
    pub isp_sharing: bool,
    pub objectives: Vec<Objective>,
    /// Paused checks make no scheduled runs ("run now" still works).
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub paused_at: Option<DateTime<Utc>>,
    /// What each accepted result costs, in minor units of `price_currency` (fixed by
    /// the kind and the selection; see `lastmile_billing::pricing`).
    pub price_per_result_minor: i64,
    pub price_currency: String,
    /// Results of this check flagged by verification (stored, left out of reports, not
    /// charged); given by `GET /api/v1/checks/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged_results: Option<u64>,
    /// The latest run and how far it got (with its `problem`, e.g.
    /// `no_eligible_agents`); given by `GET /api/v1/checks/{id}` once the check has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<crate::scheduling::RunView>,
}

impl From<&Check> for CheckView {
    fn from(c: &Check) -> CheckView {
        CheckView {
            id: c.id.parse().unwrap_or_default(),
            site_id: c.site_id.parse().unwrap_or_default(),
            name: c.name.clone(),
            kind: c.kind.parse().unwrap_or(CheckKind::Http),
            throughput: c.throughput().map(ThroughputLoad::from),
            video: c.video().map(VideoSession::from),
            udp: c.udp(),
            url: c.url.clone(),
            expected_status: c.expected_status(),
            max_bytes: c.max_bytes.max(0) as u64,
            timeout_ms: c.timeout_ms.max(0) as u64,
            selection: c.selection(),
            schedule: Schedule {
                every_seconds: c.interval_s.map(|s| s.max(0) as u64),
            },
            next_run_at: c.next_run_at.map(to_datetime),
            created_at: to_datetime(c.created_at),
            body_contains: c.body_contains.clone(),
            max_redirects: c.max_redirects.max(0) as u32,
            isp_sharing: c.isp_sharing,
            objectives: c.objectives(),
            paused: c.paused_at.is_some(),
            paused_at: c.paused_at.map(to_datetime),
            price_per_result_minor: crate::billing::price_of(c).minor,
            price_currency: crate::billing::price_of(c).currency.to_string(),
            flagged_results: None,
            last_run: None,
        }
    }
}

const MAX_AGENTS_PER_RUN: u32 = 1000;
const MAX_TIMEOUT_MS: u64 = 120_000;
const MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;
/// Browsers give up around 20 redirects; more is a loop, not a site.
pub const MAX_REDIRECTS: u32 = 20;

/// Validates and stores a new check. A check without an interval is due at once.
pub fn create(
    conn: &mut DbConn,
    owner_id: &str,
    new: &NewCheck,
    min_interval_s: u64,
) -> Result<Check> {
    let now = now_us();
    let check = validated(
        conn,
        owner_id,
        new,
        min_interval_s,
        Uuid::new_v4().to_string(),
        now,
    )?;
    diesel::insert_into(checks::table)
        .values(&check)
        .execute(conn)?;
    Ok(check)
}

/// Replaces the owner's check `id` with `new`, under exactly the rules of [`create`].
/// The id, creation time and pause state stay. A scheduled check keeps its next run
/// time (or becomes due now if it had none, e.g. a one-off that already ran and now
/// gets an interval); a one-off check that already ran does not run again.
pub fn update(
    conn: &mut DbConn,
    owner_id: &str,
    id: &str,
    new: &NewCheck,
    min_interval_s: u64,
) -> Result<Check> {
    let current = get(conn, owner_id, id)?;
    let now = now_us();
    let mut check = validated(conn, owner_id, new, min_interval_s, current.id.clone(), now)?;
    check.created_at = current.created_at;
    check.paused_at = current.paused_at;
    check.next_run_at = match check.interval_s {
        Some(_) => current.next_run_at.or(Some(now)),
        None => current.next_run_at,
    };
    diesel::update(checks::table.find(&current.id))
        .filter(checks::owner_id.eq(owner_id))
        .set((
            checks::site_id.eq(&check.site_id),
            checks::name.eq(&check.name),
            checks::kind.eq(&check.kind),
            checks::url.eq(&check.url),
            checks::expected_status.eq(&check.expected_status),
            checks::max_bytes.eq(check.max_bytes),
            checks::timeout_ms.eq(check.timeout_ms),
            checks::countries.eq(&check.countries),
            checks::asns.eq(&check.asns),
            checks::connection_classes.eq(&check.connection_classes),
            checks::agents_per_run.eq(check.agents_per_run),
            checks::spread.eq(&check.spread),
            checks::interval_s.eq(check.interval_s),
            checks::next_run_at.eq(check.next_run_at),
            checks::isp_sharing.eq(check.isp_sharing),
            checks::body_contains.eq(&check.body_contains),
            checks::objectives.eq(&check.objectives),
            checks::max_redirects.eq(check.max_redirects),
            checks::throughput.eq(&check.throughput),
            checks::video.eq(&check.video),
            checks::udp.eq(&check.udp),
        ))
        .execute(conn)?;
    Ok(check)
}

/// Pauses (`true`) or resumes (`false`) the owner's check. A paused check's schedule
/// makes no runs; "run now" still works, because the owner asked for that run
/// explicitly. Resuming a scheduled check whose next run time passed meanwhile runs it
/// at the next scheduler tick, once (missed runs are not made up).
pub fn set_paused(conn: &mut DbConn, owner_id: &str, id: &str, paused: bool) -> Result<Check> {
    let current = get(conn, owner_id, id)?;
    let paused_at = match (paused, current.paused_at) {
        (true, Some(t)) => Some(t),
        (true, None) => Some(now_us()),
        (false, _) => None,
    };
    diesel::update(checks::table.find(&current.id))
        .set(checks::paused_at.eq(paused_at))
        .execute(conn)?;
    Ok(Check {
        paused_at,
        ..current
    })
}

/// Checks `new` against every rule and returns the row it would be.
fn validated(
    conn: &mut DbConn,
    owner_id: &str,
    new: &NewCheck,
    min_interval_s: u64,
    id: String,
    now: i64,
) -> Result<Check> {
    let site = sites::get(conn, owner_id, &new.site_id.to_string())?;
    if site.verified_at.is_none() {
        return Err(Error::conflict(
            "site_not_verified",
            format!(
                "site {} is not verified yet; serve its token and call verify first",
                site.origin
            ),
        ));
    }
    let url = url::Url::parse(new.url.trim()).map_err(|e| {
        Error::invalid(
            "invalid_url",
            format!("url {:?} is not a URL: {e}", new.url),
        )
    })?;
    on_site(&url, &site.origin, new.kind)?;
    validate_selection(&new.selection)?;
    objectives::validate(&new.objectives)?;
    for s in &new.expected_status {
        if !(100..=599).contains(s) {
            return Err(Error::invalid(
                "invalid_expected_status",
                format!("{s} is not an HTTP status"),
            ));
        }
    }
    let default_timeout_ms = match new.kind {
        CheckKind::Video => 60_000,
        // A long load gets the time it needs beside it, unless the owner says otherwise.
        CheckKind::Throughput => new
            .throughput
            .unwrap_or_default()
            .duration_ms
            .saturating_add(THROUGHPUT_SLACK_MS)
            .clamp(30_000, MAX_TIMEOUT_MS),
        // The stream, and the hellos and the wait for echoes around it, on a slow line.
        CheckKind::Udp => new
            .udp
            .unwrap_or_default()
            .duration_ms
            .saturating_add(UDP_SLACK_MS + THROUGHPUT_SLACK_MS)
            .clamp(30_000, MAX_TIMEOUT_MS),
        CheckKind::Http | CheckKind::Page => 30_000,
    };
    let timeout_ms = new.timeout_ms.unwrap_or(default_timeout_ms);
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(Error::invalid(
            "invalid_timeout",
            format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    let throughput = validated_load(new, timeout_ms)?;
    let video = validated_session(new)?;
    let udp = validated_stream(new, timeout_ms)?;
    let default_max_bytes = match new.kind {
        CheckKind::Throughput | CheckKind::Video => MAX_BODY_BYTES,
        CheckKind::Http | CheckKind::Page | CheckKind::Udp => 10 * 1024 * 1024,
    };
    let max_bytes = new.max_bytes.unwrap_or(default_max_bytes);
    if max_bytes == 0 || max_bytes > MAX_BODY_BYTES {
        return Err(Error::invalid(
            "invalid_max_bytes",
            format!("max_bytes must be between 1 and {MAX_BODY_BYTES}"),
        ));
    }
    if let Some(every) = new.schedule.every_seconds {
        if every < min_interval_s || every > 31 * 24 * 3600 {
            return Err(Error::invalid(
                "invalid_schedule",
                format!("schedule.every_seconds must be between {min_interval_s} and 2678400"),
            ));
        }
    }
    if let Some(text) = &new.body_contains {
        if text.is_empty() || text.len() > 1024 {
            return Err(Error::invalid(
                "invalid_body_contains",
                "body_contains must be 1 to 1024 bytes",
            ));
        }
    }
    let max_redirects = new
        .max_redirects
        .unwrap_or(lastmile_protocol::DEFAULT_MAX_REDIRECTS);
    if max_redirects > MAX_REDIRECTS {
        return Err(Error::invalid(
            "invalid_max_redirects",
            format!("max_redirects must be between 0 and {MAX_REDIRECTS}"),
        ));
    }
    let name = match &new.name {
        Some(n) => crate::accounts::validate_name(n)?,
        None => url.to_string(),
    };
    let check = Check {
        id,
        owner_id: owner_id.to_owned(),
        site_id: site.id,
        name,
        kind: new.kind.as_str().to_owned(),
        url: url.to_string(),
        expected_status: json(&new.expected_status),
        max_bytes: max_bytes as i64,
        timeout_ms: timeout_ms as i64,
        countries: json(&normalized_countries(&new.selection.countries)),
        asns: json(&new.selection.asns),
        connection_classes: json(&new.selection.connection_classes),
        agents_per_run: new.selection.agents_per_run as i32,
        interval_s: new.schedule.every_seconds.map(|s| s as i64),
        next_run_at: Some(now),
        created_at: now,
        isp_sharing: new.isp_sharing,
        body_contains: new.body_contains.clone(),
        objectives: json(&new.objectives),
        max_redirects: max_redirects as i32,
        paused_at: None,
        spread: new.selection.spread.as_str().to_owned(),
        throughput: throughput.map(|load| json(&load)),
        video: video.map(|session| json(&session)),
        udp: udp.map(|stream| json(&stream)),
    };
    Ok(check)
}

/// Whether `url` may be measured by a check of `kind` on the site at `origin`: an
/// http(s) URL on the site's origin, or for a udp check `udp://host:port` on the site's
/// host (the site proves the owner controls the host; the reflector, answering with
/// the site's token, that the port is theirs).
fn on_site(url: &url::Url, origin: &str, kind: CheckKind) -> Result<()> {
    if kind != CheckKind::Udp {
        if url.origin().ascii_serialization() != origin {
            let hint = if url.scheme() == "udp" {
                "; a udp:// URL is for kind \"udp\""
            } else {
                ""
            };
            return Err(Error::invalid(
                "url_not_on_site",
                format!("url must be on the site's origin {origin}{hint}"),
            ));
        }
        return Ok(());
    }
    let site_host = url::Url::parse(origin)
        .ok()
        .and_then(|o| o.host_str().map(str::to_owned));
    if url.scheme() != "udp"
        || url.port().is_none()
        || !url.path().trim_start_matches('/').is_empty()
        || url.query().is_some()
    {
        return Err(Error::invalid(
            "invalid_url",
            format!(
                "a udp check's url is the reflector's udp://host:port (e.g. udp://{}:7301), not {url}",
                site_host.as_deref().unwrap_or("host")
            ),
        ));
    }
    if url.host_str().map(str::to_owned) != site_host {
        return Err(Error::invalid(
            "url_not_on_site",
            format!(
                "a udp check's reflector must be on the site's host {}",
                site_host.as_deref().unwrap_or(origin)
            ),
        ));
    }
    Ok(())
}

/// Time a udp task needs besides its stream: the hellos (at most three, a second apart)
/// and the wait for the last echoes.
const UDP_SLACK_MS: u64 = lastmile_protocol::UDP_HELLO_ATTEMPTS as u64
    * lastmile_protocol::UDP_HELLO_WAIT_MS
    + lastmile_protocol::UDP_ECHO_WAIT_MS
    + 1_000;

/// The stream of a udp check (its default when it names none), checked; `None` for the
/// other kinds, which must not name one.
fn validated_stream(new: &NewCheck, timeout_ms: u64) -> Result<Option<UdpStream>> {
    if new.kind != CheckKind::Udp {
        return match new.udp {
            Some(_) => Err(Error::invalid(
                "invalid_udp",
                format!(
                    "udp is a stream for kind \"udp\"; a {} check has none",
                    new.kind
                ),
            )),
            None => Ok(None),
        };
    }
    if new.body_contains.is_some() || !new.expected_status.is_empty() {
        return Err(Error::invalid(
            "invalid_udp",
            "a udp stream has no HTTP response: body_contains and expected_status are for http and page checks",
        ));
    }
    let stream = new.udp.unwrap_or_default();
    let (min_i, max_i) = (
        lastmile_protocol::MIN_UDP_INTERVAL_MS,
        lastmile_protocol::MAX_UDP_INTERVAL_MS,
    );
    if !(min_i..=max_i).contains(&stream.interval_ms) {
        return Err(Error::invalid(
            "invalid_udp",
            format!("udp.interval_ms must be between {min_i} and {max_i}"),
        ));
    }
    let (min_d, max_d) = (
        lastmile_protocol::MIN_UDP_DURATION_MS,
        lastmile_protocol::MAX_UDP_DURATION_MS,
    );
    if !(min_d..=max_d).contains(&stream.duration_ms) {
        return Err(Error::invalid(
            "invalid_udp",
            format!("udp.duration_ms must be between {min_d} and {max_d}"),
        ));
    }
    let probes = stream.duration_ms / stream.interval_ms;
    let max_probes = lastmile_protocol::MAX_UDP_PROBES as u64;
    if probes > max_probes {
        return Err(Error::invalid(
            "invalid_udp",
            format!(
                "a stream of {} ms every {} ms is {probes} probes; at most {max_probes}: \
                 send less often or for less long",
                stream.duration_ms, stream.interval_ms
            ),
        ));
    }
    let (min_b, max_b) = (
        lastmile_protocol::reflector::MIN_PROBE_LEN,
        lastmile_protocol::reflector::MAX_PROBE_LEN,
    );
    if !(min_b..=max_b).contains(&(stream.packet_bytes as usize)) {
        return Err(Error::invalid(
            "invalid_udp",
            format!("udp.packet_bytes must be between {min_b} and {max_b}"),
        ));
    }
    if stream.duration_ms + UDP_SLACK_MS > timeout_ms {
        return Err(Error::invalid(
            "invalid_timeout",
            format!(
                "timeout_ms ({timeout_ms}) must leave {UDP_SLACK_MS} ms beside the stream's duration_ms ({}): \
                 at least {}",
                stream.duration_ms,
                stream.duration_ms + UDP_SLACK_MS
            ),
        ));
    }
    Ok(Some(stream))
}

/// The session of a video check (its default when it names none), checked; `None` for
/// the other kinds, which must not name one.
fn validated_session(new: &NewCheck) -> Result<Option<VideoTask>> {
    if new.kind != CheckKind::Video {
        return match new.video {
            Some(_) => Err(Error::invalid(
                "invalid_video",
                format!(
                    "video is a session for kind \"video\"; a {} check has none",
                    new.kind
                ),
            )),
            None => Ok(None),
        };
    }
    if new.body_contains.is_some() {
        return Err(Error::invalid(
            "invalid_body_contains",
            "a video check plays its segments, it does not search them: body_contains is for http and page checks",
        ));
    }
    let session = VideoTask::from(new.video.unwrap_or_default());
    let max_play = lastmile_protocol::MAX_VIDEO_PLAY_MS;
    if !(1_000..=max_play).contains(&session.play_ms) {
        return Err(Error::invalid(
            "invalid_video",
            format!("video.play_ms must be between 1000 and {max_play}"),
        ));
    }
    if session.max_bitrate_kbps == Some(0) {
        return Err(Error::invalid(
            "invalid_video",
            "video.max_bitrate_kbps must be above 0 (leave it out for the highest rendition)",
        ));
    }
    Ok(Some(session))
}

/// Time a throughput task needs besides its load: resolving, connecting, the idle
/// probes and the last probe's answer, on a slow line.
const THROUGHPUT_SLACK_MS: u64 = 5_000;

/// The load of a throughput check (its default when it names none), checked; `None`
/// for the other kinds, which must not name one.
fn validated_load(new: &NewCheck, timeout_ms: u64) -> Result<Option<ThroughputTask>> {
    if new.kind != CheckKind::Throughput {
        return match new.throughput {
            Some(_) => Err(Error::invalid(
                "invalid_throughput",
                format!(
                    "throughput is a load for kind \"throughput\"; a {} check has none",
                    new.kind
                ),
            )),
            None => Ok(None),
        };
    }
    if new.body_contains.is_some() {
        return Err(Error::invalid(
            "invalid_body_contains",
            "a throughput check reads its bodies only to count them: body_contains is for http and page checks",
        ));
    }
    let load = ThroughputTask::from(new.throughput.unwrap_or_default());
    let max_connections = lastmile_protocol::MAX_THROUGHPUT_CONNECTIONS;
    if load.connections == 0 || load.connections > max_connections {
        return Err(Error::invalid(
            "invalid_throughput",
            format!("throughput.connections must be between 1 and {max_connections}"),
        ));
    }
    let max_duration = lastmile_protocol::MAX_THROUGHPUT_DURATION_MS;
    if !(1_000..=max_duration).contains(&load.duration_ms) {
        return Err(Error::invalid(
            "invalid_throughput",
            format!("throughput.duration_ms must be between 1000 and {max_duration}"),
        ));
    }
    if load.duration_ms + THROUGHPUT_SLACK_MS > timeout_ms {
        return Err(Error::invalid(
            "invalid_timeout",
            format!(
                "timeout_ms ({timeout_ms}) must leave {THROUGHPUT_SLACK_MS} ms beside the load's duration_ms ({}): \
                 at least {}",
                load.duration_ms,
                load.duration_ms + THROUGHPUT_SLACK_MS
            ),
        ));
    }
    Ok(Some(load))
}

/// A list-valued column as JSON text.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".into())
}

fn normalized_countries(countries: &[String]) -> Vec<String> {
    countries
        .iter()
        .map(|c| c.trim().to_ascii_uppercase())
        .collect()
}

fn validate_selection(s: &Selection) -> Result<()> {
    if s.agents_per_run == 0 || s.agents_per_run > MAX_AGENTS_PER_RUN {
        return Err(Error::invalid(
            "invalid_selection",
            format!("selection.agents_per_run must be between 1 and {MAX_AGENTS_PER_RUN}"),
        ));
    }
    for c in &s.countries {
        let code = c.trim().to_ascii_uppercase();
        if !crate::countries::is_assigned(&code) {
            // The usual slips, named: the UK's code is GB, and EU is no country.
            let hint = match code.as_str() {
                "UK" => " (the United Kingdom is GB)",
                "EU" => " (name the member countries instead)",
                _ => "",
            };
            return Err(Error::invalid(
                "invalid_selection",
                format!(
                    "selection.countries: {c:?} is not an assigned ISO 3166-1 alpha-2 country code{hint}; \
                     use two-letter codes such as DE, US or BR"
                ),
            ));
        }
    }
    if s.asns.contains(&0) {
        return Err(Error::invalid("invalid_selection", "ASN 0 is reserved"));
    }
    Ok(())
}
