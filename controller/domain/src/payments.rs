//! Owners buying credit with Stripe Checkout, and the webhook events Stripe sends.
//!
//! An owner asks for a Checkout session ([`start_checkout`]); we record it
//! (`stripe_checkouts`) and hand back Stripe's payment page. When the customer has
//! paid, Stripe sends `checkout.session.completed`; [`receive_webhook`] verifies its
//! signature and [`process_event`] credits the owner with `movements::purchase`, keyed
//! by the session id.
//!
//! **Architecture Invariant:** a webhook event takes effect at most once. Its id is
//! written to `stripe_events` in the same database transaction as its ledger effect:
//! if the effect fails the id is not kept and Stripe's retry tries again; if the id is
//! already there the event is acknowledged and nothing happens, however often or
//! concurrently Stripe delivers it. (The ledger's own event keys, `purchase:<session
//! id>`, are a second guard.) Events of types we do not use are acknowledged and
//! ignored; an unsigned, badly signed or stale one is refused with 400 before anything
//! is read from it.
//!
//! The two async functions here call Stripe and then the database through `Db::run`;
//! [`process_event`] is the synchronous core, also used directly by tests.

use diesel::prelude::*;
use lastmile_billing::{ledger, movements, pricing, Currency, Money};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::now_us;
use crate::error::{Error, Result};
use crate::stripe_api::{stripe_of, verify_signature, EventOutcome, StripeApi, StripeConfig};
use lastmile_storage::schema::{owners, stripe_checkouts};
pub use lastmile_storage::stripe_checkouts::CheckoutRow;
use lastmile_storage::{write_tx, Db, DbConn};

/// The smallest purchase, in minor units (5.00): below it card fees eat the credit.
pub const MIN_PURCHASE_MINOR: i64 = 500;
/// The largest single purchase, in minor units (10 000.00).
pub const MAX_PURCHASE_MINOR: i64 = 1_000_000;

/// What an owner wants to buy.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCheckout {
    /// Integer minor units (cents): 2500 is 25.00.
    pub amount_minor: i64,
    /// ISO 4217 code; credit is sold in `usd` (the currency prices are in).
    pub currency: String,
}

/// A Checkout session to send the owner to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutView {
    /// Stripe's id of the session (`cs_...`).
    pub session_id: String,
    /// Stripe's payment page for it.
    pub url: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// The amount asked for, if it can be sold.
pub fn purchase_amount(req: &NewCheckout) -> Result<Money> {
    let currency: Currency =
        req.currency
            .parse()
            .map_err(|e: lastmile_billing::money::BadCurrency| {
                Error::invalid("invalid_currency", e.to_string())
            })?;
    if !pricing::is_priced(currency) {
        return Err(Error::invalid(
            "unsupported_currency",
            format!(
                "credit is sold in {} (the currencies prices are in), not {currency}",
                pricing::priced_currencies()
            ),
        ));
    }
    if !(MIN_PURCHASE_MINOR..=MAX_PURCHASE_MINOR).contains(&req.amount_minor) {
        return Err(Error::invalid(
            "invalid_amount",
            format!(
                "amount_minor must be whole cents from {MIN_PURCHASE_MINOR} ({}) to \
                 {MAX_PURCHASE_MINOR} ({}), not {}",
                Money::new(MIN_PURCHASE_MINOR, currency),
                Money::new(MAX_PURCHASE_MINOR, currency),
                req.amount_minor
            ),
        ));
    }
    Ok(Money::new(req.amount_minor, currency))
}

/// Where Stripe sends the browser back to: the configured public URL, or else the
/// address the request came to (`scheme://host` of a controller reached directly, as
/// in the demo and tests, where the listen address has an ephemeral port).
pub fn return_base(config: &StripeConfig, request_origin: &str) -> String {
    match &config.public_url {
        Some(u) if !u.is_empty() => u.trim_end_matches('/').to_owned(),
        _ => request_origin.trim_end_matches('/').to_owned(),
    }
}

/// Opens a Checkout session in which the owner pays for `req` of credit. Stripe sends
/// the owner back to the dashboard's checks page under `return_base` (see
/// [`return_base`]); the page only says the credit is coming, the webhook credits it.
pub async fn start_checkout(
    db: &Db,
    stripe: Option<&StripeApi>,
    owner_id: &str,
    req: &NewCheckout,
    return_base: &str,
) -> Result<CheckoutView> {
    let amount = purchase_amount(req)?;
    let stripe = stripe_of(stripe)?;
    let base = return_base;
    let session = stripe
        .create_checkout_session(
            owner_id,
            amount,
            &format!("{base}/app/checks?checkout=paid"),
            &format!("{base}/app/checks?checkout=cancelled"),
            &format!("checkout-{}", uuid::Uuid::new_v4()),
        )
        .await?;
    let row = CheckoutRow {
        id: session.id.clone(),
        owner_id: owner_id.to_owned(),
        amount_minor: amount.minor,
        currency: amount.currency.to_string(),
        created_at: now_us(),
        completed_at: None,
    };
    db.run(move |c| {
        diesel::insert_into(stripe_checkouts::table)
            .values(&row)
            .execute(c)
            .map_err(Error::from)
    })
    .await?;
    Ok(CheckoutView {
        session_id: session.id,
        url: session.url,
        amount_minor: amount.minor,
        currency: amount.currency.to_string(),
    })
}

/// A Stripe event as delivered to the webhook (the fields we read).
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

