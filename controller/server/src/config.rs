//! Controller settings: defaults that make the demo need no flag, a TOML file for
//! operators, and `LASTMILE_*` environment variables / flags on top (parsed in `main`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lastmile_domain::geo::GeoConfig;
pub use lastmile_domain::stripe_api::StripeConfig;

/// Everything the controller can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Address of the agent listener, which serves agents' heartbeats, leases, path
    /// traces and results holding far less memory per connected agent than the API's
    /// (see `agent_listener`); unset: none, agents use `listen` for everything.
    pub agent_listen: Option<SocketAddr>,
    /// The agent listener's URL as agents reach it (e.g. through a load balancer),
    /// named in every heartbeat's answer; unset: `http://<agent_listen>` when it and
    /// `listen` are both loopback addresses (one machine), else none.
    pub agent_url: Option<String>,
    /// `postgres://...` for PostgreSQL; unset means a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Where the embedded SQLite database and other local state live.
    pub data_dir: PathBuf,
    /// Size of the database connection pool.
    pub max_db_connections: u32,
    /// Geo databases and overrides.
    pub geo: GeoConfig,
    /// How long an agent holds a leased assignment before it is re-offered.
    pub lease_s: u64,
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval_s: u32,
    /// An agent counts as online if it heartbeat within this many seconds.
    pub online_window_s: u64,
    /// How many agents in total may try one assignment slot (first lease included).
    pub max_attempts: u32,
    /// A run's unfilled assignments are given up after this many seconds.
    pub run_deadline_s: u64,
    /// How long a pending assignment waits for the agents chosen for its run before one
    /// more agent is chosen for it, seconds.
    pub offer_timeout_s: u64,
    /// Shortest schedule interval a check may ask for.
    pub min_check_interval_s: u64,
    /// Let site verification fetch private and loopback addresses (local testing only).
    pub allow_private_sites: bool,
    /// Networks site verification may fetch although they are not public (a lab LAN,
    /// tests on loopback), without opening all of them as `allow_private_sites` does
    /// (`--allow-site-net CIDR`, `LASTMILE_ALLOW_SITE_NET`); like the agent's `--allow-net`.
    pub allow_site_nets: Vec<ipnet::IpNet>,
    /// The nameserver (ip:port) asked for `_lastmile.<host>` TXT records when a site's
    /// ownership is proven by DNS, and for a site's addresses when it is proven by file;
    /// unset: the system's resolver.
    pub dns_nameserver: Option<SocketAddr>,
    /// How often the scheduler looks for due checks and expired leases, milliseconds.
    pub scheduler_tick_ms: u64,
    /// Largest request body the API accepts, bytes.
    pub max_body_bytes: usize,
    /// Requests per minute an ISP token may make (bursts up to this many).
    pub isp_requests_per_minute: u32,
    /// Dashboard sign-in attempts per minute, per client address and per email.
    pub sign_in_attempts_per_minute: u32,
    /// Calibration bytes the controller serves and accepts per agent per UTC day.
    pub calibration_bytes_per_day: u64,
    /// The operators' bearer token for the admin endpoints under `/api/v1/ops/`
    /// (`LASTMILE_ADMIN_TOKEN`); unset means those endpoints answer 401.
    pub admin_token: Option<String>,
    /// Stripe: buying credit by Checkout, paying volunteers through Connect.
    pub stripe: StripeConfig,
    /// How often remembered heartbeats are written (last-seen times and uptime; see
    /// `lastmile_domain::presence`), milliseconds.
    pub presence_flush_ms: u64,
    /// How often agent rows changed elsewhere (revocations, calibrations on another
    /// replica) are read into memory, milliseconds: a revoked agent is refused within it.
    /// Also how long an owner's API token found valid is trusted without asking the
    /// database again (a token revoked on another replica is refused within it).
    pub agent_refresh_ms: u64,
    /// Most agents held in memory (past it, those not seen within the online window are
    /// dropped first).
    pub max_held_agents: usize,
    /// How often a background pass folds accepted results still queued (each request
    /// that submits results folds them before it answers; this catches the rest),
    /// milliseconds.
    pub fold_interval_ms: u64,
    /// How often complete days' hour cells are rolled up into day cells, seconds (0:
    /// never; reports then merge hour cells only).
    pub rollup_interval_s: u64,
    /// Whole UTC days before today whose raw results are kept (0: keep them all).
    /// Older results are removed by the maintenance pass that runs with the rollups
    /// (on PostgreSQL a whole day's partition at a time); aggregates, reports, money
    /// and the leaderboard keep what they counted. A day later the runs' per-agent rows
    /// go too, and each run but its check's latest (`run_history::archive`).
    pub result_retention_days: u32,
    /// How often alert rules are judged, milliseconds (0: never). Due alert deliveries
    /// are sent every second, or this often when it is shorter.
    pub alert_interval_ms: u64,
    /// The first retry of a failed alert delivery waits this long, each later one three
    /// times longer (at most an hour), milliseconds.
    pub alert_retry_ms: u64,
    /// The SMTP relay for alert emails and ISP ownership codes: `smtp://host:25`,
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://user:password@host:465`.
    /// Unset: mail is written to the log and email alert channels are refused.
    pub smtp_url: Option<String>,
    /// The sender of that mail.
    pub mail_from: String,
    /// Longest a lease waits for work when the agent asks it to (`wait_s`), seconds.
    pub max_lease_wait_s: u32,
    /// How long an idle keep-alive connection stays open, seconds: longer than the
    /// agents' idle poll, so a poll reuses its connection.
    pub keep_alive_s: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            agent_listen: None,
            agent_url: None,
            database_url: None,
            data_dir: PathBuf::from(".lastmile"),
            max_db_connections: 8,
            geo: GeoConfig::default(),
            lease_s: 120,
            heartbeat_interval_s: 30,
            online_window_s: 90,
            max_attempts: 3,
            run_deadline_s: 600,
            offer_timeout_s: 30,
            min_check_interval_s: 60,
            allow_private_sites: false,
            allow_site_nets: Vec::new(),
            dns_nameserver: None,
            scheduler_tick_ms: 1000,
            max_body_bytes: 256 * 1024,
            isp_requests_per_minute: 60,
            sign_in_attempts_per_minute: 10,
            calibration_bytes_per_day: 64 * 1024 * 1024,
            admin_token: None,
            stripe: StripeConfig::default(),
            presence_flush_ms: 5_000,
            agent_refresh_ms: 2_000,
            max_held_agents: 250_000,
            max_lease_wait_s: 25,
            keep_alive_s: 75,
            fold_interval_ms: 1_000,
            rollup_interval_s: 600,
            result_retention_days: 90,
            alert_interval_ms: 10_000,
            alert_retry_ms: 10_000,
            smtp_url: None,
            mail_from: "Lastmile <lastmile@localhost>".into(),
        }
    }
}

