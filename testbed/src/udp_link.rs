//! An emulated last-mile link for UDP: a relay that puts an agent's datagrams behind
//! the rate, delay, jitter and loss of a line, the UDP counterpart of [`crate::link`].
//!
//! Kernel `netem` is not available on our machines, so a `udp` check's agent reaches
//! the reflector through one of these relays, as its page loads go through a
//! [`Link`](crate::link::Link).
//!
//! # Model
//!
//! Each direction is a line (up: client to upstream at the profile's `up_bps`; down:
//! upstream to client at `down_bps`), shared by every client of the link. A datagram
//! of `len` bytes arriving at `t` is first dropped with probability
//! `loss_ppm / 1_000_000` (independently of every other datagram; a seeded RNG, so a
//! test sees the same drops every run), then queued for the line:
//!
//! ```text
//! depart_end = max(t, previous depart_end) + (len + 28) * 8 / rate
//! deliver    = max(depart_end + rtt / 2 + uniform(0, jitter), previous deliver)
//! ```
//!
//! 28 bytes are the IPv4 and UDP headers, which take the line's time too. When
//! `depart_end - t` would exceed [`BUFFER`] (the line's buffer, as for TCP) the
//! datagram is dropped: a full modem buffer tail-drops, and UDP, unlike TCP, does not
//! back off. The last `max` keeps the order: real access lines rarely reorder, so
//! jitter shows as varying delay, a late datagram holding back those behind it.
//!
//! Like a NAT, the link gives each client address its own upstream socket, created on
//! its first datagram; what comes back on that socket goes down to that client. At
//! most [`MAX_CLIENTS`] clients are mapped at once (datagrams of more are dropped),
//! and a client that sent nothing for [`CLIENT_IDLE`] loses its mapping.
//!
//! # Limits
//!
//! - tokio's timer has millisecond granularity, so a datagram may be delivered up to
//!   ~1 ms late; a 20 ms stream's round trips are a millisecond or two coarse.
//! - Jitter never reorders (see above), and a datagram's jitter delays the ones queued
//!   behind it, so delay variation is somewhat correlated from one to the next.
//! - Losses are independent, not the bursts of a fading radio or a flapping line:
//!   burst loss shows here only as the buffer's tail drop under load.
//! - Each direction holds at most [`IN_FLIGHT`] datagrams between arrival and
//!   delivery; more (only ever tiny datagrams on a fast line) are dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lastmile_protocol::ConnectionClass;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::link::{LinkProfile, BUFFER};

/// What a line does to datagrams besides its rate and delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Impairment {
    /// Most extra one-way delay, uniformly spread from zero to this, per direction.
    pub jitter: Duration,
    /// Datagrams dropped per million, per direction, independently of each other.
    pub loss_ppm: u32,
}

impl Impairment {
    /// A perfect line: no jitter, no loss.
    pub const NONE: Impairment = Impairment {
        jitter: Duration::ZERO,
        loss_ppm: 0,
    };

    /// Typical figures per connection class, each direction:
    ///
    /// | class     | jitter | loss  |
    /// |-----------|--------|-------|
    /// | dialup    | 15 ms  | 1 %   |
    /// | satellite | 20 ms  | 1 %   |
    /// | mobile    | 10 ms  | 0.5 % |
    /// | dsl       | 2 ms   | 0.1 % |
    /// | cable     | 3 ms   | 0.1 % |
    /// | fibre     | 0.5 ms | 0     |
    ///
    /// Cable jitters more than DSL: its upstream is a shared, scheduled medium.
    pub fn for_class(class: ConnectionClass) -> Impairment {
        let (jitter_us, loss_ppm) = match class {
            ConnectionClass::Dialup => (15_000, 10_000),
            ConnectionClass::Satellite => (20_000, 10_000),
            ConnectionClass::Mobile => (10_000, 5_000),
            ConnectionClass::Dsl => (2_000, 1_000),
            ConnectionClass::Cable => (3_000, 1_000),
            ConnectionClass::Fibre => (500, 0),
        };
        Impairment {
            jitter: Duration::from_micros(jitter_us),
            loss_ppm,
        }
    }
}

