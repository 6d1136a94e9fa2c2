//! Alerts, as an owner sets them up: channels (where alerts go) and rules (what breaks a
//! check). [`crate::incidents`] judges the rules and opens, updates and resolves
//! incidents; [`crate::alert_delivery`] sends each change to the rule's channels.
//!
//! Channels: `webhook` (a JSON body signed with HMAC-SHA256 under the channel's secret,
//! shown once, when the channel is made), `slack` (a Slack-compatible incoming webhook:
//! `{"text": ...}`), `email` (over the controller's SMTP relay). A channel's URL is
//! judged by the same address guard as sites when it is sent to, not only when it is
//! made (a name can change what it resolves to).
//!
//! Rules, each over a window ending now (15 minutes unless set):
//! - `objective_breached`: one of the check's objectives is breached *conclusively*,
//!   by the interval of the report over the window, grouped by connection class.
//! - `availability_below`: counted results' availability is below `threshold_percent`
//!   (at least `min_samples` results).
//! - `no_eligible_agents`: the check's latest run in the window found no eligible agent.
//! - `segment_failing`: in one country, network or connection class the availability is
//!   below `threshold_percent` (50 unless set) while the check's other ones are at or
//!   above it (each side at least `min_samples` results): the site is fine, one part of
//!   the last mile is not.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::check_terms::StoredCheck;
use crate::clock::{now_us, to_datetime, Micros};
use crate::error::{Error, Result};
use lastmile_storage::schema::{alert_channels, alert_rule_channels, alert_rules};
use lastmile_storage::{write_tx, DbConn};

/// Where alerts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Slack,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        [ChannelKind::Webhook, ChannelKind::Slack, ChannelKind::Email]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A channel as an owner asks for it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    /// What the owner calls it ("on-call", "#ops").
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    pub kind: ChannelKind,
    /// `webhook` and `slack`: the http(s) URL to POST to.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// `email`: the address to mail.
    #[serde(default)]
    #[schema(max_length = 254)]
    pub email: Option<String>,
}

/// A channel as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelView {
    pub id: Uuid,
    pub name: String,
    pub kind: ChannelKind,
    /// The URL (`webhook`, `slack`) or the address (`email`).
    pub target: String,
    /// `webhook`: the signing secret, only in the answer that made the channel. Check
    /// each delivery's `Lastmile-Signature: sha256=<hex>` header against
    /// HMAC-SHA256(secret, body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A stored channel.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = alert_channels)]
pub struct Channel {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub secret: Option<String>,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

impl Channel {
    pub fn kind(&self) -> Option<ChannelKind> {
        ChannelKind::parse(&self.kind)
    }

