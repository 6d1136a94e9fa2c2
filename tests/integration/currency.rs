//! Credit only in currencies prices exist in (usd): a paid Checkout session in another
//! currency and an operator's grant in one are refused and record nothing, on both
//! backends, against the fake Stripe with real signed webhooks.

use lastmile_billing::{Currency, Money};
use lastmile_testbed::stripe::signature_header;
use serde_json::{json, Value};

use crate::per_backend;
use crate::stripe::world;
use crate::support::{balance_sheet, count, TestApp, TestDb};

per_backend!(
    a_paid_checkout_in_a_currency_without_prices_credits_nothing,
    a_grant_in_a_currency_without_prices_is_refused_naming_the_allowed_ones,
);

const WHSEC: &str = "whsec_lastmile_tests";

/// Posts a signed `checkout.session.completed` for `session` to the webhook.
async fn deliver(app: &TestApp, event_id: &str, session: Value) -> (u16, Value) {
    let payload = json!({"id": event_id, "object": "event", "type": "checkout.session.completed",
        "data": {"object": session}})
    .to_string();
    let t = chrono::Utc::now().timestamp();
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/stripe/webhook", app.base))
        .header("content-type", "application/json")
        .header("stripe-signature", signature_header(WHSEC, t, &payload))
        .body(payload)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The owner's balances as `GET /api/v1/me/balance` lists them: (kind, currency, minor).
async fn balances(app: &TestApp, token: &str) -> Vec<(String, String, i64)> {
    balance_sheet(app, token).await["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap().to_owned(),
                b["currency"].as_str().unwrap().to_owned(),
                b["balance_minor"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn nothing_recorded(app: &TestApp) {
    assert_eq!(
        count(app, "SELECT COUNT(*) AS n FROM ledger_transactions"),
        0
    );
    assert_eq!(count(app, "SELECT COUNT(*) AS n FROM stripe_events"), 0);
}

async fn a_paid_checkout_in_a_currency_without_prices_credits_nothing(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let (owner_id, owner) = w.app.owner_with_credit("buyer", 0);
    let before = balances(&w.app, &owner).await;

    // A session Stripe says was paid in eur (made outside this controller, say from
    // Stripe's dashboard, naming our owner).
    let eur = json!({"id": "cs_test_eur", "object": "checkout.session", "payment_status": "paid",
        "amount_total": 900, "currency": "eur", "client_reference_id": owner_id});
    let (status, body) = deliver(&w.app, "evt_eur", eur).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "unsupported_currency", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("eur")
            && message.contains("usd")
            && message.contains("nothing was credited"),
        "{message}"
    );
    nothing_recorded(&w.app);
    assert_eq!(balances(&w.app, &owner).await, before);

    // A session we opened in usd whose paid event says another currency: the same.
    let (status, body) = w
        .app
        .ask_checkout(
            Some(&owner),
            json!({"amount_minor": 2_500, "currency": "usd"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session_id"].as_str().unwrap();
    let xyz = json!({"id": session, "object": "checkout.session", "payment_status": "paid",
        "amount_total": 2_500, "currency": "xyz", "client_reference_id": owner_id});
    let (status, body) = deliver(&w.app, "evt_xyz", xyz).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "unsupported_currency", "{body}");
    nothing_recorded(&w.app);
    assert_eq!(
        count(
            &w.app,
            "SELECT COUNT(*) AS n FROM stripe_checkouts WHERE completed_at IS NOT NULL"
        ),
        0
    );
    assert_eq!(balances(&w.app, &owner).await, before);

    // The genuine usd payment of that session is credited.
    let paid = w.stripe.complete_checkout(session).await.unwrap();
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert!(
        balances(&w.app, &owner)
            .await
            .contains(&("owner_credit".into(), "usd".into(), 2_500)),
        "{:?}",
        balances(&w.app, &owner).await
    );
}

async fn a_grant_in_a_currency_without_prices_is_refused_naming_the_allowed_ones(db: TestDb) {
    let app = TestApp::start(&db).await;
    let (owner_id, owner) = app.owner_with_credit("owner", 0);
    let before = balances(&app, &owner).await;
    for code in ["xyz", "eur"] {
        let currency: Currency = code.parse().unwrap();
        let refused = lastmile_domain::billing::grant_credit(
            &mut app.db().conn().unwrap(),
            &owner_id,
            Money::new(100, currency),
            "grant-1",
        )
        .unwrap_err();
        assert_eq!(refused.code(), "unsupported_currency");
        let message = refused.to_string();
        assert!(
            message.contains("usd") && message.contains(code),
            "{message}"
        );
    }
    nothing_recorded(&app);
    assert_eq!(balances(&app, &owner).await, before);
    // In usd it is granted.
    app.credit(&owner_id, 100);
    assert!(balances(&app, &owner)
        .await
        .contains(&("owner_credit".into(), "usd".into(), 100)));
}