/// The object an event is about.
#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// The webhook's answer to Stripe.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookAck {
    pub received: bool,
    pub event_id: String,
    pub outcome: EventOutcome,
}

/// Verifies and processes one webhook delivery.
pub async fn receive_webhook(
    db: &Db,
    stripe: &StripeConfig,
    signature: Option<&str>,
    payload: &[u8],
) -> Result<WebhookAck> {
    let secret = stripe
        .webhook_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Upstream {
            code: "stripe_not_configured",
            message: "webhooks are not set up on this controller (no signing secret; set \
                      LASTMILE_STRIPE_WEBHOOK_SECRET)"
                .into(),
        })?;
    let now_s = now_us() / 1_000_000;
    verify_signature(
        signature,
        payload,
        secret,
        now_s,
        stripe.webhook_tolerance_s,
    )
    .map_err(|e| Error::BadRequest {
        code: "bad_signature",
        message: e.to_string(),
    })?;
    let event: Event = serde_json::from_slice(payload).map_err(|e| Error::BadRequest {
        code: "bad_event",
        message: format!("the body is not a Stripe event: {e}"),
    })?;
    let id = event.id.clone();
    let outcome = db.run(move |c| process_event(c, &event)).await?;
    tracing::info!(event = %id, ?outcome, "Stripe event");
    Ok(WebhookAck {
        received: true,
        event_id: id,
        outcome,
    })
}

/// Records `event` as processed and applies it, in one write transaction.
pub fn process_event(conn: &mut DbConn, event: &Event) -> Result<EventOutcome> {
    write_tx(conn, |c| {
        if !record_event(c, event)? {
            return Ok(EventOutcome::AlreadyProcessed);
        }
        let object = &event.data.object;
        match event.kind.as_str() {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                credit_purchase(c, object)
            }
            "account.updated" => crate::payouts::account_updated(c, object),
            "transfer.reversed" => crate::payouts::transfer_reversed(c, object),
            _ => Ok(EventOutcome::Ignored),
        }
    })
}

/// Writes the event's id; false if it was there already. On PostgreSQL a concurrent
/// delivery of the same event waits on the primary key until the first commits.
fn record_event(conn: &mut DbConn, event: &Event) -> Result<bool> {
    use diesel::sql_types::{BigInt, Text};
    let inserted = diesel::sql_query(
        "INSERT INTO stripe_events (id, event_type, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(&event.id)
    .bind::<Text, _>(&event.kind)
    .bind::<BigInt, _>(now_us())
    .execute(conn)?;
    Ok(inserted == 1)
}

/// Credits the owner for a paid Checkout session.
fn credit_purchase(conn: &mut DbConn, session: &Value) -> Result<EventOutcome> {
    let Some(session_id) = session["id"].as_str() else {
        return Err(Error::BadRequest {
            code: "bad_event",
            message: "checkout.session event without a session id".into(),
        });
    };
    if session["payment_status"] != "paid" {
        // Delayed payment methods: checkout.session.async_payment_succeeded follows.
        return Ok(EventOutcome::Ignored);
    }
    let recorded: Option<CheckoutRow> = stripe_checkouts::table
        .find(session_id)
        .select(CheckoutRow::as_select())
        .first(conn)
        .optional()?;
    // Our record names the owner; the signed event says what was paid.
    let owner_id = match &recorded {
        Some(r) => r.owner_id.clone(),
        None => session["client_reference_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    let owner_known: i64 = owners::table
        .filter(owners::id.eq(&owner_id))
        .count()
        .get_result(conn)?;
    let amount = session["amount_total"].as_i64().unwrap_or(0);
    let currency: Option<Currency> = session["currency"].as_str().and_then(|c| c.parse().ok());
    let (Some(currency), true, true) = (currency, amount > 0, owner_known == 1) else {
        tracing::warn!(session = session_id, owner = %owner_id, amount,
            "paid Checkout session that names no owner of ours or no amount; not credited");
        return Ok(EventOutcome::Ignored);
    };
    if !pricing::is_priced(currency) {
        // Credit nothing could ever spend. Refused, not acknowledged: the transaction
        // (and so the event id) is rolled back, Stripe keeps retrying and shows the
        // failing deliveries, and the log says so each time, until someone refunds the
        // customer or adds the currency (when a retry credits it).
        tracing::error!(session = session_id, owner = %owner_id, amount, %currency,
            "paid Checkout session in a currency no price exists in; not credited: refund it");
        return Err(Error::invalid(
            "unsupported_currency",
            format!(
                "checkout session {session_id} was paid in {currency}, but credit exists only \
                 in {} (the currencies prices are in); nothing was credited",
                pricing::priced_currencies()
            ),
        ));
    }
    if let Some(r) = &recorded {
        if r.amount_minor != amount || r.currency != currency.as_str() {
            tracing::warn!(
                session = session_id,
                asked = r.amount_minor,
                paid = amount,
                "Checkout session paid a different amount than was asked; crediting what was paid"
            );
        }
    }
    let posted = ledger::post(
        conn,
        &movements::purchase(&owner_id, Money::new(amount, currency), session_id),
    )?;
    diesel::update(stripe_checkouts::table.find(session_id))
        .set(stripe_checkouts::completed_at.eq(now_us()))
        .execute(conn)?;
    Ok(if posted.duplicate {
        EventOutcome::AlreadyProcessed
    } else {
        EventOutcome::Applied
    })
}
