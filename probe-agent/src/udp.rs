//! A udp stream: what a game or a call would feel on this line.
//!
//! The check's URL is `udp://host:port`, the owner's reflector (see
//! [`lastmile_protocol::reflector`] for what the two say). The host is resolved and
//! guarded as every target is; then the agent proves the address is the site's
//! reflector before it sends anything more than a hello: up to [`UDP_HELLO_ATTEMPTS`]
//! hellos, [`UDP_HELLO_WAIT_MS`] apart, until a welcome for its session carries the
//! task's token. An address that never answers is `reflector_silent`, one that answers
//! otherwise `reflector_unverified`, and in both cases no stream was sent: the network
//! must never send a stream to a host that did not ask for it.
//!
//! The stream is isochronous, as a game's updates or a call's frames are: a probe of
//! `packet_bytes` every `interval_ms` for `duration_ms`, on the schedule (a tick the
//! agent missed, busy, is skipped rather than sent late in a burst). Each echo gives
//! its probe's round trip; the reflector's count of probes received tells loss on the
//! way there from loss on the way back. Sending stops early after [`UDP_SILENCE_MS`]
//! without an echo (the reflector went away: never stream into silence), and after the
//! last probe the agent waits up to [`UDP_ECHO_WAIT_MS`] for the echoes still on their
//! way; later ones count as lost, as a game's jitter buffer would drop them.
//!
//! An echo is taken only if its session, sequence number and send time are those of a
//! probe this stream sent, and only the first echo of a probe counts.
//!
//! The result's phases: `dns` the resolution, `connect` and `tls` 0 (UDP has no
//! handshake), `ttfb` the answered hello's round trip, `transfer` from the first probe to the end of the wait for echoes,
//! `total` the whole session; `bytes` counts the echoes' bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use lastmile_protocol::reflector::{self, Answer, Packet};
use lastmile_protocol::{
    ErrorKind, Measurement, MeasurementError, Timings, UdpSummary, UdpTask, MAX_UDP_DURATION_MS,
    MAX_UDP_INTERVAL_MS, MAX_UDP_PROBES, MIN_UDP_DURATION_MS, MIN_UDP_INTERVAL_MS,
    UDP_ECHO_WAIT_MS, UDP_HELLO_ATTEMPTS, UDP_HELLO_WAIT_MS, UDP_SILENCE_MS,
};
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;

use crate::measure::{fail, host_of, micros, parse_task_url, Engine, Expectations, Stage};

impl Engine {
    /// Streams to the reflector at `url` (`udp://host:port`) as `stream` asks, once it
    /// proved to be the site's (see the module's doc). `expect.timeout` bounds the
    /// whole session; the other expectations do not apply. Never fails: a failure is a
    /// measurement with an error kind, the phases it reached and what the stream
    /// measured until then.
    pub async fn measure_udp(
        &self,
        url: &str,
        expect: &Expectations,
        stream: &UdpTask,
    ) -> Measurement {
        let mut run = Session::new(Instant::now());
        let outcome = tokio::time::timeout(expect.timeout, run.go(self, url, expect, stream)).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(run.stage.timed_out(expect.timeout)),
        };
        run.into_measurement(error)
    }
}