    /// The API's view, without the secret.
    pub fn view(&self) -> ChannelView {
        ChannelView {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            name: self.name.clone(),
            kind: self.kind().unwrap_or(ChannelKind::Webhook),
            target: self.target.clone(),
            secret: None,
            created_at: to_datetime(self.created_at),
        }
    }
}

/// Most channels and rules an owner or a check may have.
const MAX_CHANNELS_PER_OWNER: i64 = 50;
const MAX_RULES_PER_CHECK: i64 = 20;

fn web_url(raw: Option<&str>, kind: ChannelKind) -> Result<String> {
    let raw = raw.map(str::trim).unwrap_or_default();
    if raw.is_empty() {
        return Err(Error::invalid(
            "invalid_channel",
            format!("a {} channel needs a `url` to POST to", kind.as_str()),
        ));
    }
    if raw.len() > 2048 {
        return Err(Error::invalid(
            "invalid_channel",
            "`url` is longer than 2048 characters",
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| Error::invalid("invalid_channel", format!("`url` {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::invalid(
            "invalid_channel",
            format!("`url` must be an http(s) URL with a host, not {raw:?}"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(
            "invalid_channel",
            "`url` must not carry a user name or password; put a token in its path or query",
        ));
    }
    Ok(url.to_string())
}

/// An address as sign-up normalises it (`logins::normalize_email`), and one address
/// only: a list would fail at the relay, not here.
fn email_address(raw: Option<&str>) -> Result<String> {
    let raw = raw.unwrap_or_default();
    let refused = || {
        Error::invalid(
            "invalid_channel",
            format!(
                "an email channel needs an `email` address, not {:?}",
                raw.trim()
            ),
        )
    };
    let address = crate::logins::normalize_email(raw).map_err(|_| refused())?;
    if address.contains([',', ';']) || address.chars().any(char::is_control) {
        return Err(refused());
    }
    Ok(address)
}

/// Makes a channel for `owner_id`. A webhook's answer carries its secret, once. An email
/// channel needs `can_email`: a controller with an SMTP relay.
pub fn create_channel(
    conn: &mut DbConn,
    owner_id: &str,
    new: &NewChannel,
    can_email: bool,
) -> Result<ChannelView> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid(
            "invalid_channel",
            "`name` must be 1 to 100 characters",
        ));
    }
    let target = match new.kind {
        ChannelKind::Webhook | ChannelKind::Slack => {
            if new.email.is_some() {
                return Err(Error::invalid(
                    "invalid_channel",
                    format!(
                        "a {} channel takes a `url`, not an `email`",
                        new.kind.as_str()
                    ),
                ));
            }
            web_url(new.url.as_deref(), new.kind)?
        }
        ChannelKind::Email => {
            if new.url.is_some() {
                return Err(Error::invalid(
                    "invalid_channel",
                    "an email channel takes an `email`, not a `url`",
                ));
            }
            let address = email_address(new.email.as_deref())?;
            if !can_email {
                return Err(Error::invalid(
                    "email_unavailable",
                    "this controller has no SMTP relay configured (smtp_url), so it cannot send \
                     email alerts; use a webhook or Slack channel, or ask its operator",
                ));
            }
            address
        }
    };
    let secret = (new.kind == ChannelKind::Webhook).then(|| crate::accounts::new_secret("whsec_"));
    let channel = Channel {
        id: Uuid::new_v4().to_string(),
        owner_id: owner_id.to_owned(),
        name: name.to_owned(),
        kind: new.kind.as_str().to_owned(),
        target,
        secret: secret.clone(),
        created_at: now_us(),
        deleted_at: None,
    };
    write_tx(conn, |c| {
        let existing: i64 = alert_channels::table
            .filter(alert_channels::owner_id.eq(owner_id))
            .filter(alert_channels::deleted_at.is_null())
            .count()
            .get_result(c)?;
        if existing >= MAX_CHANNELS_PER_OWNER {
            return Err(Error::conflict(
                "too_many_channels",
                format!(
                    "an owner may have {MAX_CHANNELS_PER_OWNER} alert channels; delete one first"
                ),
            ));
        }
        diesel::insert_into(alert_channels::table)
            .values((
                alert_channels::id.eq(&channel.id),
                alert_channels::owner_id.eq(&channel.owner_id),
                alert_channels::name.eq(&channel.name),
                alert_channels::kind.eq(&channel.kind),
                alert_channels::target.eq(&channel.target),
                alert_channels::secret.eq(&channel.secret),
                alert_channels::created_at.eq(channel.created_at),
            ))
            .execute(c)?;
        Ok(())
    })?;
    Ok(ChannelView {
        secret,
        ..channel.view()
    })
}

/// The owner's channels (not deleted), oldest first.
pub fn list_channels(conn: &mut DbConn, owner_id: &str) -> Result<Vec<Channel>> {
    Ok(alert_channels::table
        .filter(alert_channels::owner_id.eq(owner_id))
        .filter(alert_channels::deleted_at.is_null())
        .order((alert_channels::created_at, alert_channels::id))
        .select(Channel::as_select())
        .load(conn)?)
}

/// One of the owner's channels; another owner's, or a deleted one, is not found.
pub fn get_channel(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<Channel> {
    alert_channels::table
        .filter(alert_channels::id.eq(id))
        .filter(alert_channels::owner_id.eq(owner_id))
        .filter(alert_channels::deleted_at.is_null())
        .select(Channel::as_select())
        .first(conn)
        .optional()?
        .ok_or(Error::NotFound {
            what: "alert channel",
            code: "channel_not_found",
        })
}

/// Deletes one of the owner's channels: rules stop sending to it; its delivery log and
/// what was sent stay.
pub fn delete_channel(conn: &mut DbConn, owner_id: &str, id: &str) -> Result<()> {
    write_tx(conn, |c| {
        get_channel(c, owner_id, id)?;
        diesel::update(alert_channels::table.find(id))
            .set(alert_channels::deleted_at.eq(now_us()))
            .execute(c)?;
        Ok(())
    })
}

/// What breaks a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    ObjectiveBreached,
    AvailabilityBelow,
    NoEligibleAgents,
    SegmentFailing,
}

impl RuleKind {
    pub const ALL: [RuleKind; 4] = [
        RuleKind::ObjectiveBreached,
        RuleKind::AvailabilityBelow,
        RuleKind::NoEligibleAgents,
        RuleKind::SegmentFailing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::ObjectiveBreached => "objective_breached",
            RuleKind::AvailabilityBelow => "availability_below",
            RuleKind::NoEligibleAgents => "no_eligible_agents",
            RuleKind::SegmentFailing => "segment_failing",
        }
    }

    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A rule as an owner asks for it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    pub kind: RuleKind,
    /// Percent: `availability_below` (required) and `segment_failing` (50 unless set).
    #[serde(default)]
    pub threshold_percent: Option<f64>,
    /// The window the rule is judged over, seconds (60 to 86,400; 900 unless set).
    #[serde(default)]
    pub window_s: Option<u32>,
    /// Fewest counted results a verdict needs (1 to 10,000; 3 unless set).
    #[serde(default)]
    pub min_samples: Option<u32>,
    /// The channels (ids of the owner's) that hear of its incidents.
    pub channels: Vec<Uuid>,
}

/// A rule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    pub id: Uuid,
    pub check_id: Uuid,
    pub kind: RuleKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_percent: Option<f64>,
    pub window_s: u32,
    pub min_samples: u32,
    pub channels: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// A stored rule.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = alert_rules)]
pub struct Rule {
    pub id: String,
    pub check_id: String,
    pub kind: String,
    pub threshold_percent: Option<f64>,
    pub window_s: i64,
    pub min_samples: i64,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

impl Rule {
    pub fn kind(&self) -> Option<RuleKind> {
        RuleKind::parse(&self.kind)
    }

