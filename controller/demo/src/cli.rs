//! The command line of `lastmile-demo`: the whole product on this machine (controller, target site, 12 agents
//! behind emulated links) and the SLA report at the end. The README's first command.

use std::path::PathBuf;

use crate::DemoOptions;
use clap::Parser;

/// Run the whole Lastmile product on this machine: a controller, a target site, 12 probe
/// agents behind emulated links, and a report at the end.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Also write DIR/report.json (exactly what the report API serves),
    /// DIR/report_by_class.json, DIR/page_report.json, DIR/download_report.json,
    /// DIR/speed_report.json, DIR/stream_report.json, DIR/game_report.json, DIR/isp_report.json,
    /// DIR/ledger.json (the ledger's trial balance) and DIR/leaderboard.json.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// How many runs of the demo check to make (22: enough for p95 intervals per class).
    #[arg(long, default_value_t = crate::DEFAULT_RUNS)]
    runs: u32,
    /// How many runs of the page and download checks to make (default: --runs, at most 5).
    #[arg(long)]
    page_runs: Option<u32>,
    /// Then keep running (until Ctrl-C) and print the dashboard's address and demo sign-ins.
    #[arg(long)]
    serve: bool,
    /// Database URL: postgres://... runs the demo on PostgreSQL (the database must exist);
    /// unset means an embedded SQLite file in a temporary directory.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

/// Parses the command line and runs what it asks for.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    lastmile_logs::init("warn", lastmile_logs::Format::Text);
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(crate::run(DemoOptions {
        out: cli.out,
        database_url: cli.database_url,
        runs: cli.runs,
        page_runs: cli.page_runs,
        verbose: true,
        serve: cli.serve,
    }))?;
    // Broken physics fails the demo; physics this machine's load left not conclusive was
    // said in the output and does not.
    if let crate::Physics::Broken(why) = &outcome.physics {
        anyhow::bail!("the report does not show the emulated links' physics: {why}");
    }
    if let crate::Physics::Broken(why) = &outcome.page_physics {
        anyhow::bail!("the page check's report does not show the emulated links' physics: {why}");
    }
    if let crate::Physics::Broken(why) = &outcome.download_physics {
        anyhow::bail!("the download's goodput does not show the emulated links' rates: {why}");
    }
    if let crate::Physics::Broken(why) = &outcome.speed_physics {
        anyhow::bail!("the throughput loads do not show the emulated links: {why}");
    }
    if let crate::Physics::Broken(why) = &outcome.stream_physics {
        anyhow::bail!("the stream does not play as the emulated links' rates say: {why}");
    }
    Ok(())
}
