//! Paying volunteers through Stripe Connect: each volunteer's Express account
//! (onboarding), and payouts of their earnings as Stripe Transfers.
//!
//! A payout's life, each step one database transaction:
//!
//! 1. **start**: a `payouts` row with its own id (status `in_transit`) and the ledger's
//!    `payout_started` (earnings -> payouts in transit), written together. The
//!    volunteer's earnings account is locked while the amount is decided, so two
//!    passes cannot both pay out the same earnings.
//! 2. **send**: `POST /v1/transfers` with `Idempotency-Key: payout-<payout id>`.
//! 3. **settle**: the transfer's id with `payout_completed` (status `completed`); or,
//!    when Stripe refused, `payout_failed` (earnings restored, reason kept, status
//!    `failed`). A payout completes or fails once (the two share one ledger key).
//!
//! **Architecture Invariant:** a payout whose transfer had no certain answer (a
//! timeout, a dropped connection, a 5xx) stays `in_transit`, and every later pass sends
//! it again with the same idempotency key until Stripe answers; Stripe replays the
//! first answer, so one payout is at most one transfer. A volunteer with a payout in
//! transit gets no new payout until it settles.
//!
//! `transfer.reversed` (the money came back from the volunteer's account) posts
//! `payout_reversed`: earnings restored, status `reversed`. `account.updated` records
//! whether an account can receive payouts.

use diesel::prelude::*;
use lastmile_billing::ledger::{self, Account};
use lastmile_billing::{movements, pricing, Currency, Money};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::{now_us, to_datetime};
use crate::error::{Error, Result};
use crate::stripe_api::{stripe_of, EventOutcome, StripeApi, StripeConfig, StripeFailure};
pub use lastmile_storage::payouts::Payout;
use lastmile_storage::schema::{payouts, stripe_accounts, volunteers};
pub use lastmile_storage::stripe_accounts::ConnectAccount;
use lastmile_storage::{write_tx, Db, DbConn};

/// Payout statuses, as stored and served.
pub mod status {
    pub const IN_TRANSIT: &str = "in_transit";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const REVERSED: &str = "reversed";
}

/// The payout's amount as money.
fn amount_of(payout: &Payout) -> Result<Money> {
    let currency: Currency = payout
        .currency
        .parse()
        .map_err(|_| Error::Internal(format!("payout {} has a bad currency", payout.id)))?;
    Ok(Money::new(payout.amount_minor, currency))
}

/// A payout as the volunteer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PayoutView {
    pub id: String,
    /// Integer minor units.
    pub amount_minor: i64,
    pub currency: String,
    /// `in_transit`, `completed`, `failed` or `reversed`.
    pub status: String,
    /// Stripe's transfer id, once known.
    pub transfer_id: Option<String>,
    /// Why it failed (or, while in transit, why the last attempt got no answer).
    pub failure_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Payout> for PayoutView {
    fn from(p: &Payout) -> PayoutView {
        PayoutView {
            id: p.id.clone(),
            amount_minor: p.amount_minor,
            currency: p.currency.clone(),
            status: p.status.clone(),
            transfer_id: p.transfer_id.clone(),
            failure_reason: p.failure_reason.clone(),
            created_at: to_datetime(p.created_at).to_rfc3339(),
            updated_at: to_datetime(p.updated_at).to_rfc3339(),
        }
    }
}

/// The volunteer's payouts, newest first.
pub fn list(conn: &mut DbConn, volunteer_id: &str) -> Result<Vec<PayoutView>> {
    let rows: Vec<Payout> = payouts::table
        .filter(payouts::volunteer_id.eq(volunteer_id))
        .order((payouts::created_at.desc(), payouts::id))
        .select(Payout::as_select())
        .load(conn)?;
    Ok(rows.iter().map(PayoutView::from).collect())
}

/// The volunteer's Connect account, if they have one.
pub fn account_of(conn: &mut DbConn, volunteer_id: &str) -> Result<Option<ConnectAccount>> {
    Ok(stripe_accounts::table
        .find(volunteer_id)
        .select(ConnectAccount::as_select())
        .first(conn)
        .optional()?)
}

/// Where onboarding stands, and the link that continues it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OnboardingView {
    /// The Connect account (`acct_...`).
    pub account_id: String,
    /// Whether payouts can be made to it now.
    pub payouts_enabled: bool,
    /// Stripe's onboarding page (a one-time link); absent once payouts are enabled.
    pub url: Option<String>,
}

