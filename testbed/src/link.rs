//! An emulated last-mile link: a TCP relay that adds the rate and delay of a line.
//!
//! Kernel `netem` is not available on our machines, so each demo agent reaches the
//! target through one of these relays. We wrote our own small tokio relay rather than
//! use `noxious` (a Toxiproxy port: a separate server driven over a REST API) or
//! `tokio-netem` (stream adapters whose delay and throttle do not compose into the
//! queue-then-propagate model below), because the model is the point: it must match the
//! figures the tests check.
//!
//! # Model
//!
//! Each direction is a pipe. A reader takes what the sender wrote, in segments of at
//! most one MSS (1460 bytes), and books each on the line as it arrives; a writer
//! releases segments like a real link: a serialization queue at the link's rate, then
//! half the round-trip time of propagation:
//!
//! ```text
//! depart_end = max(arrival, previous depart_end) + len * 8 / rate
//! deliver    = depart_end + rtt / 2
//! ```
//!
//! So a small request costs `rtt/2 + len*8/up` one way and a page download is paced at
//! the downstream rate. The serialization queue is the line's, shared by every
//! connection through the link, first come first served: a page load's parallel
//! connections share the rate, and a small answer that arrives behind a download's
//! queued bytes waits for them (the loaded latency a throughput check measures). When
//! one side closes its sending half, the other side's sending half is shut down after
//! everything queued was delivered (half-close is kept).
//!
//! # Limits
//!
//! - A user-space relay cannot delay the TCP handshake: the client's `connect` completes
//!   against the relay at once. The connect phase is therefore *not* shaped.
//! - tokio's timer has millisecond granularity, so each delivery may be up to ~1 ms
//!   late; relative to the demo's RTTs (4 ms and up) that is small but not nothing on
//!   the fibre profile.
//! - The queue is bounded by [`BUFFER`] (250 ms of the line's rate; and 4096 segments,
//!   about 6 MB, per connection): beyond that the relay stops reading and TCP
//!   backpressure reaches the sender, where a full router buffer would drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lastmile_protocol::ConnectionClass;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Physics of one emulated last-mile link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// Downstream rate (towards the agent), bits per second.
    pub down_bps: u64,
    /// Upstream rate (from the agent), bits per second.
    pub up_bps: u64,
    /// Round-trip time added by the link (split half each way).
    pub rtt: Duration,
}

impl LinkProfile {
    /// Typical figures per connection class:
    ///
    /// | class     | down        | up          | RTT    |
    /// |-----------|-------------|-------------|--------|
    /// | dialup    | 56 kbit/s   | 33.6 kbit/s | 150 ms |
    /// | satellite | 25 Mbit/s   | 3 Mbit/s    | 600 ms |
    /// | mobile    | 20 Mbit/s   | 5 Mbit/s    | 60 ms  |
    /// | dsl       | 16 Mbit/s   | 1 Mbit/s    | 40 ms  |
    /// | cable     | 100 Mbit/s  | 10 Mbit/s   | 20 ms  |
    /// | fibre     | 1 Gbit/s    | 500 Mbit/s  | 4 ms   |
    ///
    /// Dial-up is V.90/V.92; DSL is ADSL2+; cable DOCSIS 3.0; fibre GPON; mobile 4G;
    /// satellite a geostationary service.
    pub fn for_class(class: ConnectionClass) -> LinkProfile {
        let (down_bps, up_bps, rtt_ms) = match class {
            ConnectionClass::Dialup => (56_000, 33_600, 150),
            ConnectionClass::Satellite => (25_000_000, 3_000_000, 600),
            ConnectionClass::Mobile => (20_000_000, 5_000_000, 60),
            ConnectionClass::Dsl => (16_000_000, 1_000_000, 40),
            ConnectionClass::Cable => (100_000_000, 10_000_000, 20),
            ConnectionClass::Fibre => (1_000_000_000, 500_000_000, 4),
        };
        LinkProfile {
            down_bps,
            up_bps,
            rtt: Duration::from_millis(rtt_ms),
        }
    }
}

/// Largest segment a reader queues at once (a typical TCP MSS).
const SEGMENT: usize = 1460;
/// Segments one connection's direction may hold in the relay at once.
const QUEUE: usize = 4096;
/// The line's buffer, in time at its rate: what an unmanaged modem or home router
/// queues before it drops (a few hundred milliseconds is common; see the bufferbloat
/// measurements of Gettys and Nichols, 2011). It is what a throughput check's loaded
/// latency sees: a probe's answer waits behind the load's bytes.
pub const BUFFER: Duration = Duration::from_millis(250);

/// A running relay: accepts TCP on [`Link::addr`] and forwards each connection to the
/// upstream address through the shaped link. Dropping it stops everything.
pub struct Link {
    addr: SocketAddr,
    profile: LinkProfile,
    task: JoinHandle<()>,
}

