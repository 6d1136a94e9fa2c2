//! Money in the dashboard, in a real browser on both backends, against the fake Stripe
//! (its hosted pages, the real `async-stripe` client, signed webhooks): an owner buys
//! credit through Checkout and sees it once Stripe's webhook confirmed it; a volunteer
//! sets up payouts through Connect onboarding and sees the payouts of a payout pass,
//! paid and failed with Stripe's reason. Without Stripe the pages say so.

use lastmile_billing::{ledger, movements, Currency, Money};
use lastmile_domain::billing::{self, HolderKind};

use crate::browser::Browser;
use crate::dashboard::sign_up;
use crate::per_backend;
use crate::stripe::{pass, world, THRESHOLD};
use crate::support::{TestApp, TestDb};

per_backend!(
    an_owner_buys_credit_through_stripe_checkout_and_sees_it_once_confirmed,
    a_volunteer_sets_up_payouts_and_sees_them_paid_or_failed_with_the_reason,
    without_stripe_buying_credit_and_setting_up_payouts_say_why_not,
);

fn shot(db: &TestDb, name: &str) -> String {
    format!("{}-money-{name}", db.backend_name())
}

/// The owner's credit in cents, as the ledger has it.
fn credit_of(app: &TestApp, owner_id: &str) -> i64 {
    let b = billing::balances(&mut app.db().conn().unwrap(), HolderKind::Owner, owner_id).unwrap();
    b.balances
        .iter()
        .filter(|l| l.kind == "owner_credit" && l.currency == "usd")
        .map(|l| l.balance_minor)
        .sum()
}

async fn an_owner_buys_credit_through_stripe_checkout_and_sees_it_once_confirmed(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let browser = Browser::start(1280, 1000).await;
    sign_up(&browser, &w.app, "owner", "Shop Ltd", "ada@shop.example").await;
    let owner = w.app.login("ada@shop.example").owner_id.unwrap();
    browser.goto(&format!("{}/app/checks", w.app.base)).await;
    assert!(browser.text("#credit").await.contains("Buy credit"));

    // Amounts that cannot be bought are refused on the page, as typed; no session opens.
    for bad in ["twenty", "4.99", "10.555", "20000"] {
        browser.fill("#amount", bad).await;
        browser.submit("#credit button[type=submit]").await;
        let error = browser.text("#credit .error").await;
        assert!(
            error.contains("from 5.00 USD to 10000.00 USD"),
            "{bad}: {error}"
        );
        assert_eq!(browser.value("#amount").await.as_deref(), Some(bad));
    }
    browser.screenshot(&shot(&db, "credit-refused")).await;
    assert_eq!(w.stripe.sessions_created(), 0);

    // 25 dollars: the browser lands on Stripe's hosted page for that amount.
    browser.fill("#amount", "25").await;
    browser.submit("#credit button[type=submit]").await;
    let url = browser.client.current_url().await.unwrap();
    assert!(
        url.as_str()
            .starts_with(&format!("{}pay/cs_", w.stripe.url())),
        "{url}"
    );
    assert!(browser.page_text().await.contains("Pay 25.00 usd"));
    browser.screenshot(&shot(&db, "stripe-checkout")).await;
    assert_eq!(
        credit_of(&w.app, &owner),
        0,
        "nothing before Stripe confirms"
    );

    // Paying: Stripe signs and sends checkout.session.completed, then sends the
    // browser back to the dashboard, which shows the credit.
    browser.submit("button").await;
    assert_eq!(browser.path().await, "/app/checks");
    let notice = browser.text("#credit .notice").await;
    assert!(notice.contains("Stripe has your payment"), "{notice}");
    let money = browser.text("#credit .money").await;
    assert!(money.contains("Credit: 25.00 USD"), "{money}");
    browser.screenshot(&shot(&db, "credit-bought")).await;
    assert_eq!(credit_of(&w.app, &owner), 2_500);

    // Coming back to the success page again credits nothing: only the webhook does.
    let back = browser.client.current_url().await.unwrap();
    browser.goto(back.as_str()).await;
    browser.goto(back.as_str()).await;
    assert!(browser
        .text("#credit .money")
        .await
        .contains("Credit: 25.00 USD"));
    assert_eq!(credit_of(&w.app, &owner), 2_500);

    // At phone width the credit form still fits.
    browser.client.set_window_size(390, 900).await.unwrap();
    assert!(!browser.scrolls_sideways().await);
    browser.screenshot(&shot(&db, "credit-phone")).await;
    browser.close().await;
}

