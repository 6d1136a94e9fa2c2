//! Talking to Stripe: the API calls Lastmile makes (through the `async-stripe` client,
//! pointed at `stripe.api_base` when set) and the verification of the webhooks Stripe
//! sends. Nothing here touches the database; `payments` and `payouts` decide what the
//! answers mean for the ledger.
//!
//! **Architecture Invariant:** every call that creates something at Stripe carries an
//! `Idempotency-Key` chosen by the caller, so that a retry after a lost answer cannot
//! create it twice. A payout's transfer uses `payout-<payout id>` on every attempt.
//!
//! Failures are sorted by what they mean for money ([`StripeFailure`]): Stripe
//! *refused* (a 4xx error object: nothing happened, safe to give up), or the outcome
//! is *uncertain* (a timeout, a broken connection, a 5xx, 409 or 429: the request may
//! have been applied, so the only safe move is to retry with the same key).

use std::time::Duration;

use hmac::{Hmac, Mac};
use lastmile_billing::Money;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionLineItemsPriceData,
    ProductData,
};
use stripe_checkout::CheckoutSessionMode;
use stripe_connect::account::{
    CreateAccount, CreateAccountCapabilities, CreateAccountCapabilitiesTransfers,
    CreateAccountType, RetrieveAccount,
};
use stripe_connect::account_link::{CreateAccountLink, CreateAccountLinkType};
use stripe_connect::transfer::CreateTransfer;
use utoipa::ToSchema;

use crate::error::Error;

/// Stripe settings (TOML table `[stripe]`, or `LASTMILE_STRIPE_*`). Without a secret
/// key the controller runs without Stripe: owners get credit only by operator grant
/// and no payout is made.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// The platform's secret API key (`sk_live_...` / `sk_test_...`).
    pub secret_key: Option<String>,
    /// The webhook endpoint's signing secret (`whsec_...`).
    pub webhook_secret: Option<String>,
    /// Stripe's API base URL; unset means Stripe itself. Tests and the demo point it
    /// at `lastmile_testbed::stripe::FakeStripe`.
    pub api_base: Option<String>,
    /// A volunteer is paid out once their earnings reach this many minor units (usd).
    pub payout_threshold_minor: i64,
    /// How often the server runs a payout pass, seconds; 0 turns it off (then
    /// `lastmile-controller payouts run` does it).
    pub payout_interval_s: u64,
    /// How long one Stripe request may take before it counts as failed, milliseconds.
    /// A transfer that timed out stays in transit and is retried with the same
    /// idempotency key.
    pub timeout_ms: u64,
    /// The controller's public URL, for the pages Stripe sends people back to after
    /// paying or onboarding; unset means `http://<listen>`.
    pub public_url: Option<String>,
    /// Largest age of a webhook's signed timestamp, seconds.
    pub webhook_tolerance_s: i64,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            secret_key: None,
            webhook_secret: None,
            api_base: None,
            payout_threshold_minor: 1_000,
            payout_interval_s: 3_600,
            timeout_ms: 30_000,
            public_url: None,
            webhook_tolerance_s: 300,
        }
    }
}

impl std::fmt::Debug for StripeConfig {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("StripeConfig")
            .field("secret_key", &hidden(&self.secret_key))
            .field("webhook_secret", &hidden(&self.webhook_secret))
            .field("api_base", &self.api_base)
            .field("payout_threshold_minor", &self.payout_threshold_minor)
            .field("payout_interval_s", &self.payout_interval_s)
            .field("timeout_ms", &self.timeout_ms)
            .field("public_url", &self.public_url)
            .field("webhook_tolerance_s", &self.webhook_tolerance_s)
            .finish()
    }
}

/// The Stripe client, or a 503 saying Stripe is not set up here.
pub fn stripe_of(stripe: Option<&StripeApi>) -> Result<&StripeApi, Error> {
    stripe.ok_or_else(|| Error::Upstream {
        code: "stripe_not_configured",
        message: "payments are not set up on this controller (no Stripe secret key; set \
                  LASTMILE_STRIPE_SECRET_KEY)"
            .into(),
    })
}

/// What processing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// It changed something (credit, an account, a payout).
    Applied,
    /// It had been processed before; nothing changed.
    AlreadyProcessed,
    /// Not a type we act on, or nothing to do for it; acknowledged.
    Ignored,
}

/// Why a Stripe call did not give an answer we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeFailure {
    /// Stripe answered with an error: the request was not applied.
    #[error("Stripe refused the request ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer: the request may or may not have been applied.
    #[error("Stripe's answer is unknown: {0}")]
    Uncertain(String),
}

impl From<StripeFailure> for Error {
    fn from(f: StripeFailure) -> Error {
        Error::Upstream {
            code: "stripe_failed",
            message: format!("the payment provider did not complete the request: {f}"),
        }
    }
}