/// Creates the volunteer's Connect Express account the first time (once: the Stripe
/// call carries `account-<volunteer id>` as its idempotency key and the row is unique
/// per volunteer), refreshes whether payouts are enabled, and returns an onboarding
/// link while they are not. Stripe sends the volunteer back to the dashboard's agents
/// page under `return_base` ([`crate::payments::return_base`]).
pub async fn onboard(
    db: &Db,
    stripe: Option<&StripeApi>,
    volunteer_id: &str,
    return_base: &str,
) -> Result<OnboardingView> {
    let stripe = stripe_of(stripe)?;
    let id = volunteer_id.to_owned();
    let existing = db.run(move |c| account_of(c, &id)).await?;
    let mut account = match existing {
        Some(a) => a,
        None => {
            let account_id = stripe
                .create_express_account(volunteer_id, &format!("account-{volunteer_id}"))
                .await?;
            let id = volunteer_id.to_owned();
            db.run(move |c| store_account(c, &id, &account_id)).await?
        }
    };
    if !account.payouts_enabled {
        // Back from onboarding before the account.updated event arrived?
        let enabled = stripe.payouts_enabled(&account.account_id).await?;
        if enabled {
            let acct = account.account_id.clone();
            db.run(move |c| set_payouts_enabled(c, &acct, true)).await?;
            account.payouts_enabled = true;
        }
    }
    let url = if account.payouts_enabled {
        None
    } else {
        let base = return_base;
        Some(
            stripe
                .create_account_link(
                    &account.account_id,
                    &format!("{base}/app/agents?onboarding=refresh"),
                    &format!("{base}/app/agents?onboarding=done"),
                    &format!("link-{}", uuid::Uuid::new_v4()),
                )
                .await?,
        )
    };
    Ok(OnboardingView {
        account_id: account.account_id,
        payouts_enabled: account.payouts_enabled,
        url,
    })
}

/// Stores the account unless the volunteer already has one (a concurrent onboarding
/// got there first: theirs is kept, and Stripe's idempotency made it the same one).
fn store_account(
    conn: &mut DbConn,
    volunteer_id: &str,
    account_id: &str,
) -> Result<ConnectAccount> {
    write_tx(conn, |c| {
        if let Some(existing) = account_of(c, volunteer_id)? {
            return Ok(existing);
        }
        let known: i64 = volunteers::table
            .filter(volunteers::id.eq(volunteer_id))
            .count()
            .get_result(c)?;
        if known == 0 {
            return Err(Error::NotFound {
                what: "volunteer",
                code: "volunteer_not_found",
            });
        }
        let now = now_us();
        let row = ConnectAccount {
            volunteer_id: volunteer_id.to_owned(),
            account_id: account_id.to_owned(),
            payouts_enabled: false,
            created_at: now,
            updated_at: now,
        };
        diesel::insert_into(stripe_accounts::table)
            .values(&row)
            .execute(c)?;
        Ok(row)
    })
}

fn set_payouts_enabled(conn: &mut DbConn, account_id: &str, enabled: bool) -> Result<usize> {
    Ok(diesel::update(stripe_accounts::table)
        .filter(stripe_accounts::account_id.eq(account_id))
        .set((
            stripe_accounts::payouts_enabled.eq(enabled),
            stripe_accounts::updated_at.eq(now_us()),
        ))
        .execute(conn)?)
}

/// `account.updated`: records whether the account can receive payouts.
pub fn account_updated(conn: &mut DbConn, account: &Value) -> Result<EventOutcome> {
    let Some(id) = account["id"].as_str() else {
        return Ok(EventOutcome::Ignored);
    };
    let enabled = account["payouts_enabled"].as_bool().unwrap_or(false);
    Ok(match set_payouts_enabled(conn, id, enabled)? {
        0 => EventOutcome::Ignored,
        _ => EventOutcome::Applied,
    })
}

