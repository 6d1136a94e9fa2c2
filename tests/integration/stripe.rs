//! Money through Stripe, on both backends, against the fake Stripe
//! (`lastmile_testbed::stripe`) reached through the real `async-stripe` client and
//! real signed webhooks: buying credit by Checkout (credited once however often the
//! event is delivered; bad signatures and amounts refused), Connect onboarding, and
//! payouts (threshold, happy path, a transfer whose answer was lost, a refused
//! transfer, a reversal, two passes at once). After each step the trial balance sums
//! to zero and the ledger's audit is clean.

use std::time::Duration;

use lastmile_billing::{ledger, movements, Currency, Money};
use lastmile_controller::config::StripeConfig;
use lastmile_controller::ControllerConfig;
use lastmile_domain::payouts;
use lastmile_testbed::stripe::{signature_header, FakeStripe};
use serde_json::{json, Value};

use crate::per_backend;
use crate::support::usd_balance as balance;
use crate::support::{count, ledger_transactions, TestApp, TestDb};

per_backend!(
    a_paid_checkout_credits_the_owner_once_however_often_stripe_delivers_it,
    webhooks_with_a_missing_wrong_or_stale_signature_are_refused_and_credit_nothing,
    checkout_for_an_invalid_amount_or_currency_is_refused_with_a_clear_4xx,
    a_volunteer_below_the_threshold_or_not_onboarded_is_not_paid_out,
    a_payout_transfers_the_earnings_once_and_the_ledger_shows_it_completed,
    a_transfer_whose_answer_was_lost_is_retried_with_the_same_key_and_moves_money_once,
    a_transfer_stripe_refuses_fails_the_payout_and_restores_the_earnings,
    a_reversed_transfer_restores_the_earnings_once,
    two_payout_passes_at_once_pay_a_volunteer_once,
);

const KEY: &str = "sk_test_lastmile_tests";
const WHSEC: &str = "whsec_lastmile_tests";
/// The payout threshold in these tests: 10.00 usd.
pub(crate) const THRESHOLD: i64 = 1_000;

/// A controller configured with the fake Stripe (also used by the dashboard's money
/// tests).
pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) stripe: FakeStripe,
}

pub(crate) async fn world(db: &TestDb, tweak: impl FnOnce(&mut ControllerConfig)) -> World {
    let stripe = FakeStripe::start(KEY, WHSEC).await.unwrap();
    let base = stripe.url();
    let app = TestApp::start_with(db, |c| {
        c.scheduler_tick_ms = 3_600_000;
        c.stripe = StripeConfig {
            secret_key: Some(KEY.into()),
            webhook_secret: Some(WHSEC.into()),
            api_base: Some(base),
            payout_threshold_minor: THRESHOLD,
            payout_interval_s: 0,
            timeout_ms: 5_000,
            ..StripeConfig::default()
        };
        tweak(c);
    })
    .await;
    stripe.set_webhook_url(&format!("{}/api/v1/stripe/webhook", app.base));
    World { app, stripe }
}

/// The trial balance sums to zero per currency and the audit finds nothing.
fn ledger_is_sound(app: &TestApp) {
    let mut conn = app.db().conn().unwrap();
    let lines = ledger::trial_balance(&mut *conn).unwrap();
    for (currency, sum) in ledger::sums_by_currency(&lines) {
        assert_eq!(sum, 0, "{currency} does not balance: {lines:#?}");
    }
    assert_eq!(ledger::audit(&mut *conn).unwrap(), Vec::<String>::new());
}