impl ControllerConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<ControllerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }

    /// The scheduler's knobs (lease, online window, attempts, run deadline).
    pub fn scheduling_policy(&self) -> lastmile_domain::scheduling::SchedulingPolicy {
        lastmile_domain::scheduling::SchedulingPolicy {
            lease_us: (self.lease_s as i64) * 1_000_000,
            online_window_us: (self.online_window_s as i64) * 1_000_000,
            max_attempts: self.max_attempts.max(1) as i32,
            run_deadline_us: (self.run_deadline_s as i64) * 1_000_000,
            offer_us: (self.offer_timeout_s.max(1) as i64) * 1_000_000,
        }
    }

    /// What site verification may connect to, from `allow_private_sites`,
    /// `allow_site_nets` and `dns_nameserver`.
    pub fn site_fetch_policy(&self) -> lastmile_domain::sites::FetchPolicy {
        lastmile_domain::sites::FetchPolicy::new(
            self.dns_nameserver,
            self.allow_private_sites,
            &self.allow_site_nets,
        )
    }

    /// The database URL in force: `database_url`, else a SQLite file in `data_dir`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => self.data_dir.join("lastmile.db").display().to_string(),
        }
    }

    /// Where Stripe sends people back to: the configured public URL or the listen address.
    pub fn public_url(&self) -> String {
        match &self.stripe.public_url {
            Some(u) if !u.is_empty() => u.trim_end_matches('/').to_owned(),
            _ => format!("http://{}", self.listen),
        }
    }

    /// Lease duration.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_s)
    }
}