fn classify(e: StripeError) -> StripeFailure {
    match e {
        StripeError::Stripe(err, status) => {
            let kind = err.type_.as_str().to_owned();
            let code = err
                .code
                .as_ref()
                .map_or_else(|| kind.clone(), |c| c.as_str().to_owned());
            let message = err.message.clone().unwrap_or_default();
            // 409 (a concurrent request with the same key), 429 and 5xx are
            // transient at Stripe; an idempotency error means our parameters changed
            // under one key, which must not be read as "nothing happened".
            if status == 409 || status == 429 || status >= 500 || kind == "idempotency_error" {
                StripeFailure::Uncertain(format!("{status} {code}: {message}"))
            } else {
                StripeFailure::Refused {
                    status,
                    code,
                    message,
                }
            }
        }
        // Nothing was sent.
        StripeError::ConfigError(m) => StripeFailure::Refused {
            status: 0,
            code: "config_error".into(),
            message: m,
        },
        StripeError::Timeout => StripeFailure::Uncertain("timed out".into()),
        StripeError::ClientError(m) => StripeFailure::Uncertain(m),
        StripeError::JSONDeserialize(m) => {
            StripeFailure::Uncertain(format!("unreadable answer: {m}"))
        }
    }
}

/// Metadata pairs in the form the request builders take.
fn metadata_of(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn key(k: &str) -> Result<RequestStrategy, StripeFailure> {
    IdempotencyKey::new(k)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| StripeFailure::Refused {
            status: 0,
            code: "bad_idempotency_key".into(),
            message: e.to_string(),
        })
}

/// A Checkout session Stripe created.
#[derive(Debug, Clone)]
pub struct CheckoutSession {
    pub id: String,
    /// Where to send the owner to pay.
    pub url: String,
}

/// The Stripe API as Lastmile uses it.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
}

impl StripeApi {
    /// The client for `config`, or `None` when no secret key is configured.
    pub fn from_config(config: &StripeConfig) -> Result<Option<StripeApi>, Error> {
        let Some(secret) = config.secret_key.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let mut builder = ClientBuilder::new(secret)
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .app_info("lastmile", Some(env!("CARGO_PKG_VERSION").into()), None);
        if let Some(base) = config.api_base.as_deref().filter(|s| !s.is_empty()) {
            // The client appends "v1/..." to the base.
            let base = if base.ends_with('/') {
                base.to_owned()
            } else {
                format!("{base}/")
            };
            builder = builder.url(base);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Internal(format!("cannot configure the Stripe client: {e}")))?;
        Ok(Some(StripeApi { client }))
    }

    /// Sends a request that creates something, with an idempotency key: Stripe answers
    /// a retry with the same key with the first answer, so a retried payout or checkout
    /// never happens twice.
    async fn create_once<R>(
        &self,
        request: R,
        idempotency_key: &str,
    ) -> Result<R::Output, StripeFailure>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        request
            .customize()
            .request_strategy(key(idempotency_key)?)
            .send(&self.client)
            .await
            .map_err(classify)
    }

    /// A Checkout session in which the owner pays `amount` for credit.
    pub async fn create_checkout_session(
        &self,
        owner_id: &str,
        amount: Money,
        success_url: &str,
        cancel_url: &str,
        idempotency_key: &str,
    ) -> Result<CheckoutSession, StripeFailure> {
        let currency = stripe_currency(amount)?;
        let mut price = CreateCheckoutSessionLineItemsPriceData::new(currency);
        price.unit_amount = Some(amount.minor);
        price.product_data = Some(ProductData::new("Lastmile measurement credit"));
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price_data = Some(price);
        item.quantity = Some(1);
        let metadata = [("owner_id", owner_id)];
        let session = self
            .create_once(
                CreateCheckoutSession::new()
                    .mode(CheckoutSessionMode::Payment)
                    .line_items(vec![item])
                    .client_reference_id(owner_id)
                    .metadata(metadata_of(&metadata))
                    .success_url(success_url)
                    .cancel_url(cancel_url),
                idempotency_key,
            )
            .await?;
        Ok(CheckoutSession {
            id: session.id.to_string(),
            url: session.url.unwrap_or_default(),
        })
    }

    /// A Connect Express account for a volunteer, able to receive transfers.
    pub async fn create_express_account(
        &self,
        volunteer_id: &str,
        idempotency_key: &str,
    ) -> Result<String, StripeFailure> {
        let mut capabilities = CreateAccountCapabilities::new();
        let mut transfers = CreateAccountCapabilitiesTransfers::new();
        transfers.requested = Some(true);
        capabilities.transfers = Some(transfers);
        let metadata = [("volunteer_id", volunteer_id)];
        let account = self
            .create_once(
                CreateAccount::new()
                    .type_(CreateAccountType::Express)
                    .capabilities(capabilities)
                    .metadata(metadata_of(&metadata)),
                idempotency_key,
            )
            .await?;
        Ok(account.id.to_string())
    }

    /// Whether the account may receive payouts now.
    pub async fn payouts_enabled(&self, account_id: &str) -> Result<bool, StripeFailure> {
        let account = RetrieveAccount::new(account_id)
            .send(&self.client)
            .await
            .map_err(classify)?;
        Ok(account.payouts_enabled.unwrap_or(false))
    }

    /// A one-time onboarding link for the account.
    pub async fn create_account_link(
        &self,
        account_id: &str,
        refresh_url: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<String, StripeFailure> {
        let link = self
            .create_once(
                CreateAccountLink::new(account_id, CreateAccountLinkType::AccountOnboarding)
                    .refresh_url(refresh_url)
                    .return_url(return_url),
                idempotency_key,
            )
            .await?;
        Ok(link.url)
    }

    /// Transfers `amount` to the connected account; returns the transfer's id.
    pub async fn create_transfer(
        &self,
        amount: Money,
        destination: &str,
        payout_id: &str,
        volunteer_id: &str,
        idempotency_key: &str,
    ) -> Result<String, StripeFailure> {
        let currency = stripe_currency(amount)?;
        let metadata = [("payout_id", payout_id), ("volunteer_id", volunteer_id)];
        let transfer = self
            .create_once(
                CreateTransfer::new(currency, destination)
                    .amount(amount.minor)
                    .transfer_group(format!("payout-{payout_id}"))
                    .metadata(metadata_of(&metadata)),
                idempotency_key,
            )
            .await?;
        Ok(transfer.id.to_string())
    }
}