async fn checkout(w: &World, owner: &str, amount_minor: i64) -> String {
    let (status, body) = w
        .app
        .ask_checkout(
            Some(owner),
            json!({"amount_minor": amount_minor, "currency": "usd"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["url"].as_str().unwrap().starts_with(&w.stripe.url()),
        "{body}"
    );
    assert_eq!(body["amount_minor"], amount_minor);
    body["session_id"].as_str().unwrap().to_owned()
}

/// Posts a webhook body with the given `Stripe-Signature` header (none if `None`).
async fn post_webhook(app: &TestApp, payload: &str, signature: Option<String>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{}/api/v1/stripe/webhook", app.base))
        .header("content-type", "application/json")
        .body(payload.to_owned());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn a_paid_checkout_credits_the_owner_once_however_often_stripe_delivers_it(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, owner) = w.app.owner_with_credit("buyer", 0);
    let session = checkout(&w, &owner, 2_500).await;
    assert_eq!(balance(&w.app, &owner, "owner_credit").await, 0);

    let first = w.stripe.complete_checkout(&session).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.contains("\"applied\""), "{}", first.body);
    assert_eq!(balance(&w.app, &owner, "owner_credit").await, 2_500);
    ledger_is_sound(&w.app);

    // Stripe retries: twice in a row, then three at once.
    for _ in 0..2 {
        let again = w.stripe.deliver(&first.event_id).await.unwrap();
        assert_eq!(again.status, 200, "{}", again.body);
        assert!(again.body.contains("already_processed"), "{}", again.body);
    }
    let at_once =
        futures_util::future::join_all((0..3).map(|_| w.stripe.deliver(&first.event_id))).await;
    for d in at_once {
        let d = d.unwrap();
        assert_eq!(d.status, 200, "{}", d.body);
    }
    assert_eq!(balance(&w.app, &owner, "owner_credit").await, 2_500);
    assert_eq!(ledger_transactions(&w.app, "purchase"), 1);
    assert_eq!(count(&w.app, "SELECT COUNT(*) AS n FROM stripe_events"), 1);

    // An event type we do not use is acknowledged and changes nothing.
    let other = json!({"id": "evt_other", "object": "event", "type": "customer.created",
                       "data": {"object": {"id": "cus_1", "object": "customer"}}})
    .to_string();
    let (status, body) = post_webhook(
        &w.app,
        &other,
        Some(signature_header(WHSEC, now_s(), &other)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "ignored", "{body}");
    assert_eq!(balance(&w.app, &owner, "owner_credit").await, 2_500);
    ledger_is_sound(&w.app);
}

async fn webhooks_with_a_missing_wrong_or_stale_signature_are_refused_and_credit_nothing(
    db: TestDb,
) {
    let w = world(&db, |_| {}).await;
    let (_, owner) = w.app.owner_with_credit("buyer", 0);
    let session = checkout(&w, &owner, 5_000).await;
    let event = w.stripe.pay_checkout(&session).unwrap();
    let payload = w.stripe.event_payload(&event).unwrap();

    let attempts = [
        ("missing", None, payload.clone()),
        (
            "wrong secret",
            Some(signature_header("whsec_someone_else", now_s(), &payload)),
            payload.clone(),
        ),
        (
            "stale",
            Some(signature_header(WHSEC, now_s() - 600, &payload)),
            payload.clone(),
        ),
        (
            "tampered body",
            Some(signature_header(WHSEC, now_s(), &payload)),
            payload.replace("5000", "500000"),
        ),
        (
            "garbage header",
            Some("v1=zz,t=yesterday".to_owned()),
            payload.clone(),
        ),
    ];
    for (what, signature, body) in attempts {
        let (status, answer) = post_webhook(&w.app, &body, signature).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"], "bad_signature", "{what}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("Stripe-Signature")
                || answer["message"].as_str().unwrap().contains("signature"),
            "{what}: {answer}"
        );
    }
    let (_, stale) = post_webhook(
        &w.app,
        &payload,
        Some(signature_header(WHSEC, now_s() - 600, &payload)),
    )
    .await;
    assert!(
        stale["message"].as_str().unwrap().contains("300 s"),
        "{stale}"
    );
    assert_eq!(balance(&w.app, &owner, "owner_credit").await, 0);
    assert_eq!(count(&w.app, "SELECT COUNT(*) AS n FROM stripe_events"), 0);
    assert_eq!(
        count(&w.app, "SELECT COUNT(*) AS n FROM ledger_transactions"),
        0
    );

    // The genuine delivery still works afterwards.
    let ok = w.stripe.deliver(&event).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(balance(&w.app, &owner, "owner_credit").await, 5_000);
    ledger_is_sound(&w.app);
}

async fn checkout_for_an_invalid_amount_or_currency_is_refused_with_a_clear_4xx(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, owner) = w.app.owner_with_credit("buyer", 0);
    let cases = [
        (
            json!({"amount_minor": 0, "currency": "usd"}),
            "invalid_amount",
        ),
        (
            json!({"amount_minor": -500, "currency": "usd"}),
            "invalid_amount",
        ),
        (
            json!({"amount_minor": 499, "currency": "usd"}),
            "invalid_amount",
        ),
        (
            json!({"amount_minor": 1_000_001, "currency": "usd"}),
            "invalid_amount",
        ),
        (
            json!({"amount_minor": 2_500, "currency": "eur"}),
            "unsupported_currency",
        ),
        (
            json!({"amount_minor": 2_500, "currency": "dollars"}),
            "invalid_currency",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = w.app.ask_checkout(Some(&owner), body.clone()).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["error"], code, "{body} -> {answer}");
    }
    let (status, answer) = w
        .app
        .ask_checkout(
            Some(&owner),
            json!({"amount_minor": 12.5, "currency": "usd"}),
        )
        .await;
    assert!((400..500).contains(&status), "{answer}");
    let (status, _) = w
        .app
        .ask_checkout(None, json!({"amount_minor": 2_500, "currency": "usd"}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(w.stripe.sessions_created(), 0);
    assert_eq!(
        count(&w.app, "SELECT COUNT(*) AS n FROM stripe_checkouts"),
        0
    );

    // A controller without Stripe settings says so instead of failing obscurely.
    let plain = TestApp::start(&db).await;
    let (status, answer) = plain
        .ask_checkout(
            Some(&owner),
            json!({"amount_minor": 2_500, "currency": "usd"}),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "stripe_not_configured", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("LASTMILE_STRIPE_SECRET_KEY"),
        "{answer}"
    );
}

/// A volunteer (id, enrolment key) who has earned `earned_minor` usd cents: an owner
/// paid for results of theirs (price = earnings / 0.8).
fn earning_volunteer(app: &TestApp, name: &str, earned_minor: i64) -> (String, String) {
    let mut conn = app.db().conn().unwrap();
    let (v, key) = lastmile_domain::accounts::create_volunteer(&mut conn, name).unwrap();
    if earned_minor > 0 {
        let (owner, _) = app.owner_with_credit(&format!("customer of {name}"), 0);
        let price = Money::new(earned_minor * 5 / 4, Currency::USD);
        app.credit(&owner, price.minor);
        ledger::with_write_tx(&mut *conn, |c| {
            ledger::post(
                c,
                &movements::pay_result(&owner, &v.id, price, &uuid::Uuid::new_v4().to_string()),
            )
        })
        .unwrap();
    }
    (v.id, key)
}

/// Onboards the volunteer to Connect through the API and the fake's onboarding;
/// returns the account id.
async fn onboard(w: &World, key: &str) -> String {
    let path = "/api/v1/volunteer/stripe/onboarding";
    let (status, first) = w.app.call("POST", path, Some(key), None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["payouts_enabled"], false, "{first}");
    assert!(
        first["url"].as_str().unwrap().starts_with(&w.stripe.url()),
        "{first}"
    );
    let account = first["account_id"].as_str().unwrap().to_owned();
    let updated = w.stripe.complete_onboarding(&account).await.unwrap();
    assert_eq!(updated.status, 200, "{}", updated.body);
    let (status, again) = w.app.call("POST", path, Some(key), None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["account_id"],
        account.as_str(),
        "one account per volunteer"
    );
    assert_eq!(again["payouts_enabled"], true, "{again}");
    assert!(again["url"].is_null(), "{again}");
    account
}

pub(crate) async fn pass(w: &World) -> payouts::PassSummary {
    let stripe = w.app.controller.state.stripe.clone().unwrap();
    payouts::run_pass(w.app.db(), &stripe, Money::new(THRESHOLD, Currency::USD))
        .await
        .unwrap()
}

/// The volunteer's usd balances in cents: (earnings, payouts in transit).
async fn earnings_and_in_transit(app: &TestApp, key: &str) -> (i64, i64) {
    (
        balance(app, key, "volunteer_earnings").await,
        balance(app, key, "payouts_in_transit").await,
    )
}

async fn payout_list(w: &World, key: &str) -> Vec<Value> {
    let (status, body) = w
        .app
        .call("GET", "/api/v1/volunteer/payouts", Some(key), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn a_volunteer_below_the_threshold_or_not_onboarded_is_not_paid_out(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, small) = earning_volunteer(&w.app, "small", THRESHOLD - 200);
    onboard(&w, &small).await;
    // Plenty earned, but no Connect account.
    let (_, absent) = earning_volunteer(&w.app, "absent", THRESHOLD * 5);
    let summary = pass(&w).await;
    assert_eq!(summary.started, 0, "{summary:?}");
    assert_eq!(summary.below_threshold, 1, "{summary:?}");
    assert!(w.stripe.transfers().is_empty());
    assert!(payout_list(&w, &small).await.is_empty());
    assert!(payout_list(&w, &absent).await.is_empty());
    assert_eq!(
        balance(&w.app, &small, "volunteer_earnings").await,
        THRESHOLD - 200
    );
    assert_eq!(
        balance(&w.app, &absent, "volunteer_earnings").await,
        THRESHOLD * 5
    );
    // Payouts are the volunteer's: an owner token is refused.
    let owner = w.app.owner("owner");
    let (status, body) = w
        .app
        .call("GET", "/api/v1/volunteer/payouts", Some(&owner), None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(w.stripe.accounts_created(), 1);
    ledger_is_sound(&w.app);
}

async fn a_payout_transfers_the_earnings_once_and_the_ledger_shows_it_completed(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, key) = earning_volunteer(&w.app, "ada", 2_000);
    let account = onboard(&w, &key).await;
    let summary = pass(&w).await;
    assert_eq!(summary.completed, 1, "{summary:?}");
    assert_eq!(summary.paid_minor, 2_000);
    let transfers = w.stripe.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(transfers[0]["amount"], 2_000);
    assert_eq!(transfers[0]["currency"], "usd");
    assert_eq!(transfers[0]["destination"], account.as_str());
    let list = payout_list(&w, &key).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["amount_minor"], 2_000);
    assert_eq!(list[0]["transfer_id"], transfers[0]["id"]);
    assert_eq!(transfers[0]["metadata"]["payout_id"], list[0]["id"]);
    assert_eq!(earnings_and_in_transit(&w.app, &key).await, (0, 0));
    ledger_is_sound(&w.app);

    // Nothing left to pay: the next pass sends nothing.
    let again = pass(&w).await;
    assert_eq!(again.started, 0, "{again:?}");
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(ledger_transactions(&w.app, "payout_completed"), 1);
}

async fn a_transfer_whose_answer_was_lost_is_retried_with_the_same_key_and_moves_money_once(
    db: TestDb,
) {
    // The client gives up after 300 ms; the fake answers after 2 s.
    let w = world(&db, |c| c.stripe.timeout_ms = 300).await;
    let (_, key) = earning_volunteer(&w.app, "ada", 2_000);
    onboard(&w, &key).await;
    w.stripe.answer_next_transfer_late(Duration::from_secs(2));
    let first = pass(&w).await;
    assert_eq!(first.started, 1, "{first:?}");
    assert_eq!(first.in_transit, 1, "{first:?}");
    assert_eq!(first.completed, 0, "{first:?}");
    // Stripe did move the money, though we do not know it yet.
    assert_eq!(w.stripe.transfers().len(), 1);
    let list = payout_list(&w, &key).await;
    assert_eq!(list[0]["status"], "in_transit", "{list:?}");
    assert!(list[0]["transfer_id"].is_null(), "{list:?}");
    let reason = list[0]["failure_reason"].as_str().unwrap();
    assert!(reason.contains("will retry"), "{list:?}");
    assert_eq!(earnings_and_in_transit(&w.app, &key).await, (0, 2_000));
    ledger_is_sound(&w.app);

    // The next pass sends the same transfer with the same key: Stripe replays it.
    let second = pass(&w).await;
    assert_eq!(second.completed, 1, "{second:?}");
    assert_eq!(second.started, 0, "{second:?}");
    let transfers = w.stripe.transfers();
    assert_eq!(transfers.len(), 1, "exactly one transfer: {transfers:?}");
    assert!(w.stripe.idempotent_replays() >= 1);
    let list = payout_list(&w, &key).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["transfer_id"], transfers[0]["id"]);
    assert_eq!(balance(&w.app, &key, "payouts_in_transit").await, 0);
    assert_eq!(ledger_transactions(&w.app, "payout_completed"), 1);
    ledger_is_sound(&w.app);
}

async fn a_transfer_stripe_refuses_fails_the_payout_and_restores_the_earnings(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, key) = earning_volunteer(&w.app, "ada", 2_000);
    onboard(&w, &key).await;
    w.stripe.fail_next_transfer(
        "balance_insufficient",
        "Insufficient funds in Stripe account.",
    );
    let summary = pass(&w).await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert!(w.stripe.transfers().is_empty());
    let list = payout_list(&w, &key).await;
    assert_eq!(list[0]["status"], "failed", "{list:?}");
    let reason = list[0]["failure_reason"].as_str().unwrap();
    assert!(reason.contains("balance_insufficient"), "{list:?}");
    assert_eq!(earnings_and_in_transit(&w.app, &key).await, (2_000, 0));
    ledger_is_sound(&w.app);

    // The earnings are paid by a new payout on the next pass.
    let next = pass(&w).await;
    assert_eq!(next.completed, 1, "{next:?}");
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(balance(&w.app, &key, "volunteer_earnings").await, 0);
    let list = payout_list(&w, &key).await;
    assert_eq!(list.len(), 2);
    ledger_is_sound(&w.app);
}

