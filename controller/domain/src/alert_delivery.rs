//! Sending alerts: the delivery pass over the outbox (`alert_deliveries`) that
//! [`crate::incidents`] fills.
//!
//! A pass claims the deliveries that are due (on PostgreSQL with `SKIP LOCKED`, so
//! replicas share the work), moving their next attempt a minute on so that a replica
//! that dies mid-send leaves them to be retried, not lost; sends them side by side; and
//! records each attempt: delivered (a 2xx answer, or the mail relay's acceptance), or
//! failed, with the status or error kept for the channel's delivery log and the next
//! attempt after a backoff (the base, then three times longer each time, at most an
//! hour apart), given up after [`MAX_ATTEMPTS`]. Delivery is at least once: a webhook
//! receiver tells a retry by its `Lastmile-Delivery` id, which a retry keeps along
//! with its body and so its signature.
//!
//! Webhooks and Slack URLs are sent through the same address guard as site
//! verification ([`FetchPolicy`]): a channel cannot make the controller post to a
//! private or special-purpose address (unless the operator allows private sites).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::alerts::{Channel, ChannelKind};
use crate::clock::{now_us, to_datetime, Micros};
use crate::error::Result;
use crate::isp::Mailer;
use crate::sites::FetchPolicy;
use lastmile_storage::schema::{alert_channels, alert_deliveries};
use lastmile_storage::{write_tx, Db, DbConn};

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i32 = 8;

/// Longest wait between two attempts.
const MAX_BACKOFF_US: Micros = 3_600_000_000;

/// How long a claimed delivery is left to the replica that claimed it.
const CLAIM_US: Micros = 60_000_000;

/// Deliveries one pass claims.
const PER_PASS: i64 = 20;

/// The signature header's value: `sha256=` and the hex HMAC-SHA256 of `body` under
/// `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map(|mut mac| {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        })
        .unwrap_or_default()
}

/// The wait before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff_us(attempts: i32, base_us: Micros) -> Micros {
    let factor = 3i64.saturating_pow(u32::try_from(attempts.max(1) - 1).unwrap_or(0));
    base_us.saturating_mul(factor).min(MAX_BACKOFF_US)
}

/// A stored delivery.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = alert_deliveries)]
pub struct Delivery {
    pub id: String,
    pub incident_id: String,
    pub channel_id: String,
    pub event: String,
    pub body: String,
    pub created_at: i64,
    pub attempts: i32,
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// One line of a channel's delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The `Lastmile-Delivery` header (and a webhook body's `id`).
    pub id: Uuid,
    pub incident_id: Uuid,
    /// `incident.opened`, `incident.updated` or `incident.resolved`.
    pub event: String,
    pub state: DeliveryState,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last attempt's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<i32>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Delivery {
    pub fn view(&self) -> DeliveryView {
        DeliveryView {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            incident_id: Uuid::parse_str(&self.incident_id).unwrap_or_default(),
            event: self.event.clone(),
            state: match (self.delivered_at, self.next_attempt_at) {
                (Some(_), _) => DeliveryState::Delivered,
                (None, Some(_)) => DeliveryState::Pending,
                (None, None) => DeliveryState::Failed,
            },
            created_at: to_datetime(self.created_at),
            attempts: self.attempts,
            delivered_at: self.delivered_at.map(to_datetime),
            next_attempt_at: self.next_attempt_at.map(to_datetime),
            last_status: self.last_status,
            last_error: self.last_error.clone(),
        }
    }
}

/// A channel's delivery log, newest first (at most 100): one of the owner's channels.
pub fn log(conn: &mut DbConn, owner_id: &str, channel_id: &str) -> Result<Vec<DeliveryView>> {
    crate::alerts::get_channel(conn, owner_id, channel_id)?;
    let rows: Vec<Delivery> = alert_deliveries::table
        .filter(alert_deliveries::channel_id.eq(channel_id))
        .order((alert_deliveries::created_at.desc(), alert_deliveries::id))
        .limit(100)
        .select(Delivery::as_select())
        .load(conn)?;
    Ok(rows.iter().map(Delivery::view).collect())
}