/// Bytes of IPv4 and UDP header each datagram carries on the line.
const HEADERS: usize = 28;
/// Clients mapped at once: far more than the demo's agents, few enough that a flood of
/// source addresses cannot open sockets without end.
pub const MAX_CLIENTS: usize = 1024;
/// A client that sent nothing for this long loses its mapping (and its socket).
pub const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// Datagrams one direction holds between arrival and delivery. The buffer already
/// bounds the bytes queued; this bounds the count of tiny datagrams on a fast line.
pub const IN_FLIGHT: usize = 16_384;
/// The largest UDP payload, so that no datagram is cut.
const MAX_DATAGRAM: usize = 65_536;
/// How often idle mappings are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// After a receive error, the pause before the next receive, so a broken socket does
/// not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Mixed into the seed for the down direction, so the two directions draw different
/// numbers.
const DOWN_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A running relay: receives datagrams on [`UdpLink::addr`] and forwards them to the
/// upstream address through the emulated line, and the answers back. Dropping it stops
/// everything.
pub struct UdpLink {
    addr: SocketAddr,
    profile: LinkProfile,
    impairment: Impairment,
    task: JoinHandle<()>,
}

impl UdpLink {
    /// Listens on `listen` (port 0 for any free port) and relays to `upstream`; `seed`
    /// fixes the random drops and jitter.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
        impairment: Impairment,
        seed: u64,
    ) -> std::io::Result<UdpLink> {
        let socket = UdpSocket::bind(listen).await?;
        let addr = socket.local_addr()?;
        let task = tokio::spawn(relay(Arc::new(socket), upstream, profile, impairment, seed));
        Ok(UdpLink {
            addr,
            profile,
            impairment,
            task,
        })
    }

    /// Where agents send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The line's rates and round trip.
    pub fn profile(&self) -> LinkProfile {
        self.profile
    }

    /// The line's jitter and loss.
    pub fn impairment(&self) -> Impairment {
        self.impairment
    }
}

impl Drop for UdpLink {
    fn drop(&mut self) {
        // Aborting the relay drops its JoinSet, which aborts the delivery tasks and
        // every client's reader.
        self.task.abort();
    }
}

/// One direction's line: when it is next free, when it last delivered, and its dice.
struct Line {
    bps: u64,
    one_way: Duration,
    impairment: Impairment,
    rng: StdRng,
    free_at: Option<Instant>,
    last_delivery: Option<Instant>,
}

impl Line {
    fn new(bps: u64, one_way: Duration, impairment: Impairment, seed: u64) -> Line {
        Line {
            bps,
            one_way,
            impairment,
            rng: StdRng::seed_from_u64(seed),
            free_at: None,
            last_delivery: None,
        }
    }

    /// When a datagram of `len` bytes arriving at `arrival` is delivered, or `None`
    /// when it is lost (at random, or to a full buffer).
    fn book(&mut self, len: usize, arrival: Instant) -> Option<Instant> {
        let loss_ppm = self.impairment.loss_ppm;
        if loss_ppm > 0 && self.rng.gen_range(0..1_000_000) < loss_ppm {
            return None;
        }
        let start = self.free_at.map_or(arrival, |free| free.max(arrival));
        let bits = ((len + HEADERS) * 8) as f64;
        let depart_end = start + Duration::from_secs_f64(bits / self.bps.max(1) as f64);
        if depart_end - arrival > BUFFER {
            return None;
        }
        self.free_at = Some(depart_end);
        let jitter = self.impairment.jitter.as_nanos();
        let extra = if jitter == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(
                self.rng
                    .gen_range(0..=u64::try_from(jitter).unwrap_or(u64::MAX)),
            )
        };
        let due = depart_end + self.one_way + extra;
        let deliver = self.last_delivery.map_or(due, |last| last.max(due));
        self.last_delivery = Some(deliver);
        Some(deliver)
    }
}

