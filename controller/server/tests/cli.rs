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
