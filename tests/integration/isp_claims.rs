//! Proving ownership of an ASN by mail is only for an ASN nobody owns: a claim on
//! another ISP's ASN is refused (409 `asn_owned`, an operator must transfer it) and
//! mails nobody; a claim on one's own says so; and of two ISPs that both started a
//! claim, only the first to confirm gets it.

use std::sync::Arc;

use lastmile_domain::isp::{self, MemoryMailer};
use serde_json::{json, Value};

use crate::per_backend;
use crate::support::{count, TestApp, TestDb};

per_backend!(a_claim_on_an_owned_asn_is_refused_and_mails_nobody);

/// The code in the last mail sent.
fn mailed_code(mailer: &MemoryMailer) -> String {
    let (_, _, mail) = mailer.sent.lock().unwrap().last().cloned().unwrap();
    mail.split("this code: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

async fn a_claim_on_an_owned_asn_is_refused_and_mails_nobody(db: TestDb) {
    let mailer = Arc::new(MemoryMailer::default());
    let app = TestApp::start_with_mailer(&db, mailer.clone()).await;
    let (owner, stranger, first, second) = {
        let mut conn = app.db().conn().unwrap();
        isp::set_contact(&mut conn, 64_503, "noc@fibra.example").unwrap();
        isp::set_contact(&mut conn, 64_504, "noc@bayern.example").unwrap();
        (
            isp::create(&mut conn, "Fibra", &[64_503]).unwrap().1,
            isp::create(&mut conn, "Stranger", &[]).unwrap().1,
            isp::create(&mut conn, "First", &[]).unwrap().1,
            isp::create(&mut conn, "Second", &[]).unwrap().1,
        )
    };
    let claim = |token: &str, asn: u32| {
        let token = token.to_owned();
        let app = &app;
        async move {
            app.call(
                "POST",
                "/api/v1/isp/asn-claims",
                Some(&token),
                Some(json!({ "asn": asn })),
            )
            .await
        }
    };
    let asns = |token: &str| {
        let token = token.to_owned();
        let app = &app;
        async move {
            let (status, body) = app
                .call("GET", "/api/v1/isp/asns", Some(&token), None)
                .await;
            assert_eq!(status, 200, "{body}");
            body["asns"].clone()
        }
    };

    // Another ISP's ASN: refused, no claim, no mail.
    let (status, body) = claim(&stranger, 64_503).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("asn_owned")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("AS64503") && message.contains("operator must transfer"),
        "{message}"
    );
    // Its own: a clear answer, no mail either.
    let (status, body) = claim(&owner, 64_503).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("asn_already_yours")),
        "{body}"
    );
    assert!(mailer.sent.lock().unwrap().is_empty(), "no mail was sent");
    assert_eq!(count(&app, "SELECT COUNT(*) AS n FROM asn_claims"), 0);
    assert_eq!(asns(&stranger).await, json!([]));

    // Two ISPs claim the same free ASN; the first to confirm owns it, the second's
    // code no longer gives it.
    let (status, a) = claim(&first, 64_504).await;
    assert_eq!(status, 201, "{a}");
    let code_a = mailed_code(&mailer);
    let (status, b) = claim(&second, 64_504).await;
    assert_eq!(status, 201, "{b}");
    let code_b = mailed_code(&mailer);
    let confirm = |token: &str, claim: &Value, code: String| {
        let token = token.to_owned();
        let path = format!(
            "/api/v1/isp/asn-claims/{}/confirm",
            claim["id"].as_str().unwrap()
        );
        let app = &app;
        async move {
            app.call("POST", &path, Some(&token), Some(json!({ "code": code })))
                .await
        }
    };
    let (status, body) = confirm(&first, &a, code_a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["asns"], json!([64_504]));
    let (status, body) = confirm(&second, &b, code_b).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("asn_owned")),
        "{body}"
    );
    assert_eq!(asns(&second).await, json!([]));
    assert_eq!(asns(&first).await, json!([64_504]));
    app.controller.stop().await.unwrap();
}