/// A datagram on its way: sent from `via` at `at`, to `to` (or to where `via` is
/// connected).
struct Delivery {
    at: Instant,
    datagram: Bytes,
    via: Arc<UdpSocket>,
    to: Option<SocketAddr>,
}

/// Releases one direction's datagrams on schedule. They come in the order they are
/// due (the line's `max` keeps it), so one timer at a time suffices.
async fn deliver(mut queue: mpsc::Receiver<Delivery>) {
    while let Some(d) = queue.recv().await {
        tokio::time::sleep_until(d.at).await;
        let sent = match d.to {
            Some(to) => d.via.send_to(&d.datagram, to).await,
            None => d.via.send(&d.datagram).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "udp link cannot deliver");
        }
    }
}

/// A client's mapping.
struct Client {
    upstream: Arc<UdpSocket>,
    last_seen: Instant,
    reader: AbortHandle,
}

async fn relay(
    listener: Arc<UdpSocket>,
    upstream: SocketAddr,
    profile: LinkProfile,
    impairment: Impairment,
    seed: u64,
) {
    let one_way = profile.rtt / 2;
    let mut tasks = JoinSet::new();
    let (up_tx, up_rx) = mpsc::channel(IN_FLIGHT);
    let (down_tx, down_rx) = mpsc::channel(IN_FLIGHT);
    tasks.spawn(deliver(up_rx));
    tasks.spawn(deliver(down_rx));
    // The up line is booked only here; the down line by every client's reader.
    let mut up = Line::new(profile.up_bps, one_way, impairment, seed);
    let down = Arc::new(Mutex::new(Line::new(
        profile.down_bps,
        one_way,
        impairment,
        seed ^ DOWN_SEED,
    )));
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = listener.recv_from(&mut buf) => {
                let (len, from) = match received {
                    Ok(received) => received,
                    Err(e) => {
                        tracing::debug!(error = %e, "udp link cannot receive");
                        tokio::time::sleep(ERROR_PAUSE).await;
                        continue;
                    }
                };
                let arrival = Instant::now();
                let full = clients.len() >= MAX_CLIENTS;
                let via = match clients.get_mut(&from) {
                    Some(client) => {
                        client.last_seen = arrival;
                        client.upstream.clone()
                    }
                    None if full => continue,
                    None => {
                        let socket = match connect(upstream).await {
                            Ok(socket) => Arc::new(socket),
                            Err(e) => {
                                tracing::debug!(
                                    error = %e, %upstream, "udp link cannot reach upstream"
                                );
                                continue;
                            }
                        };
                        let reader = tasks.spawn(read_replies(
                            socket.clone(),
                            from,
                            listener.clone(),
                            down.clone(),
                            down_tx.clone(),
                        ));
                        let client = Client {
                            upstream: socket.clone(),
                            last_seen: arrival,
                            reader,
                        };
                        clients.insert(from, client);
                        socket
                    }
                };
                if let Some(at) = up.book(len, arrival) {
                    let datagram = Bytes::copy_from_slice(&buf[..len]);
                    // A full queue drops, as the line's buffer does.
                    let _ = up_tx.try_send(Delivery { at, datagram, via, to: None });
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                clients.retain(|_, client| {
                    let live = now.duration_since(client.last_seen) <= CLIENT_IDLE;
                    if !live {
                        client.reader.abort();
                    }
                    live
                });
                while tasks.try_join_next().is_some() {}
            }
        }
    }
}