/// `transfer.reversed`: the payout's money came back; the volunteer's earnings are
/// restored. A reversal that arrives while we still wait for the transfer's answer
/// first completes the payout (the transfer evidently happened), then reverses it.
/// Partial reversals are logged and left to an operator.
pub fn transfer_reversed(conn: &mut DbConn, transfer: &Value) -> Result<EventOutcome> {
    let Some(transfer_id) = transfer["id"].as_str() else {
        return Ok(EventOutcome::Ignored);
    };
    let by_transfer: Option<Payout> = payouts::table
        .filter(payouts::transfer_id.eq(transfer_id))
        .select(Payout::as_select())
        .first(conn)
        .optional()?;
    let payout = match (by_transfer, transfer["metadata"]["payout_id"].as_str()) {
        (Some(p), _) => Some(p),
        (None, Some(payout_id)) => payouts::table
            .find(payout_id)
            .select(Payout::as_select())
            .first(conn)
            .optional()?,
        (None, None) => None,
    };
    let Some(payout) = payout else {
        tracing::warn!(
            transfer = transfer_id,
            "reversal of a transfer that is no payout of ours"
        );
        return Ok(EventOutcome::Ignored);
    };
    if transfer["reversed"] != true {
        tracing::warn!(payout = %payout.id, transfer = transfer_id,
            "partial transfer reversal; not posted, an operator must settle it");
        return Ok(EventOutcome::Ignored);
    }
    let amount = amount_of(&payout)?;
    match payout.status.as_str() {
        status::IN_TRANSIT => {
            complete(conn, &payout, transfer_id)?;
        }
        status::COMPLETED => {}
        status::REVERSED => return Ok(EventOutcome::AlreadyProcessed),
        _ => {
            tracing::warn!(payout = %payout.id, status = %payout.status,
                "reversal of a payout that never completed; ignored");
            return Ok(EventOutcome::Ignored);
        }
    }
    ledger::post(
        conn,
        &movements::payout_reversed(&payout.volunteer_id, amount, &payout.id),
    )?;
    diesel::update(payouts::table.find(&payout.id))
        .set((
            payouts::status.eq(status::REVERSED),
            payouts::updated_at.eq(now_us()),
        ))
        .execute(conn)?;
    Ok(EventOutcome::Applied)
}

/// What a payout pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PassSummary {
    /// Payouts started in this pass.
    pub started: u32,
    /// Payouts whose transfer Stripe confirmed in this pass.
    pub completed: u32,
    /// Payouts Stripe refused in this pass (earnings restored).
    pub failed: u32,
    /// Payouts still waiting for a certain answer (retried next pass).
    pub in_transit: u32,
    /// Enabled volunteers whose earnings are below the threshold.
    pub below_threshold: u32,
    /// The amount completed, in minor units of the price currency.
    pub paid_minor: i64,
}

/// One payout pass: first every payout still in transit is sent again (same key),
/// then each volunteer whose account can receive payouts and whose earnings reach
/// `threshold` gets a new payout of all of them.
pub async fn run_pass(db: &Db, stripe: &StripeApi, threshold: Money) -> Result<PassSummary> {
    let mut summary = PassSummary::default();
    let pending: Vec<Payout> = db
        .run(|c| {
            payouts::table
                .filter(payouts::status.eq(status::IN_TRANSIT))
                .order(payouts::created_at)
                .select(Payout::as_select())
                .load(c)
                .map_err(Error::from)
        })
        .await?;
    for payout in pending {
        send(db, stripe, payout, &mut summary).await?;
    }
    let enabled: Vec<ConnectAccount> = db
        .run(|c| {
            stripe_accounts::table
                .filter(stripe_accounts::payouts_enabled.eq(true))
                .order(stripe_accounts::volunteer_id)
                .select(ConnectAccount::as_select())
                .load(c)
                .map_err(Error::from)
        })
        .await?;
    for account in enabled {
        let started = db.run(move |c| start(c, &account, threshold)).await?;
        match started {
            Some(payout) => {
                summary.started += 1;
                send(db, stripe, payout, &mut summary).await?;
            }
            None => summary.below_threshold += 1,
        }
    }
    Ok(summary)
}

/// Starts a payout of all the volunteer's earnings if they reach `threshold` and no
/// payout of theirs is in transit.
pub fn start(
    conn: &mut DbConn,
    account: &ConnectAccount,
    threshold: Money,
) -> Result<Option<Payout>> {
    write_tx(conn, |c| {
        let earnings = Account::volunteer_earnings(&account.volunteer_id, threshold.currency);
        // Locked until commit: a concurrent pass waits here and then sees 0.
        let balance = ledger::lock_balance(c, &earnings)?;
        let open: i64 = payouts::table
            .filter(payouts::volunteer_id.eq(&account.volunteer_id))
            .filter(payouts::status.eq(status::IN_TRANSIT))
            .count()
            .get_result(c)?;
        if open > 0 || balance.minor < threshold.minor.max(1) {
            return Ok(None);
        }
        let now = now_us();
        let payout = Payout {
            id: uuid::Uuid::new_v4().to_string(),
            volunteer_id: account.volunteer_id.clone(),
            account_id: account.account_id.clone(),
            amount_minor: balance.minor,
            currency: balance.currency.to_string(),
            status: status::IN_TRANSIT.to_owned(),
            transfer_id: None,
            failure_reason: None,
            attempts: 0,
            created_at: now,
            updated_at: now,
        };
        diesel::insert_into(payouts::table)
            .values(&payout)
            .execute(c)?;
        ledger::post(
            c,
            &movements::payout_started(&payout.volunteer_id, balance, &payout.id),
        )?;
        Ok(Some(payout))
    })
}