impl Link {
    /// Listens on `listen` (port 0 for any free port) and relays to `upstream`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
    ) -> std::io::Result<Link> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, upstream, profile));
        Ok(Link {
            addr,
            profile,
            task,
        })
    }

    /// Where agents connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The link's physics.
    pub fn profile(&self) -> LinkProfile {
        self.profile
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// When the line is next free in one direction. Shared by every connection through the
/// link, so that parallel connections (a page load's six) share its rate as they share
/// a real line, instead of each getting a line of its own.
type LineClock = Arc<std::sync::Mutex<Option<Instant>>>;

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, profile: LinkProfile) {
    let mut connections = JoinSet::new();
    let up: LineClock = Arc::default();
    let down: LineClock = Arc::default();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (up, down) = (up.clone(), down.clone());
        connections.spawn(async move {
            match TcpStream::connect(upstream).await {
                Ok(server) => relay(client, server, profile, up, down).await,
                Err(e) => tracing::debug!(error = %e, %upstream, "link cannot reach upstream"),
            }
        });
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    profile: LinkProfile,
    up: LineClock,
    down: LineClock,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let one_way = profile.rtt / 2;
    tokio::join!(
        pipe(client_read, server_write, profile.up_bps, one_way, up),
        pipe(server_read, client_write, profile.down_bps, one_way, down),
    );
}

