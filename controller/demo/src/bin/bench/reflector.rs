//! `bench reflector`: how many streams one reflector carries, for owners sizing theirs.
//!
//! The bench starts `lastmile-reflector` as a child process (the release build beside
//! this binary, or `--reflector PATH`) on a free UDP port of 127.0.0.1, then for each
//! step of `--steps` (concurrent streams, e.g. `100,500,1000`) runs that many streams
//! as agents send them: each from a socket of its own, a hello for its cookie, then a
//! probe of `--packet-bytes` (172) every `--interval-ms` (20) for `--hold-s` (10)
//! seconds, starts spread over one interval. It prints per step: probes offered and
//! echoes received a second, the share lost, the round trip's p50 and p99, and the
//! reflector's CPU (per cent of one core, and µs per probe) and RSS. The client shares
//! the machine's cores with the reflector: read the CPU per probe, and where the loss
//! starts. Traffic goes to 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use lastmile_protocol::reflector::{self, Answer, Packet};
use tokio::net::UdpSocket;

use super::harness::usage;

const TOKEN: &str = "lms_bench";

struct Args {
    steps: Vec<usize>,
    interval: Duration,
    hold: Duration,
    packet_bytes: usize,
    reflector: Option<PathBuf>,
}

fn parse(flags: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args {
        steps: vec![100, 500, 1000],
        interval: Duration::from_millis(20),
        hold: Duration::from_secs(10),
        packet_bytes: 172,
        reflector: None,
    };
    let mut it = flags.into_iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--steps" => {
                a.steps = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--steps N,N,..")?
            }
            "--interval-ms" => a.interval = Duration::from_millis(value.parse()?),
            "--hold-s" => a.hold = Duration::from_secs(value.parse()?),
            "--packet-bytes" => a.packet_bytes = value.parse()?,
            "--reflector" => a.reflector = Some(value.into()),
            other => bail!(
                "unknown flag {other} (flags: --steps N,N,.. --interval-ms MS --hold-s S --packet-bytes B --reflector PATH)"
            ),
        }
    }
    if a.steps.is_empty() || a.steps.iter().any(|&s| s == 0 || s > 10_000) {
        bail!("--steps: 1 to 10000 streams a step");
    }
    Ok(a)
}

/// The reflector process, killed when dropped.
struct ReflectorProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ReflectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_reflector(given: Option<PathBuf>) -> anyhow::Result<ReflectorProcess> {
    let binary = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("lastmile-reflector"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: `cargo build --release -p lastmile-agent --bin lastmile-reflector` first, or pass --reflector PATH",
            binary.display()
        );
    }
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new(&binary)
        .args(["--listen", &addr.to_string(), "--token", TOKEN])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    Ok(ReflectorProcess { child, addr })
}

/// What one stream saw.
struct StreamTally {
    sent: u64,
    echoed: u64,
    rtt_us: Histogram<u64>,
}

/// Says hello until welcomed (bounded), returns the cookie.
async fn welcome(socket: &UdpSocket, session: u64) -> anyhow::Result<u64> {
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        socket.send(&reflector::hello(session)).await?;
        let wait = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await;
        if let Ok(Ok(n)) = wait {
            if let Answer::Welcomed { cookie } = reflector::judge_answer(&buf[..n], session, TOKEN)
            {
                return Ok(cookie);
            }
        }
    }
    bail!("the reflector did not welcome session {session}")
}

async fn one_stream(
    to: SocketAddr,
    session: u64,
    delay: Duration,
    args: (Duration, Duration, usize),
) -> anyhow::Result<StreamTally> {
    let (interval, hold, bytes) = args;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(to).await?;
    let cookie = welcome(&socket, session).await?;
    tokio::time::sleep(delay).await;
    let start = Instant::now();
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut tally = StreamTally {
        sent: 0,
        echoed: 0,
        rtt_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = [0u8; 2048];
    let stop_sending = start + hold;
    let stop = stop_sending + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= stop {
            break;
        }
        tokio::select! {
            _ = ticks.tick(), if now < stop_sending => {
                let seq = sent_at.len() as u32;
                let probe = reflector::probe(session, cookie, seq, 0, bytes);
                if socket.send(&probe).await.is_ok() {
                    sent_at.push(Instant::now());
                    tally.sent += 1;
                }
            }
            got = socket.recv(&mut buf) => {
                if let Ok(n) = got {
                    if let Ok(Packet::Echo { seq, .. }) = reflector::decode(&buf[..n]) {
                        if let Some(at) = sent_at.get(seq as usize) {
                            tally.echoed += 1;
                            tally.rtt_us.saturating_record(at.elapsed().as_micros() as u64);
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(stop.into()) => {}
        }
    }
    Ok(tally)
}

pub fn main(flags: Vec<String>) -> anyhow::Result<()> {
    let args = parse(flags)?;
    let process = start_reflector(args.reflector.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "Lastmile reflector bench: streams of a {}-byte probe every {} ms, {} s a step, against {}",
        args.packet_bytes,
        args.interval.as_millis(),
        args.hold.as_secs(),
        process.addr
    );
    println!(
        "\n{:>8} {:>10} {:>10} {:>7} {:>9} {:>9} {:>8} {:>9} {:>8}",
        "streams",
        "offered/s",
        "echoes/s",
        "lost %",
        "rtt p50",
        "rtt p99",
        "cpu %",
        "µs/probe",
        "rss MiB"
    );
    let mut session = 0u64;
    for &streams in &args.steps {
        let before = usage(process.child.id())?;
        let began = Instant::now();
        let tallies = runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..streams {
                session += 1;
                let delay = args.interval * i as u32 / streams as u32;
                tasks.spawn(one_stream(
                    process.addr,
                    session,
                    delay,
                    (args.interval, args.hold, args.packet_bytes),
                ));
            }
            let mut tallies = Vec::with_capacity(streams);
            while let Some(done) = tasks.join_next().await {
                tallies.push(done??);
            }
            Ok::<_, anyhow::Error>(tallies)
        })?;
        let elapsed = began.elapsed();
        let after = usage(process.child.id())?;
        let (mut sent, mut echoed) = (0u64, 0u64);
        let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for t in &tallies {
            sent += t.sent;
            echoed += t.echoed;
            rtt.add(&t.rtt_us)?;
        }
        let hold = args.hold.as_secs_f64();
        let cpu = after.cpu.saturating_sub(before.cpu);
        println!(
            "{:>8} {:>10.0} {:>10.0} {:>7.2} {:>7.2}ms {:>7.2}ms {:>8.1} {:>9.2} {:>8.1}",
            streams,
            sent as f64 / hold,
            echoed as f64 / hold,
            (sent - echoed.min(sent)) as f64 * 100.0 / sent.max(1) as f64,
            rtt.value_at_quantile(0.5) as f64 / 1000.0,
            rtt.value_at_quantile(0.99) as f64 / 1000.0,
            cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / echoed.max(1) as f64,
            after.rss_kib as f64 / 1024.0,
        );
    }
    Ok(())
}
