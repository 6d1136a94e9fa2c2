//! `lastmile-demo`, the README's first command, as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// `lastmile-demo --serve`: after the report, the dashboard stays up with the printed demo
/// sign-ins working, until Ctrl-C (SIGINT) ends it cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn demo_serve_keeps_the_dashboard_up_with_working_sign_ins_until_interrupted() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lastmile-demo"))
        .args(["--runs", "1", "--serve"])
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
        "lastmile-demo --serve exited with {status}; it printed:\n{}",
        printed.join("\n")
    );
}
