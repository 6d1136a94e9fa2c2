//! The `lastmile-controller` commands an operator types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// What one command printed, and whether it succeeded.
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `lastmile-controller --data-dir <data_dir> <args>` on the embedded SQLite
/// default (whatever `DATABASE_URL` the environment has).
fn controller(data_dir: &Path, args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_lastmile-controller"))
        .env_remove("DATABASE_URL")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The last line a successful command printed: the secret it shows once.
fn secret_printed(out: &Outcome) -> String {
    assert!(out.ok, "{}", out.stderr);
    out.stdout.lines().last().unwrap().trim().to_owned()
}

/// Creates an owner; its id ("owner <id> created; ...").
fn create_owner(data_dir: &Path) -> String {
    let out = controller(data_dir, &["owner", "create", "--name", "Shop Ltd"]);
    assert!(out.ok, "{}", out.stderr);
    out.stdout.split_whitespace().nth(1).unwrap().to_owned()
}

/// `owner credit` for `owner` of `amount_minor`, with further flags.
fn credit(data_dir: &Path, owner: &str, amount_minor: &str, flags: &[&str]) -> Outcome {
    let mut args = vec![
        "owner",
        "credit",
        "--owner",
        owner,
        "--amount-minor",
        amount_minor,
    ];
    args.extend_from_slice(flags);
    controller(data_dir, &args)
}

#[test]
fn migrate_then_create_accounts_prints_secrets_once_and_stores_only_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller(dir.path(), &["migrate"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("up to date (sqlite)"));

    let out = controller(dir.path(), &["owner", "create", "--name", "Shop Ltd"]);
    let token = secret_printed(&out);
    assert!(
        token.starts_with("lmo_") && token.len() == 68,
        "{}",
        out.stdout
    );

    let key = secret_printed(&controller(
        dir.path(),
        &["volunteer", "create", "--name", "Ada"],
    ));
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
    let out = controller(dir.path(), &["owner", "create", "--name", "  "]);
    assert!(!out.ok);
    assert!(out.stderr.contains("name must be 1 to 200 characters"));
}

#[test]
fn owner_credit_grants_test_credit_once_per_grant_id() {
    let dir = tempfile::tempdir().unwrap();
    let owner = create_owner(dir.path());
    let grant = |amount: &str, grant: &str| {
        credit(
            dir.path(),
            &owner,
            amount,
            &["--currency", "usd", "--grant-id", grant],
        )
    };
    let out = grant("2500", "welcome");
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("granted 25.00 usd") && out.stdout.contains("credit now 25.00 usd"),
        "{}",
        out.stdout
    );
    // The same grant again changes nothing; another grant adds up.
    let out = grant("2500", "welcome");
    assert!(
        out.stdout.contains("already granted") && out.stdout.contains("credit now 25.00 usd"),
        "{}",
        out.stdout
    );
    let out = grant("100", "top-up");
    assert!(
        out.stdout.contains("credit now 26.00 usd"),
        "{}",
        out.stdout
    );

    let out = grant("0", "nothing");
    assert!(!out.ok);
    assert!(
        out.stderr.contains("amount must be a positive number"),
        "{}",
        out.stderr
    );
    let out = credit(dir.path(), "nobody", "100", &[]);
    assert!(!out.ok);
    assert!(out.stderr.contains("owner not found"));
}

#[test]
fn owner_credit_in_a_currency_without_prices_is_refused_and_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let owner = create_owner(dir.path());
    for currency in ["xyz", "eur"] {
        let out = credit(dir.path(), &owner, "100", &["--currency", currency]);
        assert!(!out.ok);
        assert!(
            out.stderr.contains("credit can only be granted in usd")
                && out.stderr.contains(currency),
            "{}",
            out.stderr
        );
    }
    // Nothing was granted: the first usd grant is all the credit there is.
    let out = credit(dir.path(), &owner, "100", &["--currency", "usd"]);
    assert!(out.stdout.contains("credit now 1.00 usd"), "{}", out.stdout);
}