/// One direction of the link: read, book each segment's departure on the line as it
/// arrives (first come, first served across every connection), release on schedule.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    bps: u64,
    one_way: Duration,
    line: LineClock,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; SEGMENT];
        let seconds_per_byte = 8.0 / bps.max(1) as f64;
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let arrival = Instant::now();
                    let depart_end = {
                        let Ok(mut line_free) = line.lock() else {
                            break;
                        };
                        let start = line_free.map_or(arrival, |free| free.max(arrival));
                        let done = start + Duration::from_secs_f64(n as f64 * seconds_per_byte);
                        *line_free = Some(done);
                        done
                    };
                    if tx
                        .send((depart_end, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    // A full buffer: read no more until the line has drained to its
                    // size, so the sender's TCP feels it (backpressure, as a full
                    // router buffer drops and TCP backs off).
                    if depart_end > arrival + BUFFER {
                        tokio::time::sleep_until(depart_end - BUFFER).await;
                    }
                }
            }
        }
        // Dropping `tx` tells the writer that nothing more comes.
    };
    let writer = async move {
        while let Some((depart_end, segment)) = rx.recv().await {
            tokio::time::sleep_until(depart_end + one_way).await;
            if to.write_all(&segment).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Writes `n` bytes (a counting pattern) to every client, then closes.
    async fn source_server(n: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                    let _ = sock.write_all(&data).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        addr
    }

    /// Counts what every client sends and answers with the count once it closes.
    async fn sink_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let _ = sock.read_to_end(&mut got).await;
                    let _ = sock.write_all(got.len().to_string().as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn link(upstream: SocketAddr, profile: LinkProfile) -> Link {
        Link::start("127.0.0.1:0".parse().unwrap(), upstream, profile)
            .await
            .unwrap()
    }

    fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
        (measured - expected).abs() <= expected * tolerance
    }

    async fn median_rtt(profile: LinkProfile, rounds: usize) -> f64 {
        let link = link(echo_server().await, profile).await;
        let mut sock = TcpStream::connect(link.addr()).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let mut samples = Vec::new();
        let mut byte = [0u8; 1];
        for i in 0..rounds {
            let t = std::time::Instant::now();
            sock.write_all(&[i as u8]).await.unwrap();
            sock.read_exact(&mut byte).await.unwrap();
            samples.push(t.elapsed().as_secs_f64());
            assert_eq!(byte[0], i as u8);
        }
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    }

    #[tokio::test]
    async fn rtt_of_a_small_exchange_is_within_5_percent() {
        let fast = LinkProfile {
            down_bps: 1_000_000_000,
            up_bps: 1_000_000_000,
            rtt: Duration::from_millis(100),
        };
        let rtt = median_rtt(fast, 9).await;
        eprintln!("100 ms link: median RTT {:.2} ms", rtt * 1000.0);
        assert!(within(rtt, 0.100, 0.05), "{rtt}");

        let dialup = LinkProfile::for_class(ConnectionClass::Dialup);
        // One byte each way also pays its serialization time.
        let expected = 0.150 + 8.0 / dialup.up_bps as f64 + 8.0 / dialup.down_bps as f64;
        let rtt = median_rtt(dialup, 5).await;
        eprintln!(
            "dial-up link: median RTT {:.2} ms (expected {:.2})",
            rtt * 1000.0,
            expected * 1000.0
        );
        assert!(within(rtt, expected, 0.05), "{rtt}");
    }

    /// Seconds from the first to the last byte of a download of `n` bytes.
    async fn download(profile: LinkProfile, n: usize) -> (f64, Vec<u8>) {
        let link = link(source_server(n).await, profile).await;
        let mut sock = TcpStream::connect(link.addr()).await.unwrap();
        let mut first = [0u8; 1];
        sock.read_exact(&mut first).await.unwrap();
        let t = std::time::Instant::now();
        let mut rest = Vec::new();
        sock.read_to_end(&mut rest).await.unwrap();
        let mut all = first.to_vec();
        all.extend(rest);
        (t.elapsed().as_secs_f64(), all)
    }

    #[tokio::test]
    async fn downstream_rate_is_within_5_percent() {
        for (down_bps, n) in [(2_000_000u64, 500_000usize), (56_000, 14_000)] {
            let profile = LinkProfile {
                down_bps,
                up_bps: 1_000_000_000,
                rtt: Duration::from_millis(10),
            };
            let (seconds, data) = download(profile, n).await;
            // The first segment is not part of the measured span.
            let first_segment = SEGMENT.min(n);
            let rate = (n - first_segment) as f64 * 8.0 / seconds;
            eprintln!("{down_bps} bit/s link: measured {rate:.0} bit/s over {n} bytes");
            assert_eq!(data.len(), n);
            assert!(within(rate, down_bps as f64, 0.05), "{rate}");
        }
    }

    #[tokio::test]
    async fn upstream_rate_is_within_5_percent() {
        let profile = LinkProfile {
            down_bps: 1_000_000_000,
            up_bps: 1_000_000,
            rtt: Duration::from_millis(10),
        };
        let link = link(sink_server().await, profile).await;
        let mut sock = TcpStream::connect(link.addr()).await.unwrap();
        let n = 150_000usize;
        let t = std::time::Instant::now();
        sock.write_all(&vec![7u8; n]).await.unwrap();
        sock.shutdown().await.unwrap();
        let mut answer = String::new();
        sock.read_to_string(&mut answer).await.unwrap();
        // Upload time plus one RTT for the answer to come back.
        let seconds = t.elapsed().as_secs_f64() - 0.010;
        let rate = n as f64 * 8.0 / seconds;
        eprintln!("1 Mbit/s uplink: measured {rate:.0} bit/s");
        assert_eq!(answer, n.to_string());
        assert!(within(rate, 1_000_000.0, 0.05), "{rate}");
    }

    /// A server that streams bytes to a client whose first byte is `b'D'` until it
    /// goes, and echoes for any other.
    async fn download_or_echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = sock.set_nodelay(true);
                    let mut first = [0u8; 1];
                    if sock.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    if first[0] == b'D' {
                        let chunk = vec![1u8; 64 * 1024];
                        while sock.write_all(&chunk).await.is_ok() {}
                        return;
                    }
                    let _ = sock.write_all(&first).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_small_answer_queued_behind_a_download_waits_for_the_buffer() {
        let profile = LinkProfile {
            down_bps: 8_000_000,
            up_bps: 8_000_000,
            rtt: Duration::from_millis(20),
        };
        let link = link(download_or_echo_server().await, profile).await;
        let mut echo = TcpStream::connect(link.addr()).await.unwrap();
        echo.set_nodelay(true).unwrap();
        let mut byte = [0u8; 1];
        let mut ping = async |echo: &mut TcpStream, i: u8| {
            let t = std::time::Instant::now();
            echo.write_all(&[i]).await.unwrap();
            echo.read_exact(&mut byte).await.unwrap();
            t.elapsed().as_secs_f64()
        };
        // The middle of three, as under load below: one ping can meet a busy machine.
        let mut idle = Vec::new();
        for i in 0..3 {
            idle.push(ping(&mut echo, b'E' + i).await);
        }
        idle.sort_by(f64::total_cmp);
        let idle = idle[1];
        let mut bulk = TcpStream::connect(link.addr()).await.unwrap();
        bulk.write_all(b"D").await.unwrap();
        let draining = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            // Bounded: the test ends by aborting it.
            while bulk.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        // Once the download filled the line's buffer, a ping waits behind it.
        tokio::time::sleep(BUFFER * 2).await;
        let mut loaded = Vec::new();
        for i in 0..5 {
            loaded.push(ping(&mut echo, i).await);
        }
        draining.abort();
        loaded.sort_by(f64::total_cmp);
        let loaded = loaded[2];
        eprintln!(
            "idle RTT {:.1} ms, under load {:.1} ms",
            idle * 1000.0,
            loaded * 1000.0
        );
        assert!(within(idle, 0.020, 0.25), "idle {idle}");
        // The round trip plus a full buffer, give or take a segment and the timer.
        let expected = 0.020 + BUFFER.as_secs_f64();
        assert!(
            within(loaded, expected, 0.15),
            "loaded {loaded}, expected {expected}"
        );
    }

    #[tokio::test]
    async fn half_close_delivers_everything_then_eof() {
        let profile = LinkProfile::for_class(ConnectionClass::Cable);
        let n = 300_000;
        let (_, data) = download(profile, n).await;
        let expected: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        assert!(data == expected, "bytes arrive complete and in order");
    }

    #[test]
    fn for_class_profiles_are_ordered_by_speed() {
        let order = [
            ConnectionClass::Dialup,
            ConnectionClass::Dsl,
            ConnectionClass::Cable,
            ConnectionClass::Fibre,
        ]
        .map(LinkProfile::for_class);
        for w in order.windows(2) {
            assert!(w[0].down_bps < w[1].down_bps);
            assert!(w[0].up_bps < w[1].up_bps);
            assert!(w[0].rtt > w[1].rtt);
        }
    }
}
