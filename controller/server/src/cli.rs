//! The command line of `lastmile-controller`: serve the API, migrate, manage accounts,
//! pay volunteers. Parses flags (each also from `LASTMILE_*` / `DATABASE_URL` and a TOML file) and
//! hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ControllerConfig;
use crate::server;
use anyhow::Context;
use clap::{Parser, Subcommand};
use lastmile_domain::{accounts, billing, isp, payouts};
use lastmile_storage::Db;

/// Lastmile controller: schedules checks on volunteer probe agents and reports SLAs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (flags and environment win over it).
    #[arg(long, global = true, env = "LASTMILE_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: postgres://... for PostgreSQL; unset means SQLite in the data dir.
    #[arg(long, global = true, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Directory for the embedded SQLite database and local state.
    #[arg(long, global = true, env = "LASTMILE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "LASTMILE_LOG_JSON")]
    log_json: bool,
    /// Stripe secret API key; without it there are no card purchases and no payouts.
    #[arg(
        long,
        global = true,
        env = "LASTMILE_STRIPE_SECRET_KEY",
        hide_env_values = true
    )]
    stripe_secret_key: Option<String>,
    /// Signing secret of the Stripe webhook endpoint (`/api/v1/stripe/webhook`).
    #[arg(
        long,
        global = true,
        env = "LASTMILE_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    stripe_webhook_secret: Option<String>,
    /// Stripe API base URL (default: Stripe itself).
    #[arg(long, global = true, env = "LASTMILE_STRIPE_API_BASE")]
    stripe_api_base: Option<String>,
    /// Pay a volunteer out once their earnings reach this many cents (default 1000).
    #[arg(long, global = true, env = "LASTMILE_PAYOUT_THRESHOLD_MINOR")]
    payout_threshold_minor: Option<i64>,
    /// Seconds between the server's payout passes; 0 turns them off (default 3600).
    #[arg(long, global = true, env = "LASTMILE_PAYOUT_INTERVAL_S")]
    payout_interval_s: Option<u64>,
    /// The controller's public URL, where Stripe sends people back after paying or
    /// onboarding (default http://<listen>).
    #[arg(long, global = true, env = "LASTMILE_PUBLIC_URL")]
    public_url: Option<String>,
    /// SMTP relay for alert emails and ISP ownership codes: smtp://host:25,
    /// smtp://host:587?tls=required, smtps://user:password@host:465. Unset: mail goes to
    /// the log and email alert channels are refused.
    #[arg(long, global = true, env = "LASTMILE_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// Sender of the controller's mail (default `Lastmile <lastmile@localhost>`).
    #[arg(long, global = true, env = "LASTMILE_MAIL_FROM")]
    mail_from: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The example configuration: every setting, its default, what it does.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../deploy/lastmile.example.toml");

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented TOML file of every setting with its default (geo overrides
    /// included), to start a `--config` file from.
    Example,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and run the scheduler.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "LASTMILE_LISTEN")]
        listen: Option<SocketAddr>,
        /// Address of the agent listener: agents' heartbeats, leases, path traces and
        /// results, at far less memory per connected agent (default: none).
        #[arg(long, env = "LASTMILE_AGENT_LISTEN")]
        agent_listen: Option<SocketAddr>,
        /// The agent listener's URL as agents reach it, named in heartbeats' answers
        /// (default: http://<agent-listen> when it and --listen are loopback, else none).
        #[arg(long, env = "LASTMILE_AGENT_URL")]
        agent_url: Option<String>,
        /// MaxMind City database (GeoLite2-City layout).
        #[arg(long, env = "LASTMILE_CITY_DB")]
        city_db: Option<PathBuf>,
        /// MaxMind ASN database (GeoLite2-ASN layout).
        #[arg(long, env = "LASTMILE_ASN_DB")]
        asn_db: Option<PathBuf>,
        /// Bearer token for the operators' endpoints (`/api/v1/ops/...`); unset turns
        /// them off.
        #[arg(long, env = "LASTMILE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Nameserver (ip:port) that DNS TXT ownership checks ask; default: the system's.
        #[arg(long, env = "LASTMILE_DNS_NAMESERVER")]
        dns_nameserver: Option<SocketAddr>,
        /// Local testing: let site verification fetch private and loopback addresses.
        #[arg(long, env = "LASTMILE_ALLOW_PRIVATE_SITES")]
        allow_private_sites: bool,
        /// Let site verification fetch this network although it is not public (a lab
        /// LAN), CIDR. Repeatable; comma-separated in the environment.
        #[arg(
            long,
            value_name = "CIDR",
            env = "LASTMILE_ALLOW_SITE_NET",
            value_delimiter = ','
        )]
        allow_site_net: Vec<ipnet::IpNet>,
        /// Whole days before today whose raw results are kept (0: all); reports,
        /// balances and the leaderboard keep what they counted from older ones.
        #[arg(long, env = "LASTMILE_RESULT_RETENTION_DAYS")]
        result_retention_days: Option<u32>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// The configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage owner accounts and their credit.
    Owner {
        #[command(subcommand)]
        command: OwnerCommand,
    },
    /// Manage volunteer accounts.
    Volunteer {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Manage ISP accounts and the ASNs they own.
    Isp {
        #[command(subcommand)]
        command: IspCommand,
    },
    /// Pay volunteers through Stripe Connect.
    Payouts {
        #[command(subcommand)]
        command: PayoutsCommand,
    },
}

