//! The reflector a `udp` check streams to: a small UDP server the site owner runs next
//! to their game or media server, started with the site's verification token (the
//! `lastmile-reflector` binary).
//!
//! It speaks only [`lastmile_protocol::reflector`]: a hello is answered with a welcome
//! carrying the token (which is how an agent knows it streams to the owner's reflector
//! and not to a stranger's address), and each probe with its echo, counting the probes
//! of its session so that the agent tells loss on the way there from loss on the way
//! back. Everything else — other protocols, welcomes, echoes, malformed or oversized
//! datagrams — is dropped without an answer, so the reflector cannot be used to bounce
//! traffic of any other protocol; since no answer is larger than what it answers (see
//! the protocol module), it cannot amplify either; and a probe is echoed only with the
//! cookie the welcome gave its source and session ([`Cookies`]), so a probe whose source
//! address is forged (it never saw the welcome) gets no echo: the reflector cannot be
//! pointed at a third party.
//!
//! The session counters are the only state, held in a table bounded both in size
//! ([`MAX_SESSIONS`]) and in time ([`SESSION_IDLE`]), so a flood of forged sessions
//! costs memory once and is forgotten.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use lastmile_protocol::reflector::{self, Packet, MAX_PROBE_LEN, MAX_TOKEN_LEN};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Sessions counted at once. A session is one agent's stream (a few thousand probes at
/// most), so ten thousand is far more than a site's agents ever run together.
pub const MAX_SESSIONS: usize = 10_000;

/// A session not heard from for this long is forgotten. Streams last at most a minute
/// and send at least a probe a second, so a live session is never this quiet.
pub const SESSION_IDLE: Duration = Duration::from_secs(60);

/// How often, at most, the table is searched for idle sessions while it has room.
/// Sessions one source (an IPv4 address, or an IPv6 /64: one host's addresses) keeps in
/// the table at most, so one source cannot fill it and take the loss split from every
/// other session; generous, as a carrier's NAT puts many agents behind one address.
pub const MAX_SESSIONS_PER_SOURCE: usize = 256;

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// After a receive error, the pause before the next receive: an error that repeats at
/// once (the socket is broken) must not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A running reflector: answers on [`Reflector::addr`] until dropped.
pub struct Reflector {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Reflector {
    /// Listens on `listen` (port 0 for any free port) and answers hellos with `token`,
    /// the site's verification token. An empty token, or one longer than
    /// [`MAX_TOKEN_LEN`] (no welcome could carry it), is refused with
    /// [`io::ErrorKind::InvalidInput`].
    pub async fn start(listen: SocketAddr, token: String) -> io::Result<Reflector> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the reflector's token must be 1 to {MAX_TOKEN_LEN} bytes, not {}",
                    token.len()
                ),
            ));
        }
        let socket = UdpSocket::bind(listen).await?;
        let addr = socket.local_addr()?;
        let task = tokio::spawn(serve(socket, token));
        Ok(Reflector { addr, task })
    }

    /// Where agents send their hellos and probes.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A session's cookie: a keyed hash (SipHash, keyed at random when the reflector
/// starts) of the source address and the session id. Only who received the welcome
/// knows it, and the reflector checks it without keeping any state for a hello.
struct Cookies(RandomState);

impl Cookies {
    fn new() -> Cookies {
        Cookies(RandomState::new())
    }

    fn of(&self, from: SocketAddr, session: u64) -> u64 {
        self.0.hash_one((from, session))
    }
}

async fn serve(socket: UdpSocket, token: String) {
    let mut sessions = Sessions::new(MAX_SESSIONS, MAX_SESSIONS_PER_SOURCE, SESSION_IDLE);
    let cookies = Cookies::new();
    // One byte more than the longest probe, so that a longer datagram shows as one
    // (the kernel truncates it to the buffer) and is dropped rather than echoed cut.
    let mut buf = vec![0u8; MAX_PROBE_LEN + 1];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "reflector cannot receive");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if len > MAX_PROBE_LEN {
            continue;
        }
        let datagram = &buf[..len];
        let answer = match reflector::decode(datagram) {
            Ok(Packet::Hello { session }) => {
                reflector::welcome(session, cookies.of(from, session), &token)
            }
            // A probe without its welcome's cookie: from a forged address (or a
            // reflector restarted since): not echoed, not counted.
            Ok(Packet::Probe {
                session, cookie, ..
            }) if cookie == cookies.of(from, session) => {
                let received = sessions.count(from, session, Instant::now());
                reflector::echo(datagram, received)
            }
            Ok(Packet::Probe { .. }) => None,
            // Welcomes and echoes are answers, never questions; anything that is not
            // this protocol is not ours to answer.
            Ok(Packet::Welcome { .. } | Packet::Echo { .. }) | Err(_) => None,
        };
        let Some(answer) = answer else {
            continue;
        };
        if let Err(e) = socket.send_to(&answer, from).await {
            tracing::debug!(error = %e, %from, "reflector cannot answer");
        }
    }
}