/// Why a webhook's `Stripe-Signature` does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    Missing,
    #[error("Stripe-Signature header has no timestamp (t=...)")]
    NoTimestamp,
    #[error("Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("Stripe-Signature timestamp is {age_s} s from now, more than the {tolerance_s} s allowed (a replayed or delayed event?)")]
    Stale { age_s: i64, tolerance_s: i64 },
    #[error("no v1 signature in Stripe-Signature matches the payload and the signing secret")]
    Mismatch,
}

/// Verifies a webhook as Stripe signs it: `header` is `t=<unix>,v1=<hex>[,v1=...]`
/// (other schemes ignored); one `v1` must equal HMAC-SHA256(secret, "<t>.<payload>"),
/// compared in constant time, and `t` must be within `tolerance_s` of `now` (either
/// way, against replays and clock skew).
pub fn verify_signature(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => timestamp = v.parse::<i64>().ok(),
            // A v1 entry that is not hex can never match; skip it.
            "v1" => signatures.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let age_s = now.saturating_sub(t);
    if age_s.abs() > tolerance_s {
        return Err(SignatureError::Stale { age_s, tolerance_s });
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time.
    if signatures
        .iter()
        .any(|s| mac.clone().verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `amount`'s currency as Stripe names it; refused without a call when Stripe has no
/// such currency.
fn stripe_currency(amount: Money) -> Result<stripe_types::Currency, StripeFailure> {
    amount
        .currency
        .as_str()
        .parse()
        .map_err(|_| StripeFailure::Refused {
            status: 0,
            code: "currency".into(),
            message: format!("Stripe does not know currency {}", amount.currency),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn signed(secret: &str, t: i64, payload: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{payload}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn a_signature_made_as_stripe_makes_it_verifies() {
        let sig = signed("whsec_x", 1_000, "{}");
        let header = format!("t=1000,v1={sig}");
        assert_eq!(
            verify_signature(Some(&header), b"{}", "whsec_x", 1_100, 300),
            Ok(())
        );
        // Several v1 entries (secret rotation): one matching is enough.
        let header = format!("t=1000,v1={},v1={sig},v0=abc", "00".repeat(32));
        assert_eq!(
            verify_signature(Some(&header), b"{}", "whsec_x", 1_100, 300),
            Ok(())
        );
    }

    #[test]
    fn wrong_stale_or_malformed_signatures_are_refused() {
        let sig = signed("whsec_x", 1_000, "{}");
        let ok = format!("t=1000,v1={sig}");
        assert_eq!(
            verify_signature(Some(&ok), b"{ }", "whsec_x", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(Some(&ok), b"{}", "whsec_y", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(Some(&ok), b"{}", "whsec_x", 1_301, 300),
            Err(SignatureError::Stale {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(
            verify_signature(None, b"{}", "whsec_x", 1_000, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(Some(&format!("v1={sig}")), b"{}", "whsec_x", 1_000, 300),
            Err(SignatureError::NoTimestamp)
        );
        assert_eq!(
            verify_signature(Some("t=1000"), b"{}", "whsec_x", 1_000, 300),
            Err(SignatureError::NoSignature)
        );
    }
}
