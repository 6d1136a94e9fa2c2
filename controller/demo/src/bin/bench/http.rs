//! `bench http`: authenticated API calls against an actix-web hello world, side by side
//! under `wrk`.
//!
//! The bench starts two processes on 127.0.0.1: this binary as a hello world (`bench
//! hello`: actix-web, one route answering `Hello world!`, actix's default workers, as
//! the controller has) and `lastmile-controller serve` on a scratch SQLite data dir or a
//! scratch PostgreSQL database (`--pg ADMIN_URL`), with an owner (its API token from the
//! controller's CLI) who has `--checks` checks (10; paused, so that no run takes the
//! agent's idle lease) and one enrolled, heartbeating agent. Then `wrk` (Debian's; `apt-get
//! install wrk`) runs `--duration-s` seconds with `--connections` keep-alive connections
//! on one thread against each URL in turn:
//!
//! - the hello world, `GET /`;
//! - an owner's `GET /api/v1/me` and `GET /api/v1/checks` (bearer token);
//! - the agent's idle `POST /api/v1/agents/lease` (bearer token, `{"max":2}`: no work is
//!   planned, so the answer is an empty lease, what nearly every lease of a network is).
//!
//! Prints requests/s, latency p50/p99, non-2xx answers and socket errors as `wrk`
//! reports them, the server's CPU over the run, and each call's rate as a ratio of the
//! hello world's. `wrk` shares the two cores with the server it measures, the same way
//! for every row, so read the ratios.
//!
//! On PostgreSQL a last row is PostgreSQL alone: `pgbench` (Debian's, beside
//! `pg_config --bindir`) sends `GET /api/v1/checks`' own statement, prepared, on as many
//! connections as the controller's pool has, with no HTTP in front. It is the most a
//! call that reads the database once can reach on this machine, so `/checks` is also
//! printed as a share of it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lastmile_protocol::{ConnectionClass, EnrolRequest, EnrolResponse};

use super::harness::{idle_heartbeat, usage, Connection, ControllerProcess};

struct Args {
    duration: Duration,
    connections: usize,
    pg: Option<String>,
    controller: Option<PathBuf>,
    checks: usize,
}

fn args(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args {
        duration: Duration::from_secs(10),
        connections: 64,
        pg: None,
        controller: None,
        checks: 10,
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--duration-s" => a.duration = Duration::from_secs(value.parse()?),
            "--connections" => a.connections = value.parse()?,
            "--pg" => a.pg = Some(value),
            "--controller" => a.controller = Some(value.into()),
            "--checks" => a.checks = value.parse()?,
            other => bail!(
                "unknown flag {other} (flags: --duration-s S --connections N --checks N --pg ADMIN_URL --controller PATH)"
            ),
        }
    }
    if a.connections == 0 || a.duration.is_zero() {
        bail!("--connections and --duration-s must be above 0");
    }
    Ok(a)
}