/// How many probes each session has sent, keyed by where it comes from and its id
/// (two agents may pick the same id; one agent's id is unique to it).
struct Sessions {
    max: usize,
    max_per_source: usize,
    idle: Duration,
    /// Probes received and when the last one came.
    entries: HashMap<(SocketAddr, u64), (u32, Instant)>,
    /// Sessions in `entries` by source ([`source_of`]).
    per_source: HashMap<IpAddr, usize>,
    last_sweep: Option<Instant>,
    /// No session can be idle before this (the earliest last-seen time plus `idle`, as
    /// of the last sweep or insertion): a full table of live sessions is then not
    /// searched again on every probe of an unknown session.
    next_expiry: Option<Instant>,
}

impl Sessions {
    fn new(max: usize, max_per_source: usize, idle: Duration) -> Sessions {
        Sessions {
            max,
            max_per_source,
            idle,
            entries: HashMap::new(),
            per_source: HashMap::new(),
            last_sweep: None,
            next_expiry: None,
        }
    }

    /// Counts one probe of `session` from `from` arriving at `now`, and returns the
    /// session's probes so far, this one included.
    fn count(&mut self, from: SocketAddr, session: u64, now: Instant) -> u32 {
        let key = (from, session);
        if let Some((received, last_seen)) = self.entries.get_mut(&key) {
            *received = received.saturating_add(1);
            *last_seen = now;
            return *received;
        }
        let full = self.entries.len() >= self.max;
        let sweep_due = self.last_sweep.is_none_or(|at| now >= at + SWEEP_EVERY);
        let may_have_idle = self.next_expiry.is_some_and(|at| now >= at);
        if may_have_idle && (full || sweep_due) {
            self.sweep(now);
        }
        let source = source_of(&from);
        let of_source = self.per_source.get(&source).copied().unwrap_or(0);
        if self.entries.len() >= self.max || of_source >= self.max_per_source {
            // Full of live sessions (or of this source's): still echo, so the agent
            // still gets its round trip, but as the session's first probe and without
            // keeping it. Only the split of its loss between the two directions is
            // lost for that session.
            return 1;
        }
        self.entries.insert(key, (1, now));
        self.per_source.insert(source, of_source + 1);
        self.next_expiry.get_or_insert(now + self.idle);
        1
    }