/// A socket for one client's datagrams to `upstream`: on loopback when upstream is
/// there, else on the unspecified address of its family.
async fn connect(upstream: SocketAddr) -> std::io::Result<UdpSocket> {
    let ip = match upstream.ip() {
        ip if ip.is_loopback() => ip,
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Sends what upstream answers on `from_upstream` down the line to `client`.
async fn read_replies(
    from_upstream: Arc<UdpSocket>,
    client: SocketAddr,
    listener: Arc<UdpSocket>,
    down: Arc<Mutex<Line>>,
    queue: mpsc::Sender<Delivery>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = match from_upstream.recv(&mut buf).await {
            Ok(len) => len,
            Err(e) => {
                // E.g. "connection refused": an earlier datagram found no one listening.
                tracing::debug!(error = %e, %client, "udp link cannot receive from upstream");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let arrival = Instant::now();
        let Ok(mut line) = down.lock() else {
            return;
        };
        if let Some(at) = line.book(len, arrival) {
            // Queued while the line is held, so that deliveries enter the queue in the
            // order the line booked them, which is the order they are due.
            let _ = queue.try_send(Delivery {
                at,
                datagram: Bytes::copy_from_slice(&buf[..len]),
                via: listener.clone(),
                to: Some(client),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes every datagram to its sender.
    async fn echo_server() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn udp_link(profile: LinkProfile, impairment: Impairment) -> UdpLink {
        UdpLink::start(
            "127.0.0.1:0".parse().unwrap(),
            echo_server().await,
            profile,
            impairment,
            42,
        )
        .await
        .unwrap()
    }

    /// `n` datagrams of `len` bytes (a sequence number first) sent to `to` every `gap`
    /// (all at once for zero), and the echoes back within `wait` of the last send: in
    /// the order they arrived, each sequence number with its round trip.
    async fn exchange(
        to: SocketAddr,
        n: u32,
        len: usize,
        gap: Duration,
        wait: Duration,
    ) -> Vec<(u32, Duration)> {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = Instant::now();
        let mut sent_at = Vec::new();
        let send = async {
            for seq in 0..n {
                tokio::time::sleep_until(start + gap * seq).await;
                let mut datagram = vec![0u8; len];
                datagram[..4].copy_from_slice(&seq.to_be_bytes());
                sent_at.push(Instant::now());
                sock.send_to(&datagram, to).await.unwrap();
            }
        };
        let mut arrivals = Vec::new();
        let receive = async {
            let deadline = start + gap * n + wait;
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while arrivals.len() < n as usize {
                let Ok(received) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await
                else {
                    break;
                };
                let got = received.unwrap();
                assert_eq!(got, len);
                let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                arrivals.push((seq, Instant::now()));
            }
        };
        tokio::join!(send, receive);
        arrivals
            .into_iter()
            .map(|(seq, at)| (seq, at - sent_at[seq as usize]))
            .collect()
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[tokio::test]
    async fn round_trips_are_the_lines_and_nothing_is_lost() {
        let profile = LinkProfile {
            down_bps: 8_000_000,
            up_bps: 1_000_000,
            rtt: Duration::from_millis(40),
        };
        let link = udp_link(profile, Impairment::NONE).await;
        let got = exchange(
            link.addr(),
            20,
            64,
            Duration::from_millis(20),
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(got.len(), 20, "none lost");
        for (seq, rtt) in &got {
            eprintln!("#{seq}: {:.2} ms", ms(*rtt));
            assert!(
                (Duration::from_millis(40)..=Duration::from_millis(60)).contains(rtt),
                "#{seq}: {rtt:?}"
            );
        }
    }

    #[tokio::test]
    async fn random_loss_drops_about_the_share_asked_each_way() {
        let profile = LinkProfile::for_class(ConnectionClass::Fibre);
        let impairment = Impairment {
            jitter: Duration::ZERO,
            loss_ppm: 100_000,
        };
        let link = udp_link(profile, impairment).await;
        let n = 400;
        let got = exchange(
            link.addr(),
            n,
            64,
            Duration::from_millis(2),
            Duration::from_millis(300),
        )
        .await;
        let lost = 1.0 - got.len() as f64 / f64::from(n);
        // 10 % each way: 1 - 0.9² = 19 % in all.
        eprintln!("lost {:.1} %", lost * 100.0);
        assert!((0.10..=0.30).contains(&lost), "{lost}");
    }

    #[tokio::test]
    async fn jitter_spreads_round_trips_but_keeps_the_order() {
        let profile = LinkProfile {
            down_bps: 100_000_000,
            up_bps: 100_000_000,
            rtt: Duration::from_millis(10),
        };
        let impairment = Impairment {
            jitter: Duration::from_millis(20),
            loss_ppm: 0,
        };
        let link = udp_link(profile, impairment).await;
        let got = exchange(
            link.addr(),
            50,
            64,
            Duration::from_millis(10),
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(got.len(), 50);
        let seqs: Vec<u32> = got.iter().map(|(seq, _)| *seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "reordered: {seqs:?}");
        let rtts = got.iter().map(|(_, rtt)| *rtt);
        let (min, max) = (rtts.clone().min().unwrap(), rtts.max().unwrap());
        eprintln!("round trips {:.1} to {:.1} ms", ms(min), ms(max));
        assert!(min >= Duration::from_millis(10), "{min:?}");
        assert!(max - min >= Duration::from_millis(10), "{min:?} to {max:?}");
    }

    #[tokio::test]
    async fn a_burst_beyond_the_buffer_is_tail_dropped() {
        // 1028 bytes on the line take 8.2 ms at 1 Mbit/s: the 250 ms buffer holds 30.
        let profile = LinkProfile {
            down_bps: 100_000_000,
            up_bps: 1_000_000,
            rtt: Duration::from_millis(20),
        };
        let link = udp_link(profile, Impairment::NONE).await;
        let got = exchange(
            link.addr(),
            200,
            1000,
            Duration::ZERO,
            Duration::from_millis(600),
        )
        .await;
        let seqs: Vec<u32> = got.iter().map(|(seq, _)| *seq).collect();
        eprintln!("{} of 200 arrived: {seqs:?}", seqs.len());
        // The head of the burst gets through (a few more if the sender was slow
        // enough for the line to drain meanwhile)...
        assert!(seqs.len() >= 25, "{seqs:?}");
        assert!(seqs.iter().copied().take(25).eq(0..25), "{seqs:?}");
        // ...and the tail is dropped.
        assert!(seqs.len() <= 60, "{seqs:?}");
        // The last one waited the whole buffer.
        let last = got.last().unwrap().1;
        assert!(last >= Duration::from_millis(230), "{last:?}");
    }

    #[test]
    fn the_line_books_like_the_model() {
        // 8 kbit/s: a byte a millisecond, so 72 bytes and their headers take 100 ms.
        let one_way = Duration::from_millis(10);
        let mut line = Line::new(8_000, one_way, Impairment::NONE, 1);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(line.book(72, t0), Some(t0 + ms(100) + one_way));
        assert_eq!(line.book(72, t0), Some(t0 + ms(200) + one_way));
        // A third would wait 300 ms in a 250 ms buffer.
        assert_eq!(line.book(72, t0), None);
        // A hundred milliseconds on, the line has room again.
        assert_eq!(line.book(72, t0 + ms(100)), Some(t0 + ms(300) + one_way));
        // An idle line sends at once.
        assert_eq!(line.book(72, t0 + ms(1000)), Some(t0 + ms(1100) + one_way));
    }

    #[test]
    fn the_same_seed_drops_the_same_datagrams() {
        let lossy = Impairment {
            jitter: Duration::from_millis(5),
            loss_ppm: 300_000,
        };
        let t0 = Instant::now();
        let run = |seed| {
            let mut line = Line::new(1_000_000_000, Duration::ZERO, lossy, seed);
            (0..100u32)
                .map(|i| line.book(100, t0 + Duration::from_millis(u64::from(i))))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let lost = run(7).iter().filter(|d| d.is_none()).count();
        assert!((15..=45).contains(&lost), "{lost}");
    }

    #[test]
    fn impairments_grow_from_fibre_to_dialup() {
        let fibre = Impairment::for_class(ConnectionClass::Fibre);
        let dsl = Impairment::for_class(ConnectionClass::Dsl);
        let dialup = Impairment::for_class(ConnectionClass::Dialup);
        assert_eq!(fibre.loss_ppm, 0);
        assert!(fibre.jitter < dsl.jitter && dsl.jitter < dialup.jitter);
        assert!(dsl.loss_ppm < dialup.loss_ppm);
    }
}