/// `bench hello --listen ADDR`: the reference server, an actix-web hello world. `GET /`
/// answers `Hello world!`; anything else an empty lease (`{"tasks":[]}`), so that `bench
/// agents --hello` can hold idle agents' connections against it.
pub fn hello(flags: Vec<String>) -> anyhow::Result<()> {
    let listen = match flags.as_slice() {
        [flag, addr] if flag == "--listen" => addr.clone(),
        _ => bail!("usage: bench hello --listen ADDR"),
    };
    actix_web::rt::System::new().block_on(async move {
        actix_web::HttpServer::new(|| {
            actix_web::App::new()
                .route("/", actix_web::web::get().to(|| async { "Hello world!" }))
                // The body is read (as the controller's extractors read theirs): actix
                // closes a connection whose request body was left unread.
                .default_service(actix_web::web::to(|_body: actix_web::web::Bytes| async {
                    actix_web::HttpResponse::Ok()
                        .content_type("application/json")
                        .body(r#"{"tasks":[]}"#)
                }))
        })
        // As long as the controller's (`keep_alive_s`), so that polling agents keep
        // their connections.
        .keep_alive(Duration::from_secs(75))
        .bind(listen)?
        .run()
        .await
    })?;
    Ok(())
}

/// `bench hello` as a child process on a free port of 127.0.0.1, killed when dropped.
pub struct Hello {
    child: Child,
    pub addr: std::net::SocketAddr,
}

impl Hello {
    pub fn start() -> anyhow::Result<Hello> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let hello = Hello {
            child: Command::new(std::env::current_exe()?)
                .args(["hello", "--listen", &addr.to_string()])
                .stdout(Stdio::null())
                .spawn()?,
            addr,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(hello);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the hello world did not start listening on {addr}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `wrk` printed for one run, and the server's CPU over it.
struct Measured {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
    cpu_percent: f64,
}

/// `wrk`'s latency figures ("1.23ms", "850.00us", "1.02s") in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Reads `wrk --latency`'s report.
fn parse_wrk(out: &str) -> anyhow::Result<(f64, f64, f64, u64, u64)> {
    let mut rate = None;
    let (mut p50, mut p99) = (None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => rate = n.parse::<f64>().ok(),
            ["50%", v] => p50 = wrk_ms(v),
            ["99%", v] => p99 = wrk_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    match (rate, p50, p99) {
        (Some(r), Some(a), Some(b)) => Ok((r, a, b, non_2xx, socket_errors)),
        _ => bail!("could not read wrk's report:\n{out}"),
    }
}

/// Runs `wrk` against `url` (with the request `script` sets up, if any) and measures
/// the server `pid`'s CPU meanwhile.
fn wrk(
    args: &Args,
    url: &str,
    script: Option<&std::path::Path>,
    pid: u32,
) -> anyhow::Result<Measured> {
    let mut command = Command::new("wrk");
    command
        .args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration.as_secs()));
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let before = usage(pid)?;
    let started = Instant::now();
    let out = command.arg(url).output().map_err(|e| {
        anyhow::anyhow!("cannot run wrk ({e}): install it, e.g. `apt-get install wrk`")
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = usage(pid)?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (requests_per_s, p50_ms, p99_ms, non_2xx, socket_errors) =
        parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Measured {
        requests_per_s,
        p50_ms,
        p99_ms,
        non_2xx,
        socket_errors,
        cpu_percent: 100.0 * (after.cpu - before.cpu).as_secs_f64() / elapsed,
    })
}

/// A `wrk` script that sends every request with `method`, the bearer `token` and,
/// when given, a JSON `body`.
fn script(
    dir: &std::path::Path,
    name: &str,
    method: &str,
    token: &str,
    body: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.lua"));
    let mut lua =
        format!("wrk.method = \"{method}\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n");
    if let Some(body) = body {
        lua.push_str(&format!(
            "wrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{body}'\n"
        ));
    }
    std::fs::write(&path, lua)?;
    Ok(path)
}

pub fn main(flags: Vec<String>) -> anyhow::Result<()> {
    let args = args(flags)?;
    let (controller, key) =
        ControllerProcess::start(args.controller.as_deref(), args.pg.as_deref(), "http")?;
    let owner_token = controller.cli(&["owner", "create", "--name", "bench"])?;
    listed_checks(&controller, &owner_token, args.checks)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agent_token = runtime.block_on(async {
        let enrolled: EnrolResponse = Connection::new(controller.addr)
            .post(
                "/api/v1/agents/enrol",
                &EnrolRequest {
                    enrol_key: key.clone(),
                    name: "bench-http".into(),
                    declared_class: ConnectionClass::Cable,
                    version: "bench".into(),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("enrol: {e}"))?;
        let mut conn = Connection::new(controller.addr);
        conn.token = Some(enrolled.token.clone());
        conn.post::<_, serde_json::Value>("/api/v1/agents/heartbeat", &idle_heartbeat())
            .await
            .map_err(|e| anyhow::anyhow!("heartbeat: {e}"))?;
        anyhow::Ok(enrolled.token)
    })?;

    let hello = Hello::start()?;

    let scripts = tempfile::tempdir()?;
    let owner_get = script(scripts.path(), "owner", "GET", &owner_token, None)?;
    let lease = script(
        scripts.path(),
        "lease",
        "POST",
        &agent_token,
        Some(r#"{"max":2}"#),
    )?;
    let backend = if args.pg.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    println!(
        "Lastmile http bench: wrk -t1 -c{} -d{}s, each call vs an actix-web hello world (controller on {backend})\n",
        args.connections,
        args.duration.as_secs()
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8}",
        "call", "req/s", "p50 ms", "p99 ms", "non-2xx", "sock err", "srv cpu%", "vs hello"
    );
    let base = format!("http://{}", controller.addr);
    let rows: [(&str, String, Option<&std::path::Path>, u32); 4] = [
        (
            "hello world GET /",
            format!("http://{}/", hello.addr),
            None,
            hello.pid(),
        ),
        (
            "owner GET /api/v1/me",
            format!("{base}/api/v1/me"),
            Some(&owner_get),
            controller.pid(),
        ),
        (
            "owner GET /api/v1/checks",
            format!("{base}/api/v1/checks"),
            Some(&owner_get),
            controller.pid(),
        ),
        (
            "agent POST /api/v1/agents/lease",
            format!("{base}/api/v1/agents/lease"),
            Some(&lease),
            controller.pid(),
        ),
    ];
    let (mut hello_rate, mut checks_rate) = (None, None);
    for (name, url, script, pid) in rows {
        let m = wrk(&args, &url, script, pid)?;
        let reference = *hello_rate.get_or_insert(m.requests_per_s);
        if url.ends_with("/api/v1/checks") {
            checks_rate = Some(m.requests_per_s);
        }
        println!(
            "{:<34} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>8} {:>9.0} {:>7.2}x",
            name,
            m.requests_per_s,
            m.p50_ms,
            m.p99_ms,
            m.non_2xx,
            m.socket_errors,
            m.cpu_percent,
            m.requests_per_s / reference
        );
    }
    drop(hello);
    if let (Some(url), Some(hello_rate), Some(checks_rate)) =
        (controller.database_url(), hello_rate, checks_rate)
    {
        match postgres_alone(url, &args) {
            Ok(rate) => println!(
                "{:<34} {:>10.0} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7.2}x\n\n\
                 GET /api/v1/checks reaches {:.0} % of what PostgreSQL alone answers here.",
                "PostgreSQL alone, /checks' SELECT",
                rate,
                "",
                "",
                "",
                "",
                "",
                rate / hello_rate,
                100.0 * checks_rate / rate
            ),
            Err(e) => println!("PostgreSQL alone: not measured ({e:#})"),
        }
    }
    Ok(())
}

/// Gives the owner of `token` `n` checks to list, paused in the transaction that makes
/// them (a run would take the agent's idle lease).
fn listed_checks(controller: &ControllerProcess, token: &str, n: usize) -> anyhow::Result<()> {
    use lastmile_domain::checks::{self, Schedule};
    let db = controller.db()?;
    let mut conn = db.conn()?;
    let owner = lastmile_domain::accounts::owner_by_token(&mut conn, token)?
        .context("the owner just created")?;
    let site_id = super::storage::verified_site(&mut conn, &owner.id)?;
    let mut made = Vec::new();
    for i in 0..n {
        let mut new = super::storage::bench_check(&site_id, &format!("bench {i}"), 1)?;
        new.schedule = Schedule {
            every_seconds: Some(3_600),
        };
        made.push(new);
    }
    lastmile_storage::write_tx(&mut conn, |c| {
        for new in &made {
            let check = checks::create(c, &owner.id, new, 1)?;
            checks::set_paused(c, &owner.id, &check.id, true)?;
        }
        Ok::<_, lastmile_domain::Error>(())
    })?;
    Ok(())
}

/// The rate of `GET /api/v1/checks`' statement sent by `pgbench` straight to the
/// controller's database, prepared, on the controller's number of connections.
fn postgres_alone(url: &str, args: &Args) -> anyhow::Result<f64> {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Owner {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let mut conn = diesel::PgConnection::establish(url)?;
    let owner: Owner = diesel::sql_query("SELECT id FROM owners LIMIT 1").get_result(&mut conn)?;
    let bindir = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let pgbench = bindir
        .map(|d| d.join("pgbench"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pgbench"));
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("checks.sql");
    // What `lastmile_storage::checks::list` sends (its columns are those of the row).
    std::fs::write(
        &script,
        "SELECT * FROM checks WHERE owner_id = :owner AND deleted_at IS NULL ORDER BY created_at;\n",
    )?;
    let out = Command::new(&pgbench)
        .args(["-n", "-M", "prepared", "-j", "1"])
        .arg(format!(
            "-c{}",
            lastmile_controller::config::ControllerConfig::default().max_db_connections
        ))
        .arg(format!("-T{}", args.duration.as_secs()))
        .arg("-D")
        .arg(format!("owner={}", owner.id))
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {} ({e})", pgbench.display()))?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_pgbench(&String::from_utf8_lossy(&out.stdout))
}

/// The rate in `pgbench`'s report ("tps = 21809.27 (without initial connection time)").
fn parse_pgbench(out: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("could not read pgbench's report:\n{out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   612.51us  201.10us   5.01ms   80.00%\n  Latency Distribution\n     50%  580.00us\n     75%  700.00us\n     90%  800.00us\n     99%    1.20ms\n  1000 requests in 10.00s, 100.00KB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\nRequests/sec:  99999.50\nTransfer/sec:     10.00KB\n";
        let (rate, p50, p99, non_2xx, errors) = parse_wrk(out).unwrap();
        assert_eq!(rate, 99999.5);
        assert!((p50 - 0.58).abs() < 1e-9 && (p99 - 1.2).abs() < 1e-9);
        assert_eq!((non_2xx, errors), (7, 3));
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn pgbench_reports_are_read() {
        let out = "transaction type: checks.sql\nnumber of clients: 8\nlatency average = 0.734 ms\ntps = 21809.273583 (without initial connection time)\n";
        assert_eq!(parse_pgbench(out).unwrap(), 21809.273583);
        assert!(parse_pgbench("nothing").is_err());
    }
}