    /// Forgets every session idle for longer than `idle`.
    fn sweep(&mut self, now: Instant) {
        let idle = self.idle;
        self.entries
            .retain(|_, (_, last_seen)| now.saturating_duration_since(*last_seen) <= idle);
        self.per_source.clear();
        for (from, _) in self.entries.keys() {
            *self.per_source.entry(source_of(from)).or_default() += 1;
        }
        self.next_expiry = self
            .entries
            .values()
            .map(|(_, last_seen)| *last_seen + idle)
            .min();
        self.last_sweep = Some(now);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Where a session comes from, for [`MAX_SESSIONS_PER_SOURCE`]: its IPv4 address, or
/// its IPv6 address's /64 (a host on IPv6 commonly has a whole /64 to pick from).
fn source_of(from: &SocketAddr) -> IpAddr {
    match from.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "lms_test";

    async fn start_reflector() -> Reflector {
        Reflector::start("127.0.0.1:0".parse().unwrap(), TOKEN.to_owned())
            .await
            .unwrap()
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// The next datagram to `sock` within `wait`, with its source; `None` if none came.
    async fn answer(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some((buf, from))
    }

    const PATIENCE: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn a_hello_gets_a_welcome_with_the_token() {
        let server = start_reflector().await;
        let sock = client().await;
        sock.send_to(&reflector::hello(42), server.addr())
            .await
            .unwrap();
        let (bytes, from) = answer(&sock, PATIENCE).await.expect("a welcome");
        assert_eq!(from, server.addr());
        assert!(matches!(
            reflector::decode(&bytes),
            Ok(Packet::Welcome {
                session: 42,
                token: TOKEN,
                ..
            })
        ));
    }

    /// Says hello for `session` and returns the welcome's cookie.
    async fn cookie(sock: &UdpSocket, to: SocketAddr, session: u64) -> u64 {
        sock.send_to(&reflector::hello(session), to).await.unwrap();
        let (bytes, _) = answer(sock, PATIENCE).await.expect("a welcome");
        match reflector::decode(&bytes) {
            Ok(Packet::Welcome { cookie, .. }) => cookie,
            other => panic!("not a welcome: {other:?}"),
        }
    }

    /// Sends probe `seq` of `session` with `cookie` and returns the echo's `received`
    /// count.
    async fn probe(sock: &UdpSocket, to: SocketAddr, session: u64, cookie: u64, seq: u32) -> u32 {
        let probe = reflector::probe(session, cookie, seq, 1_000 + u64::from(seq), 172);
        sock.send_to(&probe, to).await.unwrap();
        let (bytes, _) = answer(sock, PATIENCE).await.expect("an echo");
        assert_eq!(bytes.len(), probe.len(), "an echo is as long as its probe");
        match reflector::decode(&bytes) {
            Ok(Packet::Echo {
                session: s,
                cookie: c,
                seq: q,
                sent_us,
                received,
            }) => {
                assert_eq!(
                    (s, c, q, sent_us),
                    (session, cookie, seq, 1_000 + u64::from(seq))
                );
                received
            }
            other => panic!("not an echo: {other:?}"),
        }
    }

    #[tokio::test]
    async fn probes_are_echoed_with_the_count_of_their_session() {
        let server = start_reflector().await;
        let to = server.addr();
        let one = client().await;
        let (one_7, one_8) = (cookie(&one, to, 7).await, cookie(&one, to, 8).await);
        for (seq, expected) in [(0, 1), (1, 2), (2, 3)] {
            assert_eq!(probe(&one, to, 7, one_7, seq).await, expected);
        }
        // Another session id from the same socket counts on its own...
        assert_eq!(probe(&one, to, 8, one_8, 0).await, 1);
        assert_eq!(probe(&one, to, 7, one_7, 3).await, 4);
        // ...and so does the same id from another address, with a cookie of its own.
        let two = client().await;
        let two_7 = cookie(&two, to, 7).await;
        assert_ne!(two_7, one_7, "a cookie is its source's");
        assert_eq!(probe(&two, to, 7, two_7, 0).await, 1);
        assert_eq!(probe(&two, to, 7, two_7, 1).await, 2);
        assert_eq!(probe(&one, to, 8, one_8, 1).await, 2);
    }

    #[tokio::test]
    async fn a_probe_without_its_welcomes_cookie_gets_no_echo() {
        let server = start_reflector().await;
        let to = server.addr();
        let (one, two) = (client().await, client().await);
        let one_7 = cookie(&one, to, 7).await;
        // Another address sends one's probe (as a forged source would, never having seen
        // one's welcome), and one sends a made-up cookie: neither is echoed nor counted.
        let stolen = reflector::probe(7, one_7, 0, 0, 172);
        two.send_to(&stolen, to).await.unwrap();
        let guessed = reflector::probe(7, one_7 ^ 1, 0, 0, 172);
        one.send_to(&guessed, to).await.unwrap();
        for sock in [&one, &two] {
            let got = answer(sock, Duration::from_millis(200)).await;
            assert!(got.is_none(), "echoed {got:?}");
        }
        assert_eq!(probe(&one, to, 7, one_7, 0).await, 1, "nothing was counted");
    }

    #[tokio::test]
    async fn anything_but_a_hello_or_a_probe_gets_no_answer() {
        let server = start_reflector().await;
        let sock = client().await;
        let mut oversized = reflector::probe(1, 0, 0, 0, MAX_PROBE_LEN);
        oversized.push(0);
        let ignored: [Vec<u8>; 6] = [
            reflector::hello(1)[..reflector::HELLO_LEN - 1].to_vec(),
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
            reflector::welcome(1, 0, TOKEN).unwrap(),
            reflector::echo(&reflector::probe(1, 0, 0, 0, 64), 1).unwrap(),
            oversized,
            Vec::new(),
        ];
        for datagram in &ignored {
            sock.send_to(datagram, server.addr()).await.unwrap();
        }
        let got = answer(&sock, Duration::from_millis(200)).await;
        assert!(got.is_none(), "answered {got:?}");
        // Still alive, and the first thing it says is the answer to this hello.
        sock.send_to(&reflector::hello(2), server.addr())
            .await
            .unwrap();
        let (bytes, _) = answer(&sock, PATIENCE).await.expect("a welcome");
        assert!(matches!(
            reflector::decode(&bytes),
            Ok(Packet::Welcome {
                session: 2,
                token: TOKEN,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn an_empty_or_too_long_token_is_refused() {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for token in [String::new(), "x".repeat(MAX_TOKEN_LEN + 1)] {
            let refused = Reflector::start(listen, token)
                .await
                .err()
                .expect("refused");
            assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(Reflector::start(listen, "x".repeat(MAX_TOKEN_LEN))
            .await
            .is_ok());
    }

    #[test]
    fn the_session_table_stays_bounded() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let addr = |port: u16| SocketAddr::from(([192, 0, 2, 1], port));
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let mut sessions = Sessions::new(2, 2, idle);
        assert_eq!(sessions.count(a, 1, t0), 1);
        assert_eq!(sessions.count(a, 1, t0), 2);
        assert_eq!(sessions.count(b, 1, t0), 1);
        // Full, nothing idle: echoed as a first probe, not kept.
        assert_eq!(sessions.count(c, 1, t0), 1);
        assert_eq!(sessions.count(c, 1, t0), 1);
        assert_eq!(sessions.len(), 2);
        // The kept sessions still count.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(sessions.count(a, 1, t1), 3);
        // b is idle past the limit at t0 + 61 s; a (seen at t1) is not.
        let t2 = t0 + idle + Duration::from_secs(1);
        assert_eq!(sessions.count(c, 1, t2), 1);
        assert_eq!(sessions.count(c, 1, t2), 2, "c took b's place");
        assert_eq!(sessions.count(a, 1, t2), 4);
        assert_eq!(sessions.len(), 2);
        // A session forgotten while idle starts over.
        let t3 = t2 + idle + Duration::from_secs(1);
        assert_eq!(sessions.count(b, 1, t3), 1);
        assert_eq!(sessions.count(a, 1, t3), 1);
        assert_eq!(sessions.len(), 2);
    }

    #[test]
    fn one_source_keeps_at_most_its_share_of_the_table() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut sessions = Sessions::new(100, 4, idle);
        let v4 = |port: u16| SocketAddr::from(([192, 0, 2, 1], port));
        for port in 0..4 {
            assert_eq!(sessions.count(v4(port), 1, t0), 1);
        }
        // Its fifth session (another port, or another id) is echoed but not kept...
        assert_eq!(sessions.count(v4(9), 1, t0), 1);
        assert_eq!(sessions.count(v4(9), 1, t0), 1);
        assert_eq!(sessions.count(v4(0), 2, t0), 1);
        assert_eq!(sessions.len(), 4);
        // ...while another source's sessions count, and its own kept ones still do.
        let other = SocketAddr::from(([198, 51, 100, 7], 1));
        assert_eq!(sessions.count(other, 1, t0), 1);
        assert_eq!(sessions.count(other, 1, t0), 2);
        assert_eq!(sessions.count(v4(0), 1, t0), 2);
        // An IPv6 host's addresses within its /64 are one source; a mapped IPv4
        // address is the IPv4 source.
        let v6 = |last: u16| SocketAddr::from(([0x2001, 0xdb8, 0, 1, 0, 0, 0, last], 5));
        for last in 0..4 {
            assert_eq!(sessions.count(v6(last), 1, t0), 1);
        }
        assert_eq!(sessions.count(v6(99), 1, t0), 1);
        assert_eq!(
            sessions.count(v6(99), 1, t0),
            1,
            "a fifth address of the /64"
        );
        let other_64 = SocketAddr::from(([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1], 5));
        sessions.count(other_64, 1, t0);
        assert_eq!(sessions.count(other_64, 1, t0), 2);
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:40000".parse().unwrap();
        assert_eq!(sessions.count(mapped, 1, t0), 1);
        assert_eq!(
            sessions.count(mapped, 1, t0),
            1,
            "the IPv4 source's share is taken"
        );
        // Once the source's sessions are idle and swept, it has its share again.
        let later = t0 + idle + Duration::from_secs(2);
        assert_eq!(sessions.count(v4(9), 1, later), 1);
        assert_eq!(sessions.count(v4(9), 1, later), 2);
    }

    #[test]
    fn idle_sessions_are_swept_while_the_table_has_room() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut sessions = Sessions::new(100, 100, idle);
        for port in 0..50 {
            sessions.count(SocketAddr::from(([192, 0, 2, 1], port)), 9, t0);
        }
        assert_eq!(sessions.len(), 50);
        // A new session a second later sweeps nothing (none is idle yet)...
        let fresh = SocketAddr::from(([192, 0, 2, 2], 1));
        sessions.count(fresh, 1, t0 + Duration::from_secs(1));
        assert_eq!(sessions.len(), 51);
        // ...and one after the idle time forgets the fifty, not the recent one.
        let later = t0 + idle + Duration::from_millis(500);
        sessions.count(SocketAddr::from(([192, 0, 2, 3], 1)), 1, later);
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.count(fresh, 1, later), 2);
    }
}
