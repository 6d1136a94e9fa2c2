//! The `lastmile-controller` commands an operator types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn controller(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lastmile-controller"));
    c.env_remove("DATABASE_URL").arg("--data-dir").arg(data_dir);
    c
}

#[test]
fn migrate_then_create_accounts_prints_secrets_once_and_stores_only_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller(dir.path()).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date (sqlite)"));

    let out = controller(dir.path())
        .args(["owner", "create", "--name", "Shop Ltd"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("lmo_") && token.len() == 68, "{stdout}");

    let out = controller(dir.path())
        .args(["volunteer", "create", "--name", "Ada"])
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.starts_with("lmv_"), "{key}");

    // The database holds neither secret in the clear.
    let db = std::fs::read(dir.path().join("lastmile.db")).unwrap();
    let wal = std::fs::read(dir.path().join("lastmile.db-wal")).unwrap_or_default();
    for secret in [&token, &key] {
        let needle = secret.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
    }
}

#[test]
fn an_empty_name_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller(dir.path())
        .args(["owner", "create", "--name", "  "])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name must be 1 to 200 characters"));
}

/// `demo --serve`: after the report, the dashboard stays up with the printed demo
/// sign-ins working, until Ctrl-C (SIGINT) ends it cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn demo_serve_keeps_the_dashboard_up_with_working_sign_ins_until_interrupted() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = controller(data.path())
        .args(["demo", "--runs", "1", "--serve"])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let dashboard = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(180))
            .unwrap_or_else(|_| panic!("no dashboard line; demo printed:\n{}", printed.join("\n")));
        if let Some(rest) = line.strip_prefix("Dashboard: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        printed.push(line);
    };
    assert!(
        printed.iter().any(|l| l.contains("SLA report")),
        "report comes first"
    );
    let owner_line = rx.recv().unwrap();
    let mut words = owner_line.split_whitespace().skip(2);
    let (email, password) = (
        words.next().unwrap().to_owned(),
        words.nth(1).unwrap().to_owned(),
    );

    // Sign in as a browser would: the form's CSRF cookie and field, then the session.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{dashboard}/sign-in"))
        .send()
        .await
        .unwrap();
    let csrf_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let csrf = csrf_cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("lm_csrf=")
        .to_owned();
    let signed_in = http
        .post(format!("{dashboard}/sign-in"))
        .header("cookie", format!("lm_csrf={csrf}"))
        .form(&[
            ("email", email.as_str()),
            ("password", password.as_str()),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "{email} / {password}");
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let sites = http
        .get(format!("{dashboard}/sites"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(sites.status(), 200);
    let page = sites.text().await.unwrap();
    assert!(
        page.contains("Demo Shop Ltd") && page.contains(">verified<"),
        "{page}"
    );

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "demo --serve exited with {status}; it printed:\n{}",
        printed.join("\n")
    );
}

#[test]
fn owner_credit_grants_test_credit_once_per_grant_id() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller(dir.path())
        .args(["owner", "create", "--name", "Shop Ltd"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "owner <id> created; ..."
    let owner = stdout.split_whitespace().nth(1).unwrap().to_owned();
    let credit = |amount: &str, grant: &str| {
        controller(dir.path())
            .args([
                "owner",
                "credit",
                "--owner",
                &owner,
                "--amount-minor",
                amount,
            ])
            .args(["--currency", "usd", "--grant-id", grant])
            .output()
            .unwrap()
    };
    let out = credit("2500", "welcome");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("granted 25.00 usd") && stdout.contains("credit now 25.00 usd"),
        "{stdout}"
    );
    // The same grant again changes nothing; another grant adds up.
    let stdout = String::from_utf8_lossy(&credit("2500", "welcome").stdout).into_owned();
    assert!(
        stdout.contains("already granted") && stdout.contains("credit now 25.00 usd"),
        "{stdout}"
    );
    let stdout = String::from_utf8_lossy(&credit("100", "top-up").stdout).into_owned();
    assert!(stdout.contains("credit now 26.00 usd"), "{stdout}");

    let out = credit("0", "nothing");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("amount must be a positive number"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = controller(dir.path())
        .args([
            "owner",
            "credit",
            "--owner",
            "nobody",
            "--amount-minor",
            "100",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner not found"));
}

#[test]
fn owner_credit_in_a_currency_without_prices_is_refused_and_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller(dir.path())
        .args(["owner", "create", "--name", "Shop Ltd"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let owner = stdout.split_whitespace().nth(1).unwrap().to_owned();
    let credit = |currency: &str| {
        controller(dir.path())
            .args([
                "owner",
                "credit",
                "--owner",
                &owner,
                "--amount-minor",
                "100",
            ])
            .args(["--currency", currency])
            .output()
            .unwrap()
    };
    for currency in ["xyz", "eur"] {
        let out = credit(currency);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("credit can only be granted in usd") && stderr.contains(currency),
            "{stderr}"
        );
    }
    // Nothing was granted: the first usd grant is all the credit there is.
    let out = credit("usd");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("credit now 1.00 usd"), "{stdout}");
}