    pub fn window_us(&self) -> Micros {
        self.window_s * 1_000_000
    }

    fn view(&self, channels: Vec<String>) -> RuleView {
        RuleView {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            check_id: Uuid::parse_str(&self.check_id).unwrap_or_default(),
            kind: self.kind().unwrap_or(RuleKind::AvailabilityBelow),
            threshold_percent: self.threshold_percent,
            window_s: u32::try_from(self.window_s).unwrap_or(u32::MAX),
            min_samples: u32::try_from(self.min_samples).unwrap_or(u32::MAX),
            channels: channels
                .iter()
                .filter_map(|c| Uuid::parse_str(c).ok())
                .collect(),
            created_at: to_datetime(self.created_at),
        }
    }
}

/// Makes a rule on one of the owner's checks.
pub fn create_rule(
    conn: &mut DbConn,
    owner_id: &str,
    check_id: &str,
    new: &NewRule,
) -> Result<RuleView> {
    let threshold = match (new.kind, new.threshold_percent) {
        (RuleKind::AvailabilityBelow, None) => {
            return Err(Error::invalid(
                "invalid_rule",
                "an availability_below rule needs `threshold_percent` (e.g. 99.5)",
            ))
        }
        (RuleKind::SegmentFailing, None) => Some(50.0),
        (RuleKind::ObjectiveBreached | RuleKind::NoEligibleAgents, Some(_)) => {
            return Err(Error::invalid(
                "invalid_rule",
                format!(
                    "a {} rule takes no `threshold_percent` (its limits are the check's objectives, or none)",
                    new.kind.as_str()
                ),
            ))
        }
        (_, t) => t,
    };
    if let Some(t) = threshold {
        if !(t > 0.0 && t <= 100.0) {
            return Err(Error::invalid(
                "invalid_rule",
                format!("`threshold_percent` must be above 0 and at most 100, not {t}"),
            ));
        }
    }
    let window_s = new.window_s.unwrap_or(900);
    if !(60..=86_400).contains(&window_s) {
        return Err(Error::invalid(
            "invalid_rule",
            format!("`window_s` must be 60 to 86400 seconds, not {window_s}"),
        ));
    }
    let min_samples = new.min_samples.unwrap_or(3);
    if !(1..=10_000).contains(&min_samples) {
        return Err(Error::invalid(
            "invalid_rule",
            format!("`min_samples` must be 1 to 10000, not {min_samples}"),
        ));
    }
    let channels: BTreeSet<String> = new.channels.iter().map(Uuid::to_string).collect();
    if channels.is_empty() {
        return Err(Error::invalid(
            "invalid_rule",
            "`channels` must name at least one of your alert channels",
        ));
    }
    let rule = Rule {
        id: Uuid::new_v4().to_string(),
        check_id: check_id.to_owned(),
        kind: new.kind.as_str().to_owned(),
        threshold_percent: threshold,
        window_s: i64::from(window_s),
        min_samples: i64::from(min_samples),
        created_at: now_us(),
        deleted_at: None,
    };
    write_tx(conn, |c| {
        let check = crate::checks::get(c, owner_id, check_id)?;
        if new.kind == RuleKind::ObjectiveBreached && check.objectives().is_empty() {
            return Err(Error::invalid(
                "invalid_rule",
                "this check has no objectives to breach; add some to the check first",
            ));
        }
        for id in &channels {
            get_channel(c, owner_id, id).map_err(|_| {
                Error::invalid(
                    "invalid_rule",
                    format!("{id} is not one of your alert channels"),
                )
            })?;
        }
        let existing: i64 = alert_rules::table
            .filter(alert_rules::check_id.eq(check_id))
            .filter(alert_rules::deleted_at.is_null())
            .count()
            .get_result(c)?;
        if existing >= MAX_RULES_PER_CHECK {
            return Err(Error::conflict(
                "too_many_rules",
                format!("a check may have {MAX_RULES_PER_CHECK} alert rules; delete one first"),
            ));
        }
        diesel::insert_into(alert_rules::table)
            .values((
                alert_rules::id.eq(&rule.id),
                alert_rules::check_id.eq(&rule.check_id),
                alert_rules::kind.eq(&rule.kind),
                alert_rules::threshold_percent.eq(rule.threshold_percent),
                alert_rules::window_s.eq(rule.window_s),
                alert_rules::min_samples.eq(rule.min_samples),
                alert_rules::created_at.eq(rule.created_at),
            ))
            .execute(c)?;
        for channel in &channels {
            diesel::insert_into(alert_rule_channels::table)
                .values((
                    alert_rule_channels::rule_id.eq(&rule.id),
                    alert_rule_channels::channel_id.eq(channel),
                ))
                .execute(c)?;
        }
        Ok(())
    })?;
    Ok(rule.view(channels.into_iter().collect()))
}

/// The channel ids of `rule_id`, deleted channels left out.
pub fn rule_channels(conn: &mut DbConn, rule_id: &str) -> Result<Vec<String>> {
    Ok(alert_rule_channels::table
        .inner_join(alert_channels::table)
        .filter(alert_rule_channels::rule_id.eq(rule_id))
        .filter(alert_channels::deleted_at.is_null())
        .order(alert_rule_channels::channel_id)
        .select(alert_rule_channels::channel_id)
        .load(conn)?)
}

/// The rules of one of the owner's checks (not deleted), oldest first.
pub fn list_rules(conn: &mut DbConn, owner_id: &str, check_id: &str) -> Result<Vec<RuleView>> {
    crate::checks::get(conn, owner_id, check_id)?;
    let rules: Vec<Rule> = alert_rules::table
        .filter(alert_rules::check_id.eq(check_id))
        .filter(alert_rules::deleted_at.is_null())
        .order((alert_rules::created_at, alert_rules::id))
        .select(Rule::as_select())
        .load(conn)?;
    rules
        .into_iter()
        .map(|r| {
            let channels = rule_channels(conn, &r.id)?;
            Ok(r.view(channels))
        })
        .collect()
}

/// Deletes a rule of one of the owner's checks. Its open incident, if any, is resolved
/// by the next alert pass ("rule deleted"); its incidents stay in the history.
pub fn delete_rule(conn: &mut DbConn, owner_id: &str, check_id: &str, rule_id: &str) -> Result<()> {
    write_tx(conn, |c| {
        crate::checks::get(c, owner_id, check_id)?;
        let n = diesel::update(
            alert_rules::table
                .filter(alert_rules::id.eq(rule_id))
                .filter(alert_rules::check_id.eq(check_id))
                .filter(alert_rules::deleted_at.is_null()),
        )
        .set(alert_rules::deleted_at.eq(now_us()))
        .execute(c)?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "alert rule",
                code: "rule_not_found",
            });
        }
        Ok(())
    })
}
