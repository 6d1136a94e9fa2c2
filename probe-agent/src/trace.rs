//! Path traces: UDP probes with rising TTL, unprivileged, as `tracepath` sends them.
//!
//! No raw socket and no privilege: one ordinary UDP socket with `IP_RECVERR` (or
//! `IPV6_RECVERR`) set, so the ICMP errors its probes cause — "time exceeded" from each
//! router on the way, "port unreachable" from the target — are queued on the socket
//! with the address of whoever sent them, and read with `MSG_ERRQUEUE`. Each probe goes
//! to its own destination port (33434 up, the traceroute range), which is how an
//! answer is matched to its probe and its TTL. The target is resolved through the
//! agent's address guard exactly as for a measurement; only the target is ever sent
//! to. Bounded by the task: hops, probes a hop, the wait for each, and
//! [`MAX_SILENT_HOPS`] silent hops in a row.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use lastmile_protocol::trace::{
    TraceHop, TraceReport, TraceTask, MAX_PROBES_PER_HOP, MAX_PROBE_TIMEOUT_MS, MAX_SILENT_HOPS,
    MAX_TRACE_HOPS,
};
use lastmile_protocol::{ErrorKind, MeasurementError};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvmsg, sendto, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
};

use crate::measure::Engine;

/// The first destination port probed; each probe takes the next.
const BASE_PORT: u16 = 33434;

/// Bytes of payload in each probe: small, like tracepath's.
const PAYLOAD: [u8; 24] = *b"lastmile path trace     ";

// ICMP types and codes the error queue reports (`ee_origin` 2 for ICMP, 3 for ICMPv6).
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PORT_UNREACH: u8 = 4;
const ICMP6_TIME_EXCEEDED: u8 = 3;

/// How far and how hard to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    pub max_hops: u8,
    pub probes_per_hop: u8,
    pub probe_timeout: Duration,
}

impl TraceLimits {
    /// The task's limits, held within the protocol's bounds whatever the task says.
    pub fn of(task: &TraceTask) -> TraceLimits {
        TraceLimits {
            max_hops: task.max_hops.clamp(1, MAX_TRACE_HOPS),
            probes_per_hop: task.probes_per_hop.clamp(1, MAX_PROBES_PER_HOP),
            probe_timeout: Duration::from_millis(u64::from(
                task.probe_timeout_ms.clamp(50, MAX_PROBE_TIMEOUT_MS),
            )),
        }
    }
}

/// The path as the probes saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSeen {
    pub hops: Vec<TraceHop>,
    /// The target itself answered.
    pub reached: bool,
}

/// What one ICMP error said about one probe.
struct Answer {
    port: u16,
    from: Option<IpAddr>,
    at: Instant,
    /// The target answered (port unreachable), or a router said it cannot go on.
    last: bool,
}

/// Runs the task: resolves its URL's host through the guard and traces the first
/// permitted address. Never fails: what went wrong is in the report's `error`.
pub async fn run(engine: &Engine, task: &TraceTask) -> TraceReport {
    let started_at = chrono::Utc::now();
    let mut report = TraceReport {
        trace_id: task.trace_id,
        started_at,
        target_addr: None,
        hops: Vec::new(),
        reached: false,
        error: None,
    };
    let target = match url::Url::parse(&task.url) {
        Ok(url) => match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => {
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                engine.resolve(&host, port).await.map(|addrs| addrs[0].ip())
            }
            _ => Err(invalid(format!("{} has no host to trace", task.url))),
        },
        Err(e) => Err(invalid(format!("{}: {e}", task.url))),
    };
    let target = match target {
        Ok(ip) => ip,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.target_addr = Some(target.to_string());
    let (limits, source) = (TraceLimits::of(task), engine.source_addr());
    match tokio::task::spawn_blocking(move || udp_trace(target, source, limits)).await {
        Ok(Ok(seen)) => {
            report.hops = seen.hops;
            report.reached = seen.reached;
        }
        Ok(Err(e)) => {
            report.error = Some(MeasurementError {
                kind: ErrorKind::Connect,
                message: format!("cannot probe {target}: {e}"),
            })
        }
        Err(e) => {
            report.error = Some(MeasurementError {
                kind: ErrorKind::Connect,
                message: format!("the trace stopped: {e}"),
            })
        }
    }
    report
}