/// What sends: the address guard for webhooks, the mail relay for email.
#[derive(Clone)]
pub struct Sender {
    pub policy: FetchPolicy,
    pub mailer: Arc<dyn Mailer>,
    /// The first retry's wait; each later one is three times longer.
    pub retry_base_us: Micros,
}

/// How one attempt went.
struct Attempt {
    status: Option<i32>,
    error: Option<String>,
}

/// Claims the due deliveries (with their channels) and moves them a claim on.
fn claim_due(conn: &mut DbConn, now: Micros) -> Result<Vec<(Delivery, Channel)>> {
    write_tx(conn, |c| {
        let query = || {
            alert_deliveries::table
                .filter(alert_deliveries::next_attempt_at.le(now))
                .order(alert_deliveries::next_attempt_at)
                .limit(PER_PASS)
        };
        let due: Vec<Delivery> = match c {
            DbConn::Pg(pg) => query()
                .select(Delivery::as_select())
                .for_update()
                .skip_locked()
                .load(pg)?,
            DbConn::Sqlite(lite) => query().select(Delivery::as_select()).load(lite)?,
        };
        let mut claimed = Vec::with_capacity(due.len());
        for d in due {
            diesel::update(alert_deliveries::table.find(&d.id))
                .set(alert_deliveries::next_attempt_at.eq(now + CLAIM_US))
                .execute(c)?;
            let channel: Channel = alert_channels::table
                .find(&d.channel_id)
                .select(Channel::as_select())
                .first(c)?;
            claimed.push((d, channel));
        }
        Ok(claimed)
    })
}

/// One delivery pass: returns how many deliveries it attempted.
pub async fn deliver_due(db: &Db, sender: &Sender) -> Result<usize> {
    let claimed = db.run(move |c| claim_due(c, now_us())).await?;
    let n = claimed.len();
    // Side by side: one endpoint that takes its whole timeout does not hold up others.
    let mut sending = tokio::task::JoinSet::new();
    for (i, (d, channel)) in claimed.iter().enumerate() {
        let (sender, d, channel) = (sender.clone(), d.clone(), channel.clone());
        sending.spawn(async move { (i, send(&sender, &d, &channel).await) });
    }
    let mut outcomes: Vec<Option<Attempt>> = (0..n).map(|_| None).collect();
    while let Some(done) = sending.join_next().await {
        if let Ok((i, attempt)) = done {
            outcomes[i] = Some(attempt);
        }
    }
    let outcomes = outcomes.into_iter().map(|a| {
        a.unwrap_or(Attempt {
            status: None,
            error: Some("the sending task failed".into()),
        })
    });
    let base = sender.retry_base_us;
    let records: Vec<(Delivery, Attempt)> =
        claimed.into_iter().map(|(d, _)| d).zip(outcomes).collect();
    db.run(move |c| {
        for (d, attempt) in &records {
            record(c, d, attempt, now_us(), base)?;
        }
        Ok::<_, crate::error::Error>(())
    })
    .await?;
    Ok(n)
}

fn record(
    conn: &mut DbConn,
    d: &Delivery,
    attempt: &Attempt,
    now: Micros,
    base: Micros,
) -> Result<()> {
    let attempts = d.attempts + 1;
    let delivered = attempt.error.is_none();
    let next = if delivered || attempts >= MAX_ATTEMPTS {
        None
    } else {
        Some(now + backoff_us(attempts, base))
    };
    let error = attempt.error.as_ref().map(|e| {
        let e: String = e.chars().take(500).collect();
        if next.is_none() {
            format!("gave up after {attempts} attempts: {e}")
        } else {
            e
        }
    });
    diesel::update(alert_deliveries::table.find(&d.id))
        .set((
            alert_deliveries::attempts.eq(attempts),
            alert_deliveries::next_attempt_at.eq(next),
            alert_deliveries::delivered_at.eq(delivered.then_some(now)),
            alert_deliveries::last_status.eq(attempt.status),
            alert_deliveries::last_error.eq(error),
        ))
        .execute(conn)?;
    if delivered {
        tracing::info!(delivery = %d.id, event = %d.event, channel = %d.channel_id, "alert delivered");
    } else {
        tracing::warn!(delivery = %d.id, attempts, error = ?attempt.error, "alert delivery failed");
    }
    Ok(())
}

