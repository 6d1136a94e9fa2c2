//! What the benches that drive a controller process share: the process (started on a
//! scratch database, killed when dropped), its CPU and memory from `/proc`, and a
//! minimal keep-alive HTTP/1.1 client (not reqwest: thousands of reqwest clients would
//! each build their own TLS configuration and pool, and the load generator shares the
//! machine's cores with the controller it measures). Traffic goes to 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The controller process under test, killed when dropped.
pub struct ControllerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Its agent listener (`--agent-listen`), for the agents' hot calls.
    pub agent_addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    pub scratch: Option<super::storage::ScratchPg>,
    binary: PathBuf,
    database_url: Option<String>,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("bench has no directory")?
            .join("lastmile-controller"),
    };
    if !path.exists() {
        bail!(
            "{} not found: `cargo build --release --workspace` first, or pass --controller PATH",
            path.display()
        );
    }
    Ok(path)
}

impl ControllerProcess {
    /// Starts `lastmile-controller serve` (`controller`, or the release build beside
    /// this binary) on a scratch data dir, or a scratch PostgreSQL database created
    /// through `pg` (an admin URL) and named after `purpose`; creates a volunteer with
    /// the controller's CLI and returns its enrolment key.
    pub fn start(
        controller: Option<&Path>,
        pg: Option<&str>,
        purpose: &str,
    ) -> anyhow::Result<(ControllerProcess, String)> {
        let binary = controller_binary(controller)?;
        let data_dir = tempfile::tempdir()?;
        let scratch = match pg {
            Some(admin) => Some(super::storage::ScratchPg::create(admin, purpose)?),
            None => None,
        };
        let database_url = scratch.as_ref().map(|s| s.url.clone());
        let command = |args: &[&str]| {
            let mut c = Command::new(&binary);
            c.arg("--data-dir").arg(data_dir.path());
            if let Some(url) = &database_url {
                c.arg("--database-url").arg(url);
            }
            // Warnings, but not the verification's flags: the benches' agents all
            // speak from 127.0.0.1 for one volunteer, so most of their results look
            // farmed, one warning each.
            c.args(args)
                .env("RUST_LOG", "warn,lastmile_domain::verification=error");
            c
        };
        let created = command(&["volunteer", "create", "--name", "bench"]).output()?;
        if !created.status.success() {
            bail!(
                "volunteer create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        let key = String::from_utf8(created.stdout)?
            .lines()
            .last()
            .context("volunteer create printed no key")?
            .trim()
            .to_owned();
        let addr = free_port()?;
        let agent_addr = free_port()?;
        let child = command(&[
            "serve",
            "--listen",
            &addr.to_string(),
            "--agent-listen",
            &agent_addr.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()?;
        let process = ControllerProcess {
            child,
            addr,
            agent_addr,
            data_dir,
            scratch,
            binary,
            database_url,
        };
        wait_until_serving(addr)?;
        Ok((process, key))
    }

    /// The scratch PostgreSQL database it serves from, if any.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the controller process; its database stays until this is dropped.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The controller's own database, opened beside it (for setting up what the API
    /// cannot, such as a verified site).
    pub fn db(&self) -> anyhow::Result<lastmile_storage::Db> {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => self
                .data_dir
                .path()
                .join("lastmile.db")
                .display()
                .to_string(),
        };
        Ok(lastmile_storage::Db::open(&url, 2)?)
    }

    /// Runs one of the controller's CLI commands on its database and returns the last
    /// line it printed (what `owner create` and the like print last is the token).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(&self.binary);
        command.arg("--data-dir").arg(self.data_dir.path());
        if let Some(url) = &self.database_url {
            command.arg("--database-url").arg(url);
        }
        let out = command.args(args).env("RUST_LOG", "warn").output()?;
        if !out.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .last()
            .with_context(|| format!("{args:?} printed nothing"))?
            .trim()
            .to_owned())
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("controller did not listen on {addr} within 30 s")
}

/// CPU time (user + system) and resident memory of a process, from `/proc`.
#[derive(Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_kib: u64,
}

pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Usage {
        cpu: Duration::from_millis(ticks * 1000 / clock_ticks_per_second()),
        rss_kib,
    })
}

