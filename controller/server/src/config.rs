//! Controller settings: defaults that make the demo need no flag, a TOML file for
//! operators, and `LASTMILE_*` environment variables / flags on top (parsed in `main`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::geo::GeoConfig;

/// Everything the controller can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
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
}

/// Stripe settings (TOML table `[stripe]`, or `LASTMILE_STRIPE_*`). Without a secret
/// key the controller runs without Stripe: owners get credit only by operator grant
/// and no payout is made.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// The platform's secret API key (`sk_live_...` / `sk_test_...`).
    pub secret_key: Option<String>,
    /// The webhook endpoint's signing secret (`whsec_...`).
    pub webhook_secret: Option<String>,
    /// Stripe's API base URL; unset means Stripe itself. Tests and the demo point it
    /// at `lastmile_testbed::stripe::FakeStripe`.
    pub api_base: Option<String>,
    /// A volunteer is paid out once their earnings reach this many minor units (usd).
    pub payout_threshold_minor: i64,
    /// How often the server runs a payout pass, seconds; 0 turns it off (then
    /// `lastmile-controller payouts run` does it).
    pub payout_interval_s: u64,
    /// How long one Stripe request may take before it counts as failed, milliseconds.
    /// A transfer that timed out stays in transit and is retried with the same
    /// idempotency key.
    pub timeout_ms: u64,
    /// The controller's public URL, for the pages Stripe sends people back to after
    /// paying or onboarding; unset means `http://<listen>`.
    pub public_url: Option<String>,
    /// Largest age of a webhook's signed timestamp, seconds.
    pub webhook_tolerance_s: i64,
}

impl Default for StripeConfig {
    fn default() -> Self {
        StripeConfig {
            secret_key: None,
            webhook_secret: None,
            api_base: None,
            payout_threshold_minor: 1_000,
            payout_interval_s: 3_600,
            timeout_ms: 30_000,
            public_url: None,
            webhook_tolerance_s: 300,
        }
    }
}

impl std::fmt::Debug for StripeConfig {
    /// Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("StripeConfig")
            .field("secret_key", &hidden(&self.secret_key))
            .field("webhook_secret", &hidden(&self.webhook_secret))
            .field("api_base", &self.api_base)
            .field("payout_threshold_minor", &self.payout_threshold_minor)
            .field("payout_interval_s", &self.payout_interval_s)
            .field("timeout_ms", &self.timeout_ms)
            .field("public_url", &self.public_url)
            .field("webhook_tolerance_s", &self.webhook_tolerance_s)
            .finish()
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            data_dir: PathBuf::from(".lastmile"),
            max_db_connections: 8,
            geo: GeoConfig::default(),
            lease_s: 120,
            heartbeat_interval_s: 30,
            online_window_s: 90,
            max_attempts: 3,
            run_deadline_s: 600,
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

    /// The database URL in force: the configured one, or the embedded SQLite file.
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
