//! `cargo run --release -p lastmile-demo --bin bench -- [storage|agents|ingest|http|choice|reflector] [flags]`: the
//! benchmarks. Nothing here is a test: each prints figures.
//!
//! - `storage` (the default): ingest through the full accept path on each backend, and
//!   an SLA report from aggregates against `percentile_cont` over the raw rows
//!   ([`storage`]).
//! - `agents`: a load generator that simulates enrolled agents at the real agent's
//!   cadence against a controller process it starts, and prints per step of agents the
//!   request rate, each call's latency, errors, and the controller's CPU and memory
//!   ([`agents`]).
//! - `ingest`: results submitted over the HTTP API to a controller process it starts,
//!   single or in batches, and a raw `COPY` of the same rows into PostgreSQL beside it
//!   (the median of three copies) ([`ingest`]).
//! - `http`: authenticated API calls (an owner's GET, an agent's idle lease) under
//!   `wrk`, side by side with an actix-web hello world, and on PostgreSQL `pgbench`
//!   sending an owner's GET's statement straight to the database ([`http`]).
//! - `choice`: what choosing a run's agents costs at 10k and 100k agents, and whether
//!   runs rotate over them ([`choice`]).
//! - `reflector`: how many udp streams one `lastmile-reflector` carries: echoes a
//!   second, loss, round trip and its CPU per probe ([`reflector`]).

/// The controller's allocator (`lastmile-controller`'s `main.rs`): `bench ingest
/// --in-process` runs the controller's accept path in this process, and with glibc's
/// malloc that path spent about a fifth of its CPU time in the allocator (`perf`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod agents;
mod choice;
mod harness;
mod http;
mod ingest;
mod reflector;
mod storage;

/// What `bench --help` prints (each bench's module documentation says what its flags
/// mean and their defaults).
const USAGE: &str = "\
usage: bench [BENCH] [FLAGS]   (cargo run --release -p lastmile-demo --bin bench -- BENCH FLAGS)

benches, each printing figures (none is a test):
  storage    (the default) the full accept path on each backend, and an SLA report
             from aggregates against percentile_cont over the raw rows
             --results N  --raw-rows N  --threads N  --pg ADMIN_URL
  agents     simulated enrolled agents at the real cadence against a controller it
             starts: per step, requests/s, each call's p50/p99, errors, CPU and RSS
             --steps N,N,..  --hold-s S  --heartbeat-s S  --idle-poll-s S  --long-poll
             --agent-listener  --work-every-s S  --work-agents N  --one-address
             --hello  --pg ADMIN_URL  --controller PATH
  ingest     results over the HTTP API (or --in-process), and a raw COPY of the same
             rows into PostgreSQL beside it, printed as a ratio
             --results N  --batch N  --connections N  --agents N  --in-process
             --group N  --history N  --pg ADMIN_URL  --controller PATH
  http       authenticated API calls under wrk beside an actix-web hello world
             --duration-s S  --connections N  --checks N  --latency  --timeout S
             --bindir DIR  --pg ADMIN_URL  --controller PATH
  choice     what choosing a run's agents costs at 10k and 100k agents, and rotation
             --steps N,N,..  --runs N  --per-run N  --pg ADMIN_URL
  reflector  how many udp streams one lastmile-reflector carries
             --steps N,N,..  --hold-s S  --interval-ms MS  --packet-bytes N
             --reflector PATH

Each bench's flags and defaults are described at the top of
controller/demo/src/bin/bench/BENCH.rs.";

/// Whether the command line asks for the usage instead of a bench.
fn wants_help(args: &[String]) -> bool {
    args.iter()
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "help"))
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if wants_help(&args) {
        println!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("agents") => agents::main(args.split_off(1)),
        Some("choice") => choice::main(args.split_off(1)),
        Some("http") => http::main(args.split_off(1)),
        Some("hello") => http::hello(args.split_off(1)),
        Some("ingest") => ingest::main(args.split_off(1)),
        Some("reflector") => reflector::main(args.split_off(1)),
        Some("storage") => storage::main(args.split_off(1)),
        _ => storage::main(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_asked_for_anywhere_on_the_command_line() {
        let line = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_owned).collect() };
        assert!(wants_help(&line("--help")));
        assert!(wants_help(&line("ingest --results 10 -h")));
        assert!(wants_help(&line("help")));
        assert!(!wants_help(&line(
            "ingest --results 10 --pg postgres://h/db"
        )));
    }

    #[test]
    fn the_usage_names_every_bench_and_its_flags() {
        for bench in ["storage", "agents", "ingest", "http", "choice", "reflector"] {
            assert!(USAGE.contains(&format!("\n  {bench} ")), "{bench}");
        }
        for flag in [
            "--in-process",
            "--group",
            "--agent-listener",
            "--packet-bytes",
        ] {
            assert!(USAGE.contains(flag), "{flag}");
        }
    }
}