async fn send(sender: &Sender, d: &Delivery, channel: &Channel) -> Attempt {
    match channel.kind() {
        Some(ChannelKind::Webhook) => {
            let secret = channel.secret.clone().unwrap_or_default();
            let headers = [
                ("Lastmile-Delivery", d.id.clone()),
                ("Lastmile-Event", d.event.clone()),
                ("Lastmile-Signature", signature(&secret, d.body.as_bytes())),
            ];
            post(sender, &channel.target, &d.body, &headers).await
        }
        Some(ChannelKind::Slack) => post(sender, &channel.target, &d.body, &[]).await,
        Some(ChannelKind::Email) if !sender.mailer.delivers() => Attempt {
            status: None,
            error: Some(
                "this controller has no SMTP relay configured (smtp_url): the mail was not sent"
                    .into(),
            ),
        },
        Some(ChannelKind::Email) => {
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
            let (to, subject, text) = (
                channel.target.clone(),
                body["subject"].as_str().unwrap_or_default().to_owned(),
                body["text"].as_str().unwrap_or_default().to_owned(),
            );
            let mailer = sender.mailer.clone();
            let sent = tokio::task::spawn_blocking(move || mailer.send(&to, &subject, &text)).await;
            match sent {
                Ok(Ok(())) => Attempt {
                    status: None,
                    error: None,
                },
                Ok(Err(e)) => Attempt {
                    status: None,
                    error: Some(format!("mail not accepted: {e}")),
                },
                Err(e) => Attempt {
                    status: None,
                    error: Some(format!("mail task failed: {e}")),
                },
            }
        }
        None => Attempt {
            status: None,
            error: Some(format!("unknown channel kind {:?}", channel.kind)),
        },
    }
}

async fn post(sender: &Sender, url: &str, body: &str, headers: &[(&str, String)]) -> Attempt {
    let client = match sender.policy.guarded_client(url).await {
        Ok(c) => c,
        Err(e) => {
            return Attempt {
                status: None,
                error: Some(e.to_string()),
            }
        }
    };
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(Duration::from_secs(10))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => Attempt {
            status: Some(i32::from(answer.status().as_u16())),
            error: None,
        },
        Ok(answer) => Attempt {
            status: Some(i32::from(answer.status().as_u16())),
            error: Some(format!("the endpoint answered {}", answer.status())),
        },
        Err(e) => Attempt {
            status: None,
            error: Some(crate::sites::error_chain(&e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_three_times_longer_each_time_up_to_an_hour() {
        let base = 10_000_000;
        assert_eq!(backoff_us(1, base), 10_000_000);
        assert_eq!(backoff_us(2, base), 30_000_000);
        assert_eq!(backoff_us(3, base), 90_000_000);
        assert_eq!(backoff_us(7, base), MAX_BACKOFF_US);
        assert_eq!(backoff_us(40, base), MAX_BACKOFF_US);
    }

    #[tokio::test]
    async fn a_webhook_to_a_private_address_is_refused_by_the_site_guard() {
        let guard = FetchPolicy::new(None, false, &[]);
        let err = guard
            .guarded_client("http://127.0.0.1:9/hook")
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("127.0.0.1 is 127.0.0.1, which is not a public address"),
            "{err}"
        );
        let sender = Sender {
            policy: guard,
            mailer: Arc::new(crate::isp::MemoryMailer::default()),
            retry_base_us: 1,
        };
        let attempt = post(&sender, "http://10.1.2.3/hook", "{}", &[]).await;
        assert!(attempt
            .error
            .unwrap_or_default()
            .contains("not a public address"));
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