#[derive(Subcommand)]
enum PayoutsCommand {
    /// One payout pass: retry payouts in transit (same idempotency key), then pay out
    /// every volunteer with payouts enabled whose earnings reach the threshold.
    Run,
}

#[derive(Subcommand)]
enum IspCommand {
    /// Create an ISP owning the given ASNs and print its API token (shown only once).
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// An autonomous system number it operates. Repeatable.
        #[arg(long = "asn", required = true)]
        asns: Vec<u32>,
    },
    /// Record the registered contact address that ownership proofs for an ASN go to.
    Contact {
        #[arg(long)]
        asn: u32,
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum OwnerCommand {
    /// Create an owner and print its API token (shown only once).
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Grant an owner test credit (an operator grant: a ledger transaction from the
    /// operator-grants account to the owner's credit).
    Credit {
        /// The owner's id (as printed by `owner create`).
        #[arg(long)]
        owner: String,
        /// The amount in minor units (cents): 1000 is 10.00.
        #[arg(long)]
        amount_minor: i64,
        /// ISO 4217 currency code; prices are in usd.
        #[arg(long, default_value = "usd")]
        currency: String,
        /// Names this grant so that running the command again with the same id changes
        /// nothing (default: a new grant each time).
        #[arg(long)]
        grant_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account and print its secret (shown only once).
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
    },
}

fn load_config(cli: &Cli) -> anyhow::Result<ControllerConfig> {
    let mut config = match &cli.config {
        Some(path) => ControllerConfig::from_file(path)?,
        None => ControllerConfig::default(),
    };
    if let Some(url) = &cli.database_url {
        config.database_url = Some(url.clone());
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if cli.smtp_url.is_some() {
        config.smtp_url = cli.smtp_url.clone();
    }
    if let Some(from) = &cli.mail_from {
        config.mail_from = from.clone();
    }
    let stripe = &mut config.stripe;
    if cli.stripe_secret_key.is_some() {
        stripe.secret_key = cli.stripe_secret_key.clone();
    }
    if cli.stripe_webhook_secret.is_some() {
        stripe.webhook_secret = cli.stripe_webhook_secret.clone();
    }
    if cli.stripe_api_base.is_some() {
        stripe.api_base = cli.stripe_api_base.clone();
    }
    if let Some(t) = cli.payout_threshold_minor {
        stripe.payout_threshold_minor = t;
    }
    if let Some(i) = cli.payout_interval_s {
        stripe.payout_interval_s = i;
    }
    if cli.public_url.is_some() {
        stripe.public_url = cli.public_url.clone();
    }
    Ok(config)
}

/// Opens the database a command works on, and says which on stderr: a command run from
/// another directory would otherwise quietly work on a new, empty SQLite file there.
fn open_db(config: &ControllerConfig) -> anyhow::Result<Db> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let url = config.effective_database_url();
    let sqlite = !url.starts_with("postgres");
    let new = sqlite && !std::path::Path::new(&url).exists();
    let db = Db::open(&url, 2)?;
    let shown = if sqlite {
        std::fs::canonicalize(&url).map_or(url.clone(), |p| p.display().to_string())
    } else {
        lastmile_storage::redact(&url)
    };
    eprintln!(
        "database: {shown} ({}{})",
        db.backend().name(),
        if new {
            ", new and empty: created now"
        } else {
            ""
        }
    );
    Ok(db)
}

/// Parses the command line and runs what it asks for.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    lastmile_logs::init("info", lastmile_logs::Format::json_if(cli.log_json));
    let config = load_config(&cli)?;

    match cli.command {
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{EXAMPLE_CONFIG}");
            Ok(())
        }
        Command::Migrate => {
            let db = open_db(&config)?;
            println!("database is up to date ({})", db.backend().name());
            Ok(())
        }
        Command::Owner {
            command:
                OwnerCommand::Credit {
                    owner,
                    amount_minor,
                    currency,
                    grant_id,
                },
        } => {
            let db = open_db(&config)?;
            let currency: lastmile_billing::Currency = currency.parse()?;
            let amount = lastmile_billing::Money::new(amount_minor, currency);
            let grant_id = grant_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let posted = billing::grant_credit(&mut *db.conn()?, &owner, amount, &grant_id)?;
            let balance = billing::balances(&mut *db.conn()?, billing::HolderKind::Owner, &owner)?;
            let credit = balance
                .balances
                .iter()
                .find(|b| b.kind == "owner_credit" && b.currency == currency.as_str())
                .map_or(0, |b| b.balance_minor);
            println!(
                "{} {amount} to owner {owner} (grant {grant_id}); credit now {}",
                if posted.duplicate {
                    "already granted"
                } else {
                    "granted"
                },
                lastmile_billing::Money::new(credit, currency)
            );
            Ok(())
        }
        Command::Payouts {
            command: PayoutsCommand::Run,
        } => {
            let db = open_db(&config)?;
            let stripe = lastmile_domain::stripe_api::StripeApi::from_config(&config.stripe)?
                .context("Stripe is not configured: set LASTMILE_STRIPE_SECRET_KEY")?;
            let threshold = lastmile_billing::Money::new(
                config.stripe.payout_threshold_minor,
                lastmile_billing::pricing::PRICE_CURRENCY,
            );
            let runtime = tokio::runtime::Runtime::new()?;
            let summary = runtime.block_on(payouts::run_pass(&db, &stripe, threshold))?;
            println!(
                "payout pass: {} started, {} completed ({}), {} failed, {} still in transit, \
                 {} below the {threshold} threshold",
                summary.started,
                summary.completed,
                lastmile_billing::Money::new(
                    summary.paid_minor,
                    lastmile_billing::pricing::PRICE_CURRENCY
                ),
                summary.failed,
                summary.in_transit,
                summary.below_threshold
            );
            Ok(())
        }
        Command::Owner {
            command: OwnerCommand::Create { name },
        } => {
            let db = open_db(&config)?;
            let (owner, token) = accounts::create_owner(&mut *db.conn()?, &name)?;
            println!(
                "owner {} created; API token (shown only now):\n{token}",
                owner.id
            );
            Ok(())
        }
        Command::Volunteer {
            command: AccountCommand::Create { name },
        } => {
            let db = open_db(&config)?;
            let (volunteer, key) = accounts::create_volunteer(&mut *db.conn()?, &name)?;
            println!(
                "volunteer {} created; enrolment key for their agents (shown only now):\n{key}",
                volunteer.id
            );
            Ok(())
        }
        Command::Isp {
            command: IspCommand::Create { name, asns },
        } => {
            let db = open_db(&config)?;
            let (isp, token) = isp::create(&mut *db.conn()?, &name, &asns)?;
            println!(
                "ISP {} created for {asns:?}; API token (shown only now):\n{token}",
                isp.id
            );
            Ok(())
        }
        Command::Isp {
            command: IspCommand::Contact { asn, email },
        } => {
            let db = open_db(&config)?;
            isp::set_contact(&mut *db.conn()?, asn, &email)?;
            println!("ownership proofs for AS{asn} will be sent to {email}");
            Ok(())
        }
        Command::Serve {
            listen,
            agent_listen,
            agent_url,
            city_db,
            asn_db,
            admin_token,
            dns_nameserver,
            allow_private_sites,
            allow_site_net,
            result_retention_days,
        } => {
            let mut config = config;
            if let Some(days) = result_retention_days {
                config.result_retention_days = days;
            }
            config.allow_private_sites |= allow_private_sites;
            config.allow_site_nets.extend(allow_site_net);
            if dns_nameserver.is_some() {
                config.dns_nameserver = dns_nameserver;
            }
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if agent_listen.is_some() {
                config.agent_listen = agent_listen;
            }
            if agent_url.is_some() {
                config.agent_url = agent_url;
            }
            if city_db.is_some() {
                config.geo.city_db = city_db;
            }
            if asn_db.is_some() {
                config.geo.asn_db = asn_db;
            }
            if admin_token.is_some() {
                config.admin_token = admin_token;
            }
            serve(config)
        }
    }
}