/// Refuses a stream the agent cannot carry out as asked.
pub fn check_stream(stream: &UdpTask, timeout: Duration) -> Result<(), MeasurementError> {
    let invalid = |why: String| Err(fail(ErrorKind::InvalidTask, why));
    if !(MIN_UDP_INTERVAL_MS..=MAX_UDP_INTERVAL_MS).contains(&stream.interval_ms) {
        return invalid(format!(
            "a udp stream sends a probe every {MIN_UDP_INTERVAL_MS} to {MAX_UDP_INTERVAL_MS} ms, \
             not {}",
            stream.interval_ms
        ));
    }
    if !(MIN_UDP_DURATION_MS..=MAX_UDP_DURATION_MS).contains(&stream.duration_ms) {
        return invalid(format!(
            "a udp stream lasts {MIN_UDP_DURATION_MS} to {MAX_UDP_DURATION_MS} ms, not {}",
            stream.duration_ms
        ));
    }
    if probes_of(stream) > MAX_UDP_PROBES {
        return invalid(format!(
            "a udp stream sends at most {MAX_UDP_PROBES} probes, not {}",
            probes_of(stream)
        ));
    }
    let bytes = stream.packet_bytes as usize;
    if !(reflector::MIN_PROBE_LEN..=reflector::MAX_PROBE_LEN).contains(&bytes) {
        return invalid(format!(
            "a udp probe is {} to {} bytes, not {bytes}",
            reflector::MIN_PROBE_LEN,
            reflector::MAX_PROBE_LEN
        ));
    }
    if stream.token.is_empty() || stream.token.len() > reflector::MAX_TOKEN_LEN {
        return invalid("a udp stream needs its site's token".to_owned());
    }
    let needs = Duration::from_millis(stream.duration_ms + UDP_ECHO_WAIT_MS);
    if needs >= timeout {
        return invalid(format!(
            "the stream's {} ms and {UDP_ECHO_WAIT_MS} ms of waiting for echoes do not fit in \
             the time limit of {} ms",
            stream.duration_ms,
            timeout.as_millis()
        ));
    }
    Ok(())
}

/// Probes a stream sends: one at its start and one every interval until its end.
pub fn probes_of(stream: &UdpTask) -> usize {
    (stream.duration_ms / stream.interval_ms.max(1)) as usize
}

/// Where a task's `udp://host:port` points.
fn reflector_of(url: &str) -> Result<(String, u16), MeasurementError> {
    let url = parse_task_url(url)?;
    if url.scheme() != "udp" {
        return Err(fail(
            ErrorKind::InvalidTask,
            format!("a udp check streams to udp://host:port, not {url}"),
        ));
    }
    let host = host_of(&url)?;
    let port = url
        .port()
        .ok_or_else(|| fail(ErrorKind::InvalidTask, format!("{url} has no port")))?;
    Ok((host, port))
}

/// One session as far as it got, kept outside the future the time limit may cut short.
struct Session {
    start: Instant,
    stage: Stage,
    dns_us: u64,
    hello_us: u64,
    remote: Option<SocketAddr>,
    /// When each probe was sent, by sequence number.
    sent: Vec<Instant>,
    /// Each probe's round trip, once its echo came back.
    rtt: Vec<Option<u64>>,
    /// Probes whose echo came back.
    echoed: usize,
    /// The reflector's count of received probes in the echo of the highest sequence
    /// number, and that number.
    last_count: Option<(u32, u32)>,
    echo_bytes: u64,
    streaming: Option<Instant>,
    ended: Option<Instant>,
}

impl Session {
    fn new(start: Instant) -> Session {
        Session {
            start,
            stage: Stage::Starting,
            dns_us: 0,
            hello_us: 0,
            remote: None,
            sent: Vec::new(),
            rtt: Vec::new(),
            echoed: 0,
            last_count: None,
            echo_bytes: 0,
            streaming: None,
            ended: None,
        }
    }

    async fn go(
        &mut self,
        engine: &Engine,
        url: &str,
        expect: &Expectations,
        stream: &UdpTask,
    ) -> Result<(), MeasurementError> {
        let (host, port) = reflector_of(url)?;
        check_stream(stream, expect.timeout)?;

        self.stage = Stage::Resolving;
        let resolving = Instant::now();
        let addrs = engine.resolve(&host, port).await?;
        self.dns_us = micros(resolving.elapsed());

        self.stage = Stage::Connecting;
        let addr = addrs[0];
        let socket = bind_for(addr, engine.source_addr())
            .await
            .map_err(|e| fail(ErrorKind::Connect, format!("cannot open a udp socket: {e}")))?;
        socket.connect(addr).await.map_err(|e| {
            fail(
                ErrorKind::Connect,
                format!("cannot send to udp://{addr}: {e}"),
            )
        })?;
        self.remote = Some(addr);
        // Not `Connecting`: a time limit that runs out here is no TCP handshake's.
        self.stage = Stage::Exchanging;
        let session: u64 = rand::random();
        let (hello_us, cookie) = handshake(&socket, addr, session, &stream.token).await?;
        self.hello_us = hello_us;
        self.stream(&socket, addr, (session, cookie), stream).await
    }

