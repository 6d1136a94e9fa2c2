//! The `lastmile-agent` binary as a volunteer runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A local server answering every request with `body`.
async fn server(body: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body).await;
            });
        }
    });
    addr
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lastmile-agent"))
}

/// Runs the agent with `args` off the async threads (the test's own servers keep
/// answering meanwhile).
fn agent_output(args: &[&str]) -> impl Future<Output = std::process::Output> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    async move {
        tokio::task::spawn_blocking(move || agent().args(args).output().unwrap())
            .await
            .unwrap()
    }
}

/// `lastmile-agent run` for a DSL line against a controller that is not there, with
/// `state_dir` and `extra` flags: it stops before reaching out, at what is wrong.
fn run_unenrolled(state_dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    agent()
        .args([
            "run",
            "--controller",
            "http://127.0.0.1:9",
            "--connection-class",
            "dsl",
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .output()
        .unwrap()
}

/// Its standard output, after asserting it succeeded.
fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_json_prints_the_documented_object() {
    let addr = server(b"hello lastmile").await;
    let url = format!("http://{addr}/");
    let out = agent_output(&["measure", &url, "--json", "--allow-private"]).await;
    let v: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 14);
    assert_eq!(v["error"], serde_json::Value::Null);
    let t = &v["timings_us"];
    for phase in ["dns", "connect", "tls", "ttfb", "transfer", "total"] {
        assert!(t[phase].is_u64(), "{phase} missing in {v}");
    }
    assert!(t["total"].as_u64().unwrap() >= t["ttfb"].as_u64().unwrap());
    assert_eq!(v["bytes_decoded"], 14);
    assert_eq!(v["remote_addr"], "127.0.0.1");
    assert_eq!(v["ip_version"], 4);
    assert_eq!(v["http_version"], "1.1");
    assert_eq!(v["redirect_us"], 0);
    assert_eq!(v["redirects"], serde_json::json!([]));
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes",
            "bytes_decoded",
            "error",
            "http_version",
            "ip_version",
            "redirect_us",
            "redirects",
            "remote_addr",
            "status",
            "timings_us"
        ],
        "the documented fields, no more: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_refuses_loopback_without_local_test_mode() {
    let addr = server(b"x").await;
    let url = format!("http://{addr}/");
    let out = agent_output(&["measure", &url, "--json"]).await;
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "target_forbidden");
}

