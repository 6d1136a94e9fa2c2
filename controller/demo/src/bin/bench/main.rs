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

mod agents;
mod choice;
mod harness;
mod http;
mod ingest;
mod reflector;
mod storage;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
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