    /// Sends the stream of `(session, cookie)` and takes its echoes.
    async fn stream(
        &mut self,
        socket: &UdpSocket,
        addr: SocketAddr,
        (session, cookie): (u64, u64),
        stream: &UdpTask,
    ) -> Result<(), MeasurementError> {
        let planned = probes_of(stream);
        let len = stream.packet_bytes as usize;
        let started = Instant::now();
        self.streaming = Some(started);
        self.sent.reserve(planned);
        self.rtt.reserve(planned);
        let mut ticks = tokio::time::interval(Duration::from_millis(stream.interval_ms));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let end_of_sending = started + Duration::from_millis(stream.duration_ms);
        let silence = Duration::from_millis(UDP_SILENCE_MS);
        let mut last_echo = started;
        let mut buf = vec![0u8; reflector::MAX_PROBE_LEN + 1];
        let mut sending = true;
        let mut wait_until = end_of_sending + Duration::from_millis(UDP_ECHO_WAIT_MS);
        loop {
            if sending && (self.sent.len() >= planned || Instant::now() >= end_of_sending) {
                sending = false;
                wait_until = Instant::now() + Duration::from_millis(UDP_ECHO_WAIT_MS);
            }
            let all_back = !sending && self.echoed == self.sent.len();
            if all_back || (!sending && Instant::now() >= wait_until) {
                break;
            }
            tokio::select! {
                _ = ticks.tick(), if sending => {
                    if last_echo.elapsed() >= silence {
                        // The reflector went away: stop, and wait no longer for it.
                        sending = false;
                        wait_until = Instant::now();
                        continue;
                    }
                    let seq = self.sent.len() as u32;
                    let now = Instant::now();
                    let probe = reflector::probe(session, cookie, seq, micros(now - self.start), len);
                    match socket.send(&probe).await {
                        Ok(_) => {
                            self.sent.push(now);
                            self.rtt.push(None);
                        }
                        // Refused: an ICMP error for an earlier probe (the reflector's
                        // port closed mid-stream). That probe is lost; keep the schedule.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Err(e) => {
                            return Err(fail(
                                ErrorKind::Connect,
                                format!("cannot send to udp://{addr}: {e}"),
                            ))
                        }
                    }
                }
                received = socket.recv(&mut buf) => {
                    let n = match received {
                        Ok(n) => n,
                        // An ICMP error for a probe: it is lost, the stream goes on.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => {
                            return Err(fail(
                                ErrorKind::Connect,
                                format!("cannot receive from udp://{addr}: {e}"),
                            ))
                        }
                    };
                    if self.take_echo(&buf[..n], (session, cookie), len, Instant::now()) {
                        last_echo = Instant::now();
                    }
                }
                () = tokio::time::sleep_until(wait_until.into()), if !sending => {}
            }
        }
        self.ended = Some(Instant::now());
        Ok(())
    }

    /// Takes one datagram if it is the first echo of a probe of this stream (`(session,
    /// cookie)`, probes of `len` bytes); says whether it was. An echo is exactly as long
    /// as its probe: a longer one would have the agent report more bytes than its probes
    /// carried, which the controller refuses, so a reflector padding its echoes could
    /// have every volunteer's stream refused (and unpaid).
    fn take_echo(
        &mut self,
        bytes: &[u8],
        (session, cookie): (u64, u64),
        len: usize,
        arrived: Instant,
    ) -> bool {
        if bytes.len() != len {
            return false;
        }
        let Ok(Packet::Echo {
            session: s,
            cookie: c,
            seq,
            sent_us,
            received,
        }) = reflector::decode(bytes)
        else {
            return false;
        };
        let Some(&sent) = self.sent.get(seq as usize) else {
            return false;
        };
        if s != session || c != cookie || sent_us != micros(sent - self.start) {
            return false;
        }
        let slot = &mut self.rtt[seq as usize];
        if slot.is_some() {
            return false;
        }
        *slot = Some(micros(arrived.saturating_duration_since(sent)));
        self.echoed += 1;
        self.echo_bytes += bytes.len() as u64;
        if self.last_count.is_none_or(|(last_seq, _)| seq > last_seq) {
            self.last_count = Some((seq, received));
        }
        true
    }

    fn into_measurement(self, error: Option<MeasurementError>) -> Measurement {
        let ended = self.ended.unwrap_or_else(Instant::now);
        let rtt_us: Vec<u64> = self.rtt.iter().flatten().copied().collect();
        let sent = self.sent.len() as u32;
        let received = rtt_us.len() as u32;
        // Up to the last echo, the reflector's count says how many probes reached it;
        // the probes it missed were lost on the way there.
        let lost_up = self
            .last_count
            .map_or(0, |(seq, count)| (seq + 1).saturating_sub(count))
            .min(sent - received);
        let timings = Timings {
            dns: self.dns_us,
            // No handshake: UDP has no connection. The hello's answer is the first.
            connect: 0,
            tls: 0,
            ttfb: self.hello_us,
            transfer: self
                .streaming
                .map_or(0, |s| micros(ended.saturating_duration_since(s))),
            total: micros(ended.saturating_duration_since(self.start)),
        };
        Measurement {
            status: None,
            bytes: self.echo_bytes,
            error,
            timings_us: timings,
            bytes_decoded: self.echo_bytes,
            remote_addr: self.remote.map(|a| a.ip().to_string()),
            ip_version: self.remote.map(|a| if a.is_ipv4() { 4 } else { 6 }),
            udp: self.remote.map(|_| UdpSummary {
                sent,
                received,
                lost_up,
                rtt_us,
            }),
            ..Measurement::default()
        }
    }
}