fn invalid(message: String) -> MeasurementError {
    MeasurementError {
        kind: ErrorKind::InvalidTask,
        message,
    }
}

/// Traces the path to `target` from this thread's network namespace, blocking: TTL 1
/// up, `probes_per_hop` probes a hop, waiting up to `probe_timeout` after a hop's last
/// probe for their answers. Stops at the target, at a router that says the target is
/// unreachable, after [`MAX_SILENT_HOPS`] silent hops in a row, or at `max_hops`.
pub fn udp_trace(
    target: IpAddr,
    source: Option<IpAddr>,
    limits: TraceLimits,
) -> std::io::Result<PathSeen> {
    let fd = open_socket(target, source)?;
    // Which TTL and when each probe went, by destination port.
    let mut sent: HashMap<u16, (u8, Instant)> = HashMap::new();
    let mut hops: Vec<TraceHop> = Vec::new();
    let mut port = BASE_PORT;
    let mut silent = 0u8;
    let mut reached = false;
    for ttl in 1..=limits.max_hops.min(MAX_TRACE_HOPS) {
        set_ttl(&fd, target, ttl)?;
        hops.push(TraceHop {
            ttl,
            addr: None,
            sent: 0,
            rtts_us: Vec::new(),
        });
        for _ in 0..limits.probes_per_hop {
            let to = SocketAddr::new(target, port);
            let mut at = Instant::now();
            // A send reports an earlier probe's ICMP error (the socket's pending error)
            // instead of sending: the error is read from the queue below all the same,
            // and the send is made again. Twice is enough (one pending error at a time).
            for _ in 0..3 {
                at = Instant::now();
                let result = match to {
                    SocketAddr::V4(v4) => sendto(
                        fd.as_raw_fd(),
                        &PAYLOAD,
                        &SockaddrIn::from(v4),
                        MsgFlags::empty(),
                    ),
                    SocketAddr::V6(v6) => sendto(
                        fd.as_raw_fd(),
                        &PAYLOAD,
                        &SockaddrIn6::from(v6),
                        MsgFlags::empty(),
                    ),
                };
                match result {
                    Ok(_) => break,
                    Err(
                        Errno::ECONNREFUSED
                        | Errno::EHOSTUNREACH
                        | Errno::ENETUNREACH
                        | Errno::EPROTO
                        | Errno::EACCES,
                    ) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            sent.insert(port, (ttl, at));
            if let Some(hop) = hops.last_mut() {
                hop.sent += 1;
            }
            port = port.wrapping_add(1);
        }
        let deadline = Instant::now() + limits.probe_timeout;
        let mut stop = false;
        loop {
            for answer in read_answers(&fd)? {
                let Some((probe_ttl, at)) = sent.get(&answer.port).copied() else {
                    continue;
                };
                let hop = &mut hops[usize::from(probe_ttl) - 1];
                if hop.addr.is_none() {
                    hop.addr = answer.from.map(|a| a.to_string());
                }
                hop.rtts_us
                    .push(answer.at.saturating_duration_since(at).as_micros() as u64);
                if answer.last {
                    stop = true;
                    reached |= answer.from == Some(target);
                }
                sent.remove(&answer.port);
            }
            let this_hop_done = hops
                .last()
                .is_some_and(|h| h.rtts_us.len() >= usize::from(h.sent));
            let now = Instant::now();
            if this_hop_done || now >= deadline {
                break;
            }
            wait_for_error(&fd, deadline - now)?;
        }
        let answered = hops.last().is_some_and(|h| !h.rtts_us.is_empty());
        silent = if answered { 0 } else { silent + 1 };
        if stop || silent >= MAX_SILENT_HOPS {
            break;
        }
    }
    Ok(PathSeen { hops, reached })
}

fn open_socket(target: IpAddr, source: Option<IpAddr>) -> std::io::Result<OwnedFd> {
    let family = match target {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match target {
        IpAddr::V4(_) => setsockopt(&fd, sockopt::Ipv4RecvErr, &true)?,
        IpAddr::V6(_) => setsockopt(&fd, sockopt::Ipv6RecvErr, &true)?,
    }
    match (source, target) {
        (Some(IpAddr::V4(s)), IpAddr::V4(_)) => bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(s, 0)),
        )?,
        (Some(IpAddr::V6(s)), IpAddr::V6(_)) => bind(
            fd.as_raw_fd(),
            &SockaddrIn6::from(std::net::SocketAddrV6::new(s, 0, 0, 0)),
        )?,
        _ => {}
    }
    Ok(fd)
}

fn set_ttl(fd: &OwnedFd, target: IpAddr, ttl: u8) -> std::io::Result<()> {
    match target {
        IpAddr::V4(_) => setsockopt(fd, sockopt::Ipv4Ttl, &i32::from(ttl))?,
        IpAddr::V6(_) => setsockopt(fd, sockopt::Ipv6Ttl, &i32::from(ttl))?,
    }
    Ok(())
}

/// Waits until the socket has an error queued (or data), or `timeout` passes.
fn wait_for_error(fd: &OwnedFd, timeout: Duration) -> std::io::Result<()> {
    let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Every ICMP error queued on the socket now, read without waiting. Data that arrives
/// (a target that answers UDP on the probed port) is read and dropped.
fn read_answers(fd: &OwnedFd) -> std::io::Result<Vec<Answer>> {
    let mut answers = Vec::new();
    for _ in 0..256 {
        let mut buf = [0u8; 512];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
        let received = recvmsg::<SockaddrStorage>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        );
        let msg = match received {
            Ok(msg) => msg,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let at = Instant::now();
        let port = msg.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| v4.port())
                .or_else(|| a.as_sockaddr_in6().map(|v6| v6.port()))
        });
        let Some(port) = port else { continue };
        let Ok(cmsgs) = msg.cmsgs() else { continue };
        for cmsg in cmsgs {
            let (err, from) = match cmsg {
                ControlMessageOwned::Ipv4RecvErr(err, from) => (
                    err,
                    from.map(|a| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))),
                ),
                ControlMessageOwned::Ipv6RecvErr(err, from) => (
                    err,
                    from.map(|a| IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))),
                ),
                _ => continue,
            };
            let kind = (err.ee_origin, err.ee_type, err.ee_code);
            let last = match kind {
                (ORIGIN_ICMP, ICMP_TIME_EXCEEDED, _) | (ORIGIN_ICMP6, ICMP6_TIME_EXCEEDED, _) => {
                    false
                }
                (ORIGIN_ICMP, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
                | (ORIGIN_ICMP6, ICMP6_DEST_UNREACH, ICMP6_PORT_UNREACH) => true,
                // Another unreachable (network, host, filtered): the path ends there.
                (ORIGIN_ICMP, ICMP_DEST_UNREACH, _) | (ORIGIN_ICMP6, ICMP6_DEST_UNREACH, _) => true,
                // Local errors (a message too long, ...) say nothing about the path.
                _ => continue,
            };
            answers.push(Answer {
                port,
                from,
                at,
                last,
            });
        }
    }
    // Drain ordinary data too, so that readiness does not spin.
    let mut buf = [0u8; 512];
    for _ in 0..64 {
        match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_one_hop_and_reached() {
        let limits = TraceLimits {
            max_hops: 5,
            probes_per_hop: 3,
            probe_timeout: Duration::from_millis(500),
        };
        let seen = udp_trace(IpAddr::V4(Ipv4Addr::LOCALHOST), None, limits)
            .unwrap_or_else(|e| panic!("trace: {e}"));
        assert!(seen.reached, "{seen:?}");
        assert_eq!(seen.hops.len(), 1, "{seen:?}");
        assert_eq!(seen.hops[0].addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(seen.hops[0].sent, 3);
        assert!(!seen.hops[0].rtts_us.is_empty(), "{seen:?}");
    }

    #[test]
    fn limits_stay_within_the_protocol_whatever_the_task_says() {
        let task = TraceTask {
            trace_id: uuid::Uuid::nil(),
            url: "http://example.com/".into(),
            max_hops: 255,
            probes_per_hop: 0,
            probe_timeout_ms: 3_600_000,
            expires_at: chrono::Utc::now(),
        };
        let limits = TraceLimits::of(&task);
        assert_eq!(limits.max_hops, MAX_TRACE_HOPS);
        assert_eq!(limits.probes_per_hop, 1);
        assert_eq!(
            limits.probe_timeout,
            Duration::from_millis(u64::from(MAX_PROBE_TIMEOUT_MS))
        );
    }
}