fn serve(config: ControllerConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = crate::AppState::open(config)?;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let agent_listener = server::bind_agent_listener(&state)?;
    tracing::info!(%listen, agent_listen = ?state.agent_listener.get(), agent_url = ?state.agent_url(),
        database = state.db.backend().name(), "controller listening");
    actix_web::rt::System::new().block_on(async move {
        server::run(listener, agent_listener, state, shutdown_signal()).await
    })?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (how systemd and Kubernetes stop a service).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example parses as a config, says exactly the defaults, and names every
    /// setting (those unset by default in a commented `# key = ...` line), so it cannot
    /// fall behind `ControllerConfig`.
    #[test]
    fn the_example_config_names_every_setting_with_its_default() {
        let parsed: ControllerConfig = toml::from_str(EXAMPLE_CONFIG).unwrap();
        let as_json = |c: &ControllerConfig| serde_json::to_value(c).unwrap();
        assert_eq!(as_json(&parsed), as_json(&ControllerConfig::default()));
        let all = as_json(&ControllerConfig::default());
        let mut missing = Vec::new();
        for (key, value) in all.as_object().unwrap() {
            match value.as_object() {
                Some(table) => {
                    if !EXAMPLE_CONFIG.contains(&format!("\n[{key}]\n")) {
                        missing.push(format!("[{key}]"));
                    }
                    for sub in table.keys() {
                        let named = EXAMPLE_CONFIG.contains(&format!("\n{sub} = "))
                            || EXAMPLE_CONFIG.contains(&format!("\n# {sub} = "))
                            || EXAMPLE_CONFIG.contains(&format!(".{sub}]]"));
                        if !named {
                            missing.push(format!("{key}.{sub}"));
                        }
                    }
                }
                None => {
                    let named = EXAMPLE_CONFIG.contains(&format!("\n{key} = "))
                        || EXAMPLE_CONFIG.contains(&format!("\n# {key} = "));
                    if !named {
                        missing.push(key.clone());
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "deploy/lastmile.example.toml lacks {missing:?}"
        );
        // Its commented examples are valid settings too, geo overrides included.
        let uncommented: String = EXAMPLE_CONFIG
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = ") || r.starts_with('['))
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let all_set: ControllerConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(all_set.geo.overrides.len(), 1);
        assert_eq!(all_set.smtp_url.as_deref(), Some("smtp://127.0.0.1:25"));
    }
}