/// CPU time (user + system) of every PostgreSQL server process on this machine (the
/// bench's server is the only one here), to show where the rest of the machine went.
pub fn postgres_cpu() -> Duration {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "postgres")
                .then(|| usage(pid).ok())
                .flatten()
        })
        .map(|u| u.cpu)
        .sum()
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux this runs on; `getconf` says.
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The heartbeat of an idle simulated agent (cable, two slots, every kind of check).
pub fn idle_heartbeat() -> lastmile_protocol::Heartbeat {
    use lastmile_protocol::{AgentLimits, CheckKind, ConnectionClass, Heartbeat};
    Heartbeat {
        declared_class: ConnectionClass::Cable,
        version: concat!("bench-", env!("CARGO_PKG_VERSION")).to_owned(),
        limits: AgentLimits { max_concurrent: 2 },
        paused: None,
        kinds: CheckKind::ALL.to_vec(),
        path_trace: false,
    }
}

/// How long one request may take before the bench counts it failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One agent's connection to the controller: HTTP/1.1 with keep-alive, reconnecting
/// when the controller closed it.
pub struct Connection {
    addr: SocketAddr,
    pub token: Option<String>,
    /// The address connections are made from (any of 127.0.0.0/8 reaches the
    /// controller): agents on one machine still each have their own, as a network's do.
    pub source: Option<std::net::IpAddr>,
    stream: Option<BufReader<TcpStream>>,
    /// Connections opened, to tell how often keep-alive did not hold.
    pub opened: u64,
}

#[derive(Debug)]
pub enum CallError {
    Io(std::io::Error),
    Status(u16, String),
    Body(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "{e}"),
            CallError::Status(s, body) => write!(f, "HTTP {s}: {body}"),
            CallError::Body(e) => write!(f, "bad body: {e}"),
        }
    }
}

impl Connection {
    /// The `i`-th of up to 64,000 distinct loopback source addresses (127.2.0.1 on).
    pub fn loopback_source(i: usize) -> std::net::IpAddr {
        std::net::Ipv4Addr::new(
            127,
            2 + (i / 64_000) as u8,
            (i % 64_000 / 250) as u8,
            (i % 250 + 1) as u8,
        )
        .into()
    }

    pub fn new(addr: SocketAddr) -> Connection {
        Connection {
            addr,
            token: None,
            source: None,
            stream: None,
            opened: 0,
        }
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Body(e.to_string()))?;
        let reused = self.stream.is_some();
        match self.exchange_within(path, &body).await {
            Ok(answer) => answer,
            // The controller closed an idle keep-alive connection just as we sent: a real
            // client retries once on a new connection.
            Err(_) if reused => {
                self.stream = None;
                self.exchange_within(path, &body)
                    .await
                    .map_err(CallError::Io)?
            }
            Err(e) => {
                self.stream = None;
                Err(CallError::Io(e))
            }
        }
    }

    /// [`Connection::exchange`] within [`REQUEST_TIMEOUT`]: a controller that stopped
    /// answering shows as errors, not as a bench that waits for ever. The connection is
    /// dropped after a timeout (an answer may still be on its way).
    async fn exchange_within<R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<Result<R, CallError>> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(path, body)).await {
            Ok(answer) => answer,
            Err(_) => {
                self.stream = None;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                ))
            }
        }
    }

    /// Sends one request and reads one answer. The outer error is the connection's (the
    /// request may be retried); the inner is the answer's.
    async fn exchange<R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<Result<R, CallError>> {
        if self.stream.is_none() {
            let stream = match self.source {
                Some(source) => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(std::net::SocketAddr::new(source, 0))?;
                    socket.connect(self.addr).await?
                }
                None => TcpStream::connect(self.addr).await?,
            };
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
            self.opened += 1;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.get_mut().write_all(&request).await?;
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let length =
            length.ok_or_else(|| std::io::Error::other("answer without content-length"))?;
        let mut answer = vec![0; length];
        stream.read_exact(&mut answer).await?;
        if close {
            self.stream = None;
        }
        if !(200..300).contains(&status) {
            return Ok(Err(CallError::Status(
                status,
                String::from_utf8_lossy(&answer).into_owned(),
            )));
        }
        Ok(serde_json::from_slice(&answer).map_err(|e| CallError::Body(e.to_string())))
    }
}
