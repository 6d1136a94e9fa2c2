//! Proving a udp check's reflector from the controller when the check is made, or when
//! its target changes: the hello an agent sends, answered with the site's token. A site
//! is verified before a check may target it; a reflector likewise, so that an owner
//! learns at once that it is missing, closed to the internet or started with another
//! token, not from a run of failed results. Agents prove it again before every stream
//! all the same: a reflector can go away or change later.
//!
//! Its addresses pass the same guard as a site's origin ([`FetchPolicy`]): the
//! controller sends nothing to a private address either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use lastmile_protocol::reflector::{self, Answer};
use tokio::net::UdpSocket;

use crate::error::{Error, Result};
use crate::rate_limit::RateLimiter;
use crate::sites::FetchPolicy;

/// Hellos the controller sends before it says nothing answered.
pub const PROOF_ATTEMPTS: u32 = 3;

/// How long each hello waits for its welcome: the owner waits for their request, so
/// the whole proof takes at most 1.5 s.
pub const PROOF_WAIT: Duration = Duration::from_millis(500);

/// Proofs one owner may ask for a minute (per controller process, as every quota).
/// Each sends up to [`PROOF_ATTEMPTS`] hellos from the controller's address to wherever
/// the owner's site's DNS points, and tells whether anything answered: without a
/// bound, a way to have the controller probe UDP ports. Far more than setting up
/// checks by hand or by script needs.
pub const PROOFS_PER_MINUTE: u32 = 20;

static PROOF_QUOTA: LazyLock<RateLimiter> = LazyLock::new(|| RateLimiter::new(PROOFS_PER_MINUTE));

/// Takes one proof from `owner_id`'s quota: 429 `rate_limited` when it is used up.
pub fn take_proof(owner_id: &str) -> Result<()> {
    let quota = PROOF_QUOTA.check(owner_id);
    if quota.allowed {
        return Ok(());
    }
    Err(Error::RateLimited {
        quota: format!("your reflector proofs ({PROOFS_PER_MINUTE} a minute)"),
        retry_after_s: quota.reset_s,
    })
}

/// Proves that `udp://host:port` is a reflector started with `token`.
pub async fn prove(policy: &FetchPolicy, host: &str, port: u16, token: &str) -> Result<()> {
    let ips = policy.judged_addresses(host).await?;
    let Some(ip) = ips.first().copied() else {
        return Err(Error::invalid(
            "reflector_not_verified",
            format!("{host} has no address"),
        ));
    };
    let addr = SocketAddr::new(ip, port);
    let target = format!("udp://{host}:{port}");
    let silent = || {
        Error::invalid(
            "reflector_not_verified",
            format!(
                "no reflector answered at {target}: start `lastmile-reflector --token <the site's \
                 verification token>` there, with UDP port {port} open to the internet, and try again"
            ),
        )
    };
    let unavailable =
        |e: std::io::Error| Error::Unavailable(format!("cannot send to {target}: {e}"));
    let local = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(unavailable)?;
    socket.connect(addr).await.map_err(unavailable)?;
    let session: u64 = rand::random();
    let hello = reflector::hello(session);
    let mut buf = vec![0u8; reflector::MAX_PROBE_LEN + 1];
    for _ in 0..PROOF_ATTEMPTS {
        match socket.send(&hello).await {
            Ok(_) => {}
            // ICMP port unreachable for an earlier hello: nothing listens there.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(silent()),
            Err(e) => return Err(unavailable(e)),
        }
        let deadline = tokio::time::Instant::now() + PROOF_WAIT;
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(silent()),
                Err(e) => return Err(unavailable(e)),
            };
            match reflector::judge_answer(&buf[..n], session, token) {
                Answer::Welcomed { .. } => return Ok(()),
                Answer::OtherToken => {
                    return Err(Error::invalid(
                        "reflector_not_verified",
                        format!(
                            "the reflector at {target} answered with another token: start it \
                             with this site's verification token"
                        ),
                    ))
                }
                Answer::NotAReflector(what) => {
                    return Err(Error::invalid(
                        "reflector_not_verified",
                        format!(
                            "{target} answered, but not as a Lastmile reflector ({what}): agents \
                             stream only to one"
                        ),
                    ))
                }
                Answer::Ignore => {}
            }
        }
    }
    Err(silent())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_gets_twenty_proofs_a_minute_then_429_with_when_to_retry() {
        for _ in 0..PROOFS_PER_MINUTE {
            take_proof("owner-a").unwrap();
        }
        match take_proof("owner-a") {
            Err(Error::RateLimited {
                quota,
                retry_after_s,
            }) => {
                assert!(quota.contains("reflector proofs"), "{quota}");
                assert!((1..=3).contains(&retry_after_s), "{retry_after_s}");
            }
            other => panic!("the 21st proof within a minute: {other:?}"),
        }
        take_proof("owner-b").expect("another owner has a quota of its own");
    }
}