#[test]
fn run_without_enrolment_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_unenrolled(dir.path(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--enrol-key"), "{err}");
}

#[test]
fn config_file_supplies_settings_and_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "controller = \"http://127.0.0.1:9\"\nconnection_klass = \"dsl\"\n",
    )
    .unwrap();
    let out = agent()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connection_klass"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_targets_are_trusted_through_ca_file_only() {
    use lastmile_testbed::site::{SiteConfig, TargetSite};
    use lastmile_testbed::tls::TestCa;

    let ca = TestCa::new().unwrap();
    let site = TargetSite::start(
        "127.0.0.1:0".parse().unwrap(),
        SiteConfig {
            tls: Some(ca.server_config(&["localhost"]).unwrap()),
            ..SiteConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.cert_file(dir.path()).unwrap();
    let url = format!("https://localhost:{}/", site.addr().port());

    let ca_file = ca_file.to_str().unwrap();
    let trusted = agent_output(&[
        "measure",
        &url,
        "--json",
        "--allow-private",
        "--ca-file",
        ca_file,
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert!(
        v["timings_us"]["tls"].as_u64().unwrap() > 0,
        "the TLS handshake is timed: {v}"
    );
    assert_eq!(v["bytes"], 8192);

    let untrusted = agent_output(&["measure", &url, "--json", "--allow-private"]).await;
    let v: serde_json::Value = serde_json::from_slice(&untrusted.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "tls_untrusted", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("localhost"),
        "{v}"
    );
}

#[test]
fn a_ca_file_without_certificates_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("empty.pem");
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let out = agent()
        .args(["measure", "https://localhost:1/", "--ca-file"])
        .arg(&ca_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no usable certificate"));
}

#[test]
fn volunteer_limits_that_make_no_sense_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| run_unenrolled(dir.path(), extra);
    let out = base(&["--idle-only-hours", "9-5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("like 09:00-18:00"), "{err}");

    let out = base(&["--idle-only-hours", "09:00-17:00", "--idle-max-load=0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("idle max load must be a positive number"),
        "{err}"
    );

    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "idle_only_hours = \"late\"\n").unwrap();
    let out = base(&["--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config idle_only_hours"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_checks_the_expectations_given_as_flags() {
    let addr = server(b"hello lastmile").await;
    let url = format!("http://{addr}/");
    let run = |extra: &[&str]| {
        let mut args = vec!["measure", &url, "--json", "--allow-private"];
        args.extend_from_slice(extra);
        let out = agent_output(&args);
        async move {
            let out = out.await;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (out.status.success(), v)
        }
    };
    let (ok, v) = run(&["--expect-status", "200,204", "--body-contains", "last"]).await;
    assert!(ok, "{v}");
    let (ok, v) = run(&["--expect-status", "204"]).await;
    assert!(!ok);
    assert_eq!(v["error"]["kind"], "http_status", "{v}");
    let (ok, v) = run(&["--body-contains", "goodbye"]).await;
    assert!(!ok);
    assert_eq!(v["error"]["kind"], "body_mismatch", "{v}");
    let (ok, v) = run(&["--max-bytes", "4"]).await;
    assert!(!ok);
    assert_eq!(v["error"]["kind"], "body_too_large", "{v}");
}

#[tokio::test]
async fn measure_page_prints_the_page_summary_and_its_json() {
    use lastmile_testbed::shop;
    use lastmile_testbed::site::{SiteConfig, TargetSite, NOT_FOUND};
    let site = TargetSite::start("127.0.0.1:0".parse().unwrap(), SiteConfig::default())
        .await
        .unwrap();
    let url = format!("{}{}", site.origin(), shop::PAGE_PATH);
    let base = ["measure", url.as_str(), "--page", "--allow-private"];

    let json = [&base[..], &["--json"]].concat();
    let v: serde_json::Value =
        serde_json::from_str(&succeeded(&agent_output(&json).await)).unwrap();
    let (resources, bytes, missing) = shop::expected(NOT_FOUND.len());
    assert_eq!(v["page"]["resources"], resources, "{v}");
    assert_eq!(v["page"]["bytes"], bytes);
    assert_eq!(v["bytes"], bytes);
    assert_eq!(v["page"]["total_us"], v["timings_us"]["total"]);
    assert_eq!(
        v["page"]["failed"][0]["url"],
        format!("{}{missing}", site.origin())
    );
    assert_eq!(v["page"]["failed"][0]["type"], "image");
    assert_eq!(v["page"]["failed"][0]["error"]["kind"], "http_status");

    let text = succeeded(&agent_output(&base).await);
    assert!(
        text.contains(&format!("resources  {resources} (stylesheet 1, script 1")),
        "{text}"
    );
    assert!(
        text.contains("failed     ") && text.contains("http_status 404"),
        "{text}"
    );

    // A limit that the page passes fails the command with its code.
    let limited = [&base[..], &["--max-resources", "3"]].concat();
    let out = agent_output(&limited).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("page_too_many_resources"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_count_measures_again_on_fresh_connections() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Keep-alive on offer: a reused connection would show in the count.
                let mut buf = [0u8; 2048];
                while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let url = format!("http://{addr}/");
    let out = agent_output(&["measure", &url, "--json", "--count", "3", "--allow-private"]).await;
    let lines: Vec<serde_json::Value> = succeeded(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one JSON object per measurement");
    for v in &lines {
        assert_eq!(v["status"], 200, "{v}");
        assert!(v["timings_us"]["connect"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "a fresh connection each"
    );

    let refused = agent()
        .args(["measure", "http://127.0.0.1:9/", "--count", "0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("--count") && why.contains("0"), "{why}");
}

/// A keep-alive HTTP/1.1 server (hyper's) answering `HEAD` with an empty 200 and `GET`
/// with `body_bytes` bytes: what a throughput load downloads again and again.
async fn download_server(body_bytes: usize) -> std::net::SocketAddr {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let body = if request.method() == hyper::Method::HEAD {
                            bytes::Bytes::new()
                        } else {
                            body.clone()
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_throughput_prints_the_load_and_its_json() {
    let addr = download_server(256 * 1024).await;
    let url = format!("http://{addr}/");
    let base = [
        "measure",
        url.as_str(),
        "--throughput",
        "--connections",
        "2",
        "--duration-ms",
        "300",
        "--allow-private",
    ];

    let json = [&base[..], &["--json"]].concat();
    let v: serde_json::Value =
        serde_json::from_str(&succeeded(&agent_output(&json).await)).unwrap();
    let t = &v["throughput"];
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(t["connections"], 2, "{v}");
    assert!(t["requests"].as_u64().unwrap() >= 2, "{v}");
    assert!(t["bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["bytes"], t["bytes"]);
    assert_eq!(v["bytes_decoded"], t["bytes"]);
    assert_eq!(v["timings_us"]["transfer"], t["duration_us"]);
    assert_eq!(t["idle_latency_us"].as_array().unwrap().len(), 5, "{v}");
    assert!(t["loaded_latency_us"].is_array(), "{v}");
    let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes",
            "connections",
            "duration_us",
            "idle_latency_us",
            "loaded_latency_us",
            "requests"
        ],
        "{v}"
    );

    let text = succeeded(&agent_output(&base).await);
    for line in [
        "connections  2",
        "goodput      ",
        "Mbit/s over ",
        "median of 5 probes",
        " p90 of ",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }

    // A page load and a throughput load are different measurements.
    let both = [&base[..], &["--page"]].concat();
    let out = agent_output(&both).await;
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("--page") && why.contains("--throughput"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn measure_video_prints_the_session_and_its_json() {
    use lastmile_testbed::site::{SiteConfig, TargetSite};
    use lastmile_testbed::video::{self as stream, MASTER_PATH, RENDITIONS};
    let site = TargetSite::start("127.0.0.1:0".parse().unwrap(), SiteConfig::default())
        .await
        .unwrap();
    let url = format!("{}{MASTER_PATH}", site.origin());
    let base = [
        "measure",
        url.as_str(),
        "--video",
        "--play-ms",
        "3000",
        "--max-bitrate-kbps",
        "2000",
        "--allow-private",
    ];

    let json = [&base[..], &["--json"]].concat();
    let v: serde_json::Value =
        serde_json::from_str(&succeeded(&agent_output(&json).await)).unwrap();
    let s = &v["video"];
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(
        s["playlist_url"],
        format!("{}/video/low/index.m3u8", site.origin()),
        "{v}"
    );
    assert_eq!(s["bitrate_bps"], RENDITIONS[0].bitrate_bps, "{v}");
    assert_eq!(s["segments"], 3, "{v}");
    assert_eq!(s["played_ms"], 3_000, "{v}");
    assert_eq!(
        (s["stalls"].as_u64(), s["stall_us"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert!(s["startup_us"].as_u64().unwrap() > 0, "{v}");
    let bytes =
        stream::master().len() + stream::media().len() + 3 * stream::segment_bytes(RENDITIONS[0]);
    assert_eq!(v["bytes"], bytes, "{v}");
    assert_eq!(v["bytes_decoded"], bytes, "{v}");
    let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bitrate_bps",
            "played_ms",
            "playlist_url",
            "segments",
            "stall_us",
            "stalls",
            "startup_us"
        ],
        "{v}"
    );

    let text = succeeded(&agent_output(&base).await);
    for line in [
        "/video/low/index.m3u8",
        "rendition  2000 kbit/s",
        "segments   3",
        &format!("bytes      {bytes}"),
        "startup    ",
        "stalls     0",
        "stalled    0.000 ms",
        "played     3.000 s",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }

    // Not a playlist: the command fails with its code.
    let home = format!("{}/", site.origin());
    let out = agent_output(&["measure", &home, "--video", "--allow-private"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("playlist_invalid"), "{text}");

    // A video session is not a throughput load.
    let both = [&base[..], &["--throughput"]].concat();
    let out = agent_output(&both).await;
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("--video") && why.contains("--throughput"),
        "{why}"
    );
}