/// A socket for `to`'s family, from the agent's source address when it has one of it.
async fn bind_for(to: SocketAddr, source: Option<IpAddr>) -> std::io::Result<UdpSocket> {
    let local = match source {
        Some(ip) if ip.is_ipv4() == to.is_ipv4() => ip,
        _ if to.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    UdpSocket::bind(SocketAddr::new(local, 0)).await
}

/// Says hello until the site's reflector welcomes `session` with `token`; returns the
/// answered hello's round trip, µs, and the cookie the session's probes carry.
async fn handshake(
    socket: &UdpSocket,
    addr: SocketAddr,
    session: u64,
    token: &str,
) -> Result<(u64, u64), MeasurementError> {
    let hello = reflector::hello(session);
    let mut buf = vec![0u8; reflector::MAX_PROBE_LEN + 1];
    for _ in 0..UDP_HELLO_ATTEMPTS {
        let said = Instant::now();
        match socket.send(&hello).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(refused(addr))
            }
            Err(e) => {
                return Err(fail(
                    ErrorKind::Connect,
                    format!("cannot send to udp://{addr}: {e}"),
                ))
            }
        }
        let deadline = said + Duration::from_millis(UDP_HELLO_WAIT_MS);
        loop {
            let Ok(received) =
                tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await
            else {
                break;
            };
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(refused(addr))
                }
                Err(e) => {
                    return Err(fail(
                        ErrorKind::Connect,
                        format!("cannot receive from udp://{addr}: {e}"),
                    ))
                }
            };
            match reflector::judge_answer(&buf[..n], session, token) {
                Answer::Welcomed { cookie } => return Ok((micros(said.elapsed()), cookie)),
                Answer::OtherToken => {
                    return Err(fail(
                        ErrorKind::ReflectorUnverified,
                        format!(
                            "udp://{addr} is a reflector, but not this site's (it answered with \
                             another token); no stream was sent"
                        ),
                    ))
                }
                // Whatever listens there is something else (an echo service, a game
                // server).
                Answer::NotAReflector(what) => {
                    return Err(fail(
                        ErrorKind::ReflectorUnverified,
                        format!(
                            "udp://{addr} answered, but not as a reflector ({what}); no stream \
                             was sent"
                        ),
                    ))
                }
                Answer::Ignore => {}
            }
        }
    }
    Err(fail(
        ErrorKind::ReflectorSilent,
        format!(
            "udp://{addr} did not answer {UDP_HELLO_ATTEMPTS} hellos in {} ms; no stream was sent",
            UDP_HELLO_ATTEMPTS as u64 * UDP_HELLO_WAIT_MS
        ),
    ))
}