/// Sends the payout's transfer (again) and settles it by the answer.
async fn send(
    db: &Db,
    stripe: &StripeApi,
    payout: Payout,
    summary: &mut PassSummary,
) -> Result<()> {
    let amount = amount_of(&payout)?;
    let answer = stripe
        .create_transfer(
            amount,
            &payout.account_id,
            &payout.id,
            &payout.volunteer_id,
            &payout.idempotency_key(),
        )
        .await;
    let outcome = match &answer {
        Ok(_) => "completed",
        Err(StripeFailure::Refused { .. }) => "failed",
        Err(StripeFailure::Uncertain(_)) => "in transit",
    };
    tracing::info!(payout = %payout.id, volunteer = %payout.volunteer_id, %amount, outcome,
        error = ?answer.as_ref().err(), "payout");
    let id = payout.id.clone();
    db.run(move |c| settle(c, &id, answer)).await?;
    match outcome {
        "completed" => {
            summary.completed += 1;
            if amount.currency == pricing::PRICE_CURRENCY {
                summary.paid_minor += amount.minor;
            }
        }
        "failed" => summary.failed += 1,
        _ => summary.in_transit += 1,
    }
    Ok(())
}

/// Records Stripe's answer for a payout in transit. A payout no longer in transit
/// (settled meanwhile by a concurrent pass or a webhook) is left as it is.
pub fn settle(
    conn: &mut DbConn,
    payout_id: &str,
    answer: std::result::Result<String, StripeFailure>,
) -> Result<()> {
    write_tx(conn, |c| {
        let payout: Payout = payouts::table
            .find(payout_id)
            .select(Payout::as_select())
            .first(c)?;
        if payout.status != status::IN_TRANSIT {
            return Ok(());
        }
        match answer {
            Ok(transfer_id) => complete(c, &payout, &transfer_id),
            Err(StripeFailure::Refused { code, message, .. }) => {
                ledger::post(
                    c,
                    &movements::payout_failed(
                        &payout.volunteer_id,
                        amount_of(&payout)?,
                        &payout.id,
                    ),
                )?;
                diesel::update(payouts::table.find(&payout.id))
                    .set((
                        payouts::status.eq(status::FAILED),
                        payouts::failure_reason.eq(format!("{code}: {message}")),
                        payouts::attempts.eq(payout.attempts + 1),
                        payouts::updated_at.eq(now_us()),
                    ))
                    .execute(c)?;
                Ok(())
            }
            Err(StripeFailure::Uncertain(why)) => {
                diesel::update(payouts::table.find(&payout.id))
                    .set((
                        payouts::failure_reason.eq(format!("no answer yet, will retry: {why}")),
                        payouts::attempts.eq(payout.attempts + 1),
                        payouts::updated_at.eq(now_us()),
                    ))
                    .execute(c)?;
                Ok(())
            }
        }
    })
}

/// Marks the payout completed by `transfer_id` and posts `payout_completed`.
fn complete(conn: &mut DbConn, payout: &Payout, transfer_id: &str) -> Result<()> {
    ledger::post(
        conn,
        &movements::payout_completed(&payout.volunteer_id, amount_of(payout)?, &payout.id),
    )?;
    diesel::update(payouts::table.find(&payout.id))
        .set((
            payouts::status.eq(status::COMPLETED),
            payouts::transfer_id.eq(transfer_id),
            payouts::failure_reason.eq(None::<String>),
            payouts::attempts.eq(payout.attempts + 1),
            payouts::updated_at.eq(now_us()),
        ))
        .execute(conn)?;
    Ok(())
}

/// The payout threshold in force.
pub fn threshold(config: &StripeConfig) -> Money {
    Money::new(config.payout_threshold_minor, pricing::PRICE_CURRENCY)
}