async fn a_reversed_transfer_restores_the_earnings_once(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, key) = earning_volunteer(&w.app, "ada", 2_000);
    onboard(&w, &key).await;
    assert_eq!(pass(&w).await.completed, 1);
    let transfer = w.stripe.transfers()[0]["id"].as_str().unwrap().to_owned();
    let reversed = w.stripe.reverse_transfer(&transfer).await.unwrap();
    assert_eq!(reversed.status, 200, "{}", reversed.body);
    assert!(reversed.body.contains("\"applied\""), "{}", reversed.body);
    let list = payout_list(&w, &key).await;
    assert_eq!(list[0]["status"], "reversed", "{list:?}");
    assert_eq!(balance(&w.app, &key, "volunteer_earnings").await, 2_000);
    ledger_is_sound(&w.app);
    // Delivered again: nothing more.
    let again = w.stripe.deliver(&reversed.event_id).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(balance(&w.app, &key, "volunteer_earnings").await, 2_000);
    assert_eq!(ledger_transactions(&w.app, "payout_reversed"), 1);
    ledger_is_sound(&w.app);
}

async fn two_payout_passes_at_once_pay_a_volunteer_once(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (_, key) = earning_volunteer(&w.app, "ada", 3_000);
    onboard(&w, &key).await;
    let (a, b) = tokio::join!(pass(&w), pass(&w));
    assert_eq!(a.started + b.started, 1, "{a:?} {b:?}");
    assert_eq!(w.stripe.transfers().len(), 1);
    assert_eq!(w.stripe.transfers()[0]["amount"], 3_000);
    assert_eq!(earnings_and_in_transit(&w.app, &key).await, (0, 0));
    ledger_is_sound(&w.app);
}

