//! What a serving controller holds: [`AppState`], everything a request handler or the
//! scheduler needs, opened once from the config.

use std::future::Future;
use std::sync::Arc;

use lastmile_domain::check_lists::CheckLists;
use lastmile_domain::geo::Geo;
use lastmile_domain::isp::{LogMailer, Mailer};
use lastmile_domain::scheduling::SchedulingPolicy;
use lastmile_domain::stripe_api::StripeApi;
use lastmile_storage::Db;

use crate::config::ControllerConfig;
use crate::metrics::Metrics;
use lastmile_domain::rate_limit::RateLimiter;

/// Owner tokens remembered at most (see `lastmile_domain::token_cache`).
const OWNER_TOKENS_HELD: usize = 10_000;

/// Checks held at most in owners' check lists (see `lastmile_domain::check_lists`):
/// about 1 KiB of JSON each.
const LISTED_CHECKS_HELD: usize = 50_000;

/// Everything a request handler or the scheduler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub geo: Arc<Geo>,
    pub config: Arc<ControllerConfig>,
    pub metrics: Arc<Metrics>,
    pub policy: SchedulingPolicy,
    /// Request quotas of ISP tokens.
    pub isp_quota: Arc<RateLimiter>,
    /// Dashboard sign-in attempts (guessing passwords is slow on purpose).
    pub sign_in_quota: Arc<RateLimiter>,
    /// Delivers ASN ownership codes and alert emails.
    pub mailer: Arc<dyn Mailer>,
    /// Stripe's API, when a secret key is configured.
    pub stripe: Option<Arc<StripeApi>>,
    /// Agents' calibrations in progress, as this replica timed them.
    pub calibrations: Arc<crate::calibration_timing::Sessions>,
    /// The agents this replica serves, in memory (tokens, heartbeats, idle leases).
    pub presence: Arc<lastmile_domain::presence::Presence>,
    /// Owners' API tokens found valid in the last `agent_refresh_ms`.
    pub owner_tokens: Arc<lastmile_domain::token_cache::TokenCache>,
    /// Owners' `GET /api/v1/checks` answers (JSON), until their checks change.
    pub check_lists: Arc<CheckLists<actix_web::web::Bytes>>,
    /// Group commit of accepted results into aggregates and the ledger.
    pub folder: Arc<crate::folding::Folder>,
    /// Group commit of agents' results into the results table.
    pub acceptor: Arc<crate::accepting::Acceptor>,
    /// Where the agent listener listens, once bound (`server::bind_agent_listener`).
    pub agent_listener: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

impl AppState {
    /// Opens the database (running migrations) and the geo databases. Blocking.
    pub fn open(config: ControllerConfig) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display())
        })?;
        if let Some(url) = &config.agent_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("agent_url {url:?} is not a URL: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
                "agent_url {url:?} must be an http:// or https:// URL with a host"
            );
        }
        let db = Db::open(&config.effective_database_url(), config.max_db_connections)?;
        let geo = Geo::open(&config.geo)?;
        let stripe = StripeApi::from_config(&config.stripe)?.map(Arc::new);
        let mailer: Arc<dyn Mailer> = match &config.smtp_url {
            Some(url) if !url.is_empty() => {
                Arc::new(crate::smtp::SmtpMailer::new(url, &config.mail_from)?)
            }
            _ => Arc::new(LogMailer),
        };
        Ok(AppState {
            stripe,
            db,
            geo: Arc::new(geo),
            policy: config.scheduling_policy(),
            isp_quota: Arc::new(RateLimiter::new(config.isp_requests_per_minute)),
            sign_in_quota: Arc::new(RateLimiter::new(config.sign_in_attempts_per_minute)),
            mailer,
            calibrations: Arc::default(),
            presence: Arc::new(lastmile_domain::presence::Presence::new(
                config.scheduling_policy().online_window_us,
                config.max_held_agents,
                lastmile_domain::clock::now_us(),
            )),
            owner_tokens: Arc::new(lastmile_domain::token_cache::TokenCache::new(
                config.agent_refresh_ms as i64 * 1_000,
                OWNER_TOKENS_HELD,
            )),
            check_lists: Arc::new(CheckLists::new(LISTED_CHECKS_HELD)),
            folder: Arc::default(),
            acceptor: Arc::default(),
            agent_listener: Arc::default(),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The agent listener's URL as heartbeats name it to agents: the configured
    /// `agent_url`; else, when the listener and the API both listen on loopback (one
    /// machine: a trial, the demo, the tests), the listener's own address; else none
    /// (an address the controller binds is not one agents elsewhere can be told to use).
    pub fn agent_url(&self) -> Option<String> {
        if let Some(url) = &self.config.agent_url {
            return Some(url.clone());
        }
        let addr = self.agent_listener.get()?;
        (addr.ip().is_loopback() && self.config.listen.ip().is_loopback())
            .then(|| format!("http://{addr}"))
    }

    /// Awaits `write`, a write to `owner_id`'s checks, then forgets the owner's check
    /// list here whatever its outcome (a failed write may have committed before
    /// failing), so the owner's next read sees it; other replicas learn of it from
    /// their change feed.
    pub async fn writing_checks<T>(&self, owner_id: &str, write: impl Future<Output = T>) -> T {
        let outcome = write.await;
        self.check_lists.forget([owner_id]);
        outcome
    }
}