fn refused(addr: SocketAddr) -> MeasurementError {
    fail(
        ErrorKind::ConnectRefused,
        format!("nothing listens at udp://{addr} (port unreachable); no stream was sent"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::tests::local_engine;
    use crate::reflector::Reflector;
    use std::sync::{Arc, Mutex};

    const TOKEN: &str = "lms_test_token";

    fn task(interval_ms: u64, duration_ms: u64) -> UdpTask {
        UdpTask {
            interval_ms,
            duration_ms,
            packet_bytes: 172,
            token: TOKEN.into(),
        }
    }

    fn within(ms: u64) -> Expectations {
        Expectations {
            timeout: Duration::from_millis(ms),
            ..Expectations::default()
        }
    }

    fn summary(m: &Measurement) -> &UdpSummary {
        m.udp.as_ref().expect("a udp summary")
    }

    /// A UDP socket on 127.0.0.1 that keeps every datagram it gets and answers each as
    /// `answer` says (nothing, when it says `None`).
    async fn stranger(
        answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let kept = got.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                kept.lock().unwrap().push(buf[..n].to_vec());
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        (addr, got)
    }

    #[tokio::test]
    async fn a_stream_to_the_sites_reflector_comes_back_whole() {
        let reflector = Reflector::start("127.0.0.1:0".parse().unwrap(), TOKEN.into())
            .await
            .unwrap();
        let url = format!("udp://{}", reflector.addr());
        let m = local_engine()
            .measure_udp(&url, &within(10_000), &task(20, 1_000))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        assert_eq!(s.sent, 50, "one probe every 20 ms for a second: {s:?}");
        assert_eq!((s.received, s.lost_up), (50, 0), "{s:?}");
        assert_eq!(s.rtt_us.len(), 50);
        assert!(
            s.rtt_us.iter().all(|&rtt| rtt > 0 && rtt < 200_000),
            "{s:?}"
        );
        assert_eq!(m.bytes, 50 * 172, "every echo is as long as its probe");
        assert_eq!(m.status, None, "a stream has no HTTP status");
        assert!(m.timings_us.ttfb > 0, "the hello's round trip: {m:?}");
        assert!(
            m.timings_us.transfer >= 980_000 && m.timings_us.total >= m.timings_us.transfer,
            "{:?}",
            m.timings_us
        );
        assert_eq!(s.loss_ppm(), Some(0));
    }

    #[tokio::test]
    async fn behind_a_lossy_line_the_stream_tells_loss_each_way_jitter_and_round_trip() {
        use lastmile_testbed::link::LinkProfile;
        use lastmile_testbed::udp_link::{Impairment, UdpLink};
        let reflector = Reflector::start("127.0.0.1:0".parse().unwrap(), TOKEN.into())
            .await
            .unwrap();
        let profile = LinkProfile {
            down_bps: 16_000_000,
            up_bps: 1_000_000,
            rtt: Duration::from_millis(40),
        };
        // 5 % lost each way, up to 10 ms of extra delay: a bad mobile line.
        let impairment = Impairment {
            jitter: Duration::from_millis(10),
            loss_ppm: 50_000,
        };
        let link = UdpLink::start(
            "127.0.0.1:0".parse().unwrap(),
            reflector.addr(),
            profile,
            impairment,
            7,
        )
        .await
        .unwrap();
        let url = format!("udp://{}", link.addr());
        let m = local_engine()
            .measure_udp(&url, &within(20_000), &task(20, 4_000))
            .await;
        assert_eq!(m.error, None, "{m:?}");
        let s = summary(&m);
        let loss = s.loss_ppm().unwrap() as f64 / 10_000.0;
        let rtt = s.median_rtt_us().unwrap();
        let jitter = s.jitter_us().unwrap();
        eprintln!(
            "40 ms line, 5 % loss each way, 10 ms jitter: {} sent, {loss:.1} % lost ({} up, {} down), \
             rtt median {:.1} ms, jitter {:.1} ms",
            s.sent,
            s.lost_up,
            s.lost() - s.lost_up,
            rtt as f64 / 1000.0,
            jitter as f64 / 1000.0
        );
        assert_eq!(s.sent, 200);
        // Two ways of 5 %: ~9.75 % of probes lost, about half of them on the way there.
        assert!((4.0..=18.0).contains(&loss), "{loss} %: {s:?}");
        assert!(s.lost_up >= 2 && s.lost_up < s.lost(), "{s:?}");
        assert!((40_000..=75_000).contains(&rtt), "{rtt} µs");
        // Uniform extra delay of 0-10 ms each way (kept in order): consecutive round trips
        // differ by a few ms on average.
        assert!((1_000..=12_000).contains(&jitter), "{jitter} µs");
    }

    #[tokio::test]
    async fn no_stream_goes_to_a_reflector_of_another_site() {
        let (addr, got) = stranger(|bytes| match reflector::decode(bytes) {
            Ok(Packet::Hello { session }) => reflector::welcome(session, 1, "lms_someone_else"),
            _ => None,
        })
        .await;
        let m = local_engine()
            .measure_udp(&format!("udp://{addr}"), &within(10_000), &task(20, 1_000))
            .await;
        let e = m.error.as_ref().expect("refused");
        assert_eq!(e.kind, ErrorKind::ReflectorUnverified, "{e:?}");
        assert!(e.message.contains("no stream was sent"), "{e:?}");
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "one hello, then nothing: {}", got.len());
        assert!(matches!(
            reflector::decode(&got[0]),
            Ok(Packet::Hello { .. })
        ));
    }

    #[tokio::test]
    async fn an_echo_longer_or_shorter_than_its_probe_is_not_an_echo() {
        // A reflector of the site that pads every echo (or cuts it): were they counted,
        // the result would claim more (or fewer) bytes than its probes carried.
        for change in [1i32, -1] {
            let (addr, got) = stranger(move |bytes| match reflector::decode(bytes) {
                Ok(Packet::Hello { session }) => reflector::welcome(session, 7, TOKEN),
                Ok(Packet::Probe { .. }) => reflector::echo(bytes, 1).map(|mut echo| {
                    echo.resize((echo.len() as i32 + change) as usize, 0);
                    echo
                }),
                _ => None,
            })
            .await;
            let m = local_engine()
                .measure_udp(&format!("udp://{addr}"), &within(10_000), &task(50, 1_000))
                .await;
            assert_eq!(m.error, None, "{m:?}");
            let s = summary(&m);
            assert_eq!((s.sent, s.received), (20, 0), "{change}: {s:?}");
            assert_eq!(m.bytes, 0, "{change}: {m:?}");
            assert_eq!(got.lock().unwrap().len(), 21, "the hello and the probes");
        }
    }

    #[tokio::test]
    async fn no_stream_goes_to_something_that_is_not_a_reflector() {
        // An echo service answers a hello with the hello itself.
        let (addr, got) = stranger(|bytes| Some(bytes.to_vec())).await;
        let m = local_engine()
            .measure_udp(&format!("udp://{addr}"), &within(10_000), &task(20, 1_000))
            .await;
        let e = m.error.as_ref().expect("refused");
        assert_eq!(e.kind, ErrorKind::ReflectorUnverified, "{e:?}");
        assert_eq!(got.lock().unwrap().len(), 1, "only the hello reached it");
    }

    #[tokio::test]
    async fn a_silent_address_gets_three_hellos_and_nothing_else() {
        let (addr, got) = stranger(|_| None).await;
        let m = local_engine()
            .measure_udp(&format!("udp://{addr}"), &within(10_000), &task(20, 1_000))
            .await;
        let e = m.error.as_ref().expect("refused");
        assert_eq!(e.kind, ErrorKind::ReflectorSilent, "{e:?}");
        let got = got.lock().unwrap();
        assert_eq!(got.len(), UDP_HELLO_ATTEMPTS as usize);
        assert!(got.iter().all(|d| d.len() == reflector::HELLO_LEN));
        assert_eq!(summary(&m).sent, 0);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let addr = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        };
        let m = local_engine()
            .measure_udp(&format!("udp://{addr}"), &within(10_000), &task(20, 1_000))
            .await;
        let e = m.error.as_ref().expect("refused");
        assert_eq!(e.kind, ErrorKind::ConnectRefused, "{e:?}");
    }

    #[tokio::test]
    async fn a_stream_stops_when_its_reflector_goes_away() {
        let reflector = Reflector::start("127.0.0.1:0".parse().unwrap(), TOKEN.into())
            .await
            .unwrap();
        let url = format!("udp://{}", reflector.addr());
        let engine = local_engine();
        let stream = task(20, 20_000);
        let measuring =
            tokio::spawn(async move { engine.measure_udp(&url, &within(30_000), &stream).await });
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        drop(reflector);
        let m = measuring.await.unwrap();
        assert_eq!(
            m.error, None,
            "a reflector gone is loss, not a failure: {m:?}"
        );
        let s = summary(&m);
        // About 1 s answered, then 3 s of silence: ~200 probes of the 1,000 planned.
        assert!((100..400).contains(&s.sent), "{s:?}");
        assert!(s.received >= 30 && s.received < s.sent, "{s:?}");
        assert!(m.timings_us.total < 10_000_000, "{:?}", m.timings_us);
    }

    #[tokio::test]
    async fn streams_the_agent_cannot_send_as_asked_are_refused() {
        let engine = local_engine();
        for (stream, timeout_ms, says) in [
            (task(5, 1_000), 10_000, "every"),
            (task(20, 500), 10_000, "lasts"),
            (task(10, 60_000), 90_000, "at most"),
            (
                UdpTask {
                    packet_bytes: 8,
                    ..task(20, 1_000)
                },
                10_000,
                "bytes",
            ),
            (
                UdpTask {
                    token: String::new(),
                    ..task(20, 1_000)
                },
                10_000,
                "token",
            ),
            (task(20, 9_500), 10_000, "do not fit"),
        ] {
            let m = engine
                .measure_udp("udp://127.0.0.1:9", &within(timeout_ms), &stream)
                .await;
            let e = m.error.expect("refused");
            assert_eq!(e.kind, ErrorKind::InvalidTask, "{e:?}");
            assert!(e.message.contains(says), "{says}: {e:?}");
        }
        for url in ["http://127.0.0.1:9/", "udp://127.0.0.1"] {
            let m = engine
                .measure_udp(url, &within(10_000), &task(20, 1_000))
                .await;
            assert_eq!(
                m.error.map(|e| e.kind),
                Some(ErrorKind::InvalidTask),
                "{url}"
            );
        }
    }

    #[tokio::test]
    async fn a_private_reflector_is_forbidden_outside_local_tests() {
        let engine = Engine::new(crate::measure::EngineConfig::default()).unwrap();
        let m = engine
            .measure_udp("udp://127.0.0.1:7301", &within(10_000), &task(20, 1_000))
            .await;
        assert_eq!(m.error.map(|e| e.kind), Some(ErrorKind::TargetForbidden));
    }
}