/// The fake itself, on the wire: Bearer auth, form bodies, Stripe's error envelope,
/// and idempotency as Stripe has it.
#[tokio::test]
async fn the_fake_stripe_replays_a_repeated_key_and_refuses_one_reused_with_other_parameters() {
    let stripe = FakeStripe::start(KEY, WHSEC).await.unwrap();
    let http = reqwest::Client::new();
    let accounts = format!("{}v1/accounts", stripe.url());
    let post = |key: Option<&str>, auth: &str, body: &str| {
        let mut req = http
            .post(&accounts)
            .header("authorization", format!("Bearer {auth}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send()
    };
    let res = post(None, "sk_wrong", "type=express").await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");

    let first = post(
        Some("k1"),
        KEY,
        "type=express&metadata%5Bvolunteer_id%5D=v1",
    )
    .await
    .unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["object"], "account");
    assert_eq!(first["metadata"]["volunteer_id"], "v1");
    let again = post(
        Some("k1"),
        KEY,
        "type=express&metadata%5Bvolunteer_id%5D=v1",
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(stripe.accounts_created(), 1);

    let other = post(
        Some("k1"),
        KEY,
        "type=express&metadata%5Bvolunteer_id%5D=v2",
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 400);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["type"], "idempotency_error", "{other}");
    assert_eq!(stripe.accounts_created(), 1);

    let missing = post(None, KEY, "country=DE").await.unwrap();
    assert_eq!(missing.status(), 400);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "parameter_missing", "{missing}");
    assert_eq!(missing["error"]["param"], "type", "{missing}");
}
