//! A controller in a process of its own, for tests that kill it for real (SIGKILL) or
//! run several replicas: the test binary runs itself again with [`CHILD_ENV`] set, which
//! makes the otherwise ignored test [`controller_child`] serve the controller until it
//! is killed or its parent goes away.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lastmile_controller::config::ControllerConfig;
use lastmile_controller::{server, AppState};

use crate::support::{test_geo, TestDb};

/// Carries the child's controller config (JSON); set only for the child process.
const CHILD_ENV: &str = "LASTMILE_CONTROLLER_CHILD";

/// The child's test, as libtest names it (`--exact`).
const CHILD_TEST: &str = "controller_process::controller_child";

/// The controller process: serves the config in [`CHILD_ENV`] until it is killed. When
/// the variable is unset (an ordinary `--ignored` run) it does nothing.
#[test]
#[ignore = "the controller process of the crash and replica tests"]
fn controller_child() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config: ControllerConfig = serde_json::from_str(&config).unwrap();
    // The parent holds our stdin; when it goes away (even killed), so do we.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        std::process::exit(0);
    });
    let listen = config.listen;
    let state = AppState::open(config).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // The same port every time, though the last life's connections linger in
        // TIME_WAIT: the agents keep the one controller URL they were given.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(listen).unwrap();
        let listener = socket.listen(1024).unwrap().into_std().unwrap();
        let agent_listener = server::bind_agent_listener(&state).unwrap();
        server::run(listener, agent_listener, state, std::future::pending())
            .await
            .unwrap();
    });
}

/// One life of the controller process; killed (SIGKILL) when dropped.
pub struct ControllerProcess {
    child: Child,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts the controller process and waits until `/healthz` answers.
    pub async fn start(config: &ControllerConfig, life: usize, dir: &Path) -> ControllerProcess {
        let log = dir.join(format!("controller-{}-{life}.log", config.listen.port()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([CHILD_TEST, "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, serde_json::to_string(config).unwrap())
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut process = ControllerProcess { child, log };
        let health = format!("http://{}/healthz", config.listen);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "controller process {life} exited ({status}) before it served:\n{}",
                    process.log_tail()
                );
            }
            if let Ok(r) = http.get(&health).send().await {
                if r.status().is_success() {
                    return process;
                }
            }
            assert!(
                Instant::now() < deadline,
                "controller process {life} did not answer /healthz within 60 s:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port to serve on that nothing else is given: below Linux's ephemeral range
/// (32768 and up), so that no outgoing connection and no port-0 listener can take it
/// while the controller is down between two lives.
pub fn fixed_port() -> u16 {
    let seed = uuid::Uuid::new_v4().as_u128();
    for i in 0..200u128 {
        let port = 20_000 + ((seed + i * 7_919) % 12_000) as u16;
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// The config of a child controller on `port`: the test database, geo databases and
/// state in `dir`, private sites allowed, checks as often as every second, the
/// scheduler ticking every 100 ms.
pub fn child_config(test_db: &TestDb, dir: &Path, port: u16) -> ControllerConfig {
    ControllerConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        database_url: Some(test_db.url.clone()),
        data_dir: dir.join(format!("controller-{port}")),
        geo: test_geo(dir),
        allow_private_sites: true,
        min_check_interval_s: 1,
        scheduler_tick_ms: 100,
        ..ControllerConfig::default()
    }
}
