//! `lastmile-reflector`: what a site owner runs next to their game or media server so
//! that agents can run `udp` checks against it. The server itself is
//! `lastmile_agent::reflector`; this binary only parses flags, logs and waits for
//! Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use lastmile_agent::reflector::Reflector;
use lastmile_protocol::reflector::MAX_TOKEN_LEN;

/// Answers Lastmile udp checks: run it next to your game or media server with your
/// site's verification token; agents stream only to a reflector that answers with it.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address and UDP port to answer on (the port of the check's udp://host:port URL).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7301")]
    listen: SocketAddr,
    /// Your site's verification token (lms_…), the one you publish to prove the site is yours.
    #[arg(long, env = "LASTMILE_REFLECTOR_TOKEN", hide_env_values = true,
          value_parser = parse_token)]
    token: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "LASTMILE_LOG_JSON")]
    log_json: bool,
}

/// A token a welcome can carry: not empty, at most [`MAX_TOKEN_LEN`] bytes.
fn parse_token(token: &str) -> Result<String, String> {
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token is longer than {MAX_TOKEN_LEN} bytes"));
    }
    Ok(token.to_owned())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the reflector is one socket's loop.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    lastmile_logs::init("info", lastmile_logs::Format::json_if(cli.log_json));
    let reflector = Reflector::start(cli.listen, cli.token)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!("reflector listening on {}", reflector.addr());
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    tracing::info!("reflector stopping");
    Ok(())
}