/// Gives the volunteer `earned_minor` cents of earnings: an owner paid for results of
/// theirs (price = earnings / 0.8).
fn earn(app: &TestApp, volunteer_id: &str, earned_minor: i64) {
    let (owner, _) = app.owner_with_credit("customer", 0);
    let price = Money::new(earned_minor * 5 / 4, Currency::USD);
    app.credit(&owner, price.minor);
    ledger::with_write_tx(&mut *app.db().conn().unwrap(), |c| {
        ledger::post(
            c,
            &movements::pay_result(
                &owner,
                volunteer_id,
                price,
                &uuid::Uuid::new_v4().to_string(),
            ),
        )
    })
    .unwrap();
}

async fn a_volunteer_sets_up_payouts_and_sees_them_paid_or_failed_with_the_reason(db: TestDb) {
    let w = world(&db, |_| {}).await;
    let browser = Browser::start(1280, 1100).await;
    sign_up(
        &browser,
        &w.app,
        "volunteer",
        "Ada",
        "ada@volunteer.example",
    )
    .await;
    let volunteer = w.app.login("ada@volunteer.example").volunteer_id.unwrap();
    let setup = browser.text("#payout-setup").await;
    assert!(
        setup.contains("once they reach 10.00 USD") && setup.contains("Set up payouts"),
        "{setup}"
    );
    assert!(browser.text("#payouts").await.contains("No payouts yet"));

    // Set up payouts: to Stripe's onboarding, and back once it is finished.
    browser.submit("#payout-setup button").await;
    let url = browser.client.current_url().await.unwrap();
    assert!(
        url.as_str()
            .starts_with(&format!("{}connect/onboarding/acct_", w.stripe.url())),
        "{url}"
    );
    browser.screenshot(&shot(&db, "stripe-onboarding")).await;
    browser.submit("button").await;
    assert_eq!(browser.path().await, "/app/agents");
    assert!(browser
        .text("#payouts .notice")
        .await
        .contains("Back from Stripe"));
    let setup = browser.text("#payout-setup").await;
    assert!(
        setup.contains("payouts enabled")
            && setup.contains(
                "paid out automatically to your Stripe account once they reach 10.00 USD"
            ),
        "{setup}"
    );
    assert_eq!(w.stripe.accounts_created(), 1);

    // Earnings past the threshold, a payout pass: the table shows it paid.
    earn(&w.app, &volunteer, THRESHOLD + 234);
    let summary = pass(&w).await;
    assert_eq!(summary.completed, 1, "{summary:?}");
    browser.goto(&format!("{}/app/agents", w.app.base)).await;
    let table = browser.text("#payouts table").await;
    assert!(
        table.contains("12.34 USD") && table.contains("paid"),
        "{table}"
    );

    // Another payout Stripe refuses: failed, with Stripe's reason, money back.
    earn(&w.app, &volunteer, THRESHOLD);
    w.stripe
        .fail_next_transfer("account_closed", "The destination account is closed.");
    let summary = pass(&w).await;
    assert_eq!(summary.failed, 1, "{summary:?}");
    browser.goto(&format!("{}/app/agents", w.app.base)).await;
    let rows = browser.text("#payouts tbody").await;
    let first = rows.lines().next().unwrap_or_default();
    assert!(
        first.contains("10.00 USD")
            && first.contains("failed")
            && first.contains("The destination account is closed")
            && first.contains("back in your earnings"),
        "{rows}"
    );
    assert!(rows.contains("12.34 USD"), "{rows}");
    let stats = browser.text("section.stats").await;
    assert!(stats.contains("10.00 USD"), "earnings restored: {stats}");
    browser.screenshot(&shot(&db, "payouts")).await;
    browser.client.set_window_size(390, 1100).await.unwrap();
    assert!(!browser.scrolls_sideways().await);
    browser.screenshot(&shot(&db, "payouts-phone")).await;
    browser.close().await;
}

async fn without_stripe_buying_credit_and_setting_up_payouts_say_why_not(db: TestDb) {
    let app = TestApp::start(&db).await;
    let browser = Browser::start(1280, 900).await;
    sign_up(&browser, &app, "owner", "Shop Ltd", "ada@shop.example").await;
    browser.goto(&format!("{}/app/checks", app.base)).await;
    browser.fill("#amount", "25").await;
    browser.submit("#credit button[type=submit]").await;
    let error = browser.text("#credit .error").await;
    assert!(error.contains("payments are not set up"), "{error}");
    browser.screenshot(&shot(&db, "credit-no-stripe")).await;
    browser.submit("header form button").await;

    sign_up(&browser, &app, "volunteer", "Ada", "ada@volunteer.example").await;
    let setup = browser.text("#payout-setup").await;
    assert!(setup.contains("Payouts are not set up"), "{setup}");
    assert_eq!(
        browser
            .count("form[action='/app/agents/payouts/setup']")
            .await,
        0
    );
    browser.close().await;
}
