//! What the controller itself timed of an agent's calibration.
//!
//! **Architecture Invariant:** an agent's calibrated figures (RTT, downstream and
//! upstream rate) come from the controller's own clock, never from numbers the agent
//! reports: an agent that could post `rtt_us: 1, down_bps: 10^15` would switch off
//! every line rule of `verification`. The agent's report only says "I am done"; its
//! figures are kept in the log for comparison, nothing else.
//!
//! How each figure is timed, in the order the agent measures:
//!
//! - **RTT**: each ping answer carries a fresh random nonce
//!   ([`NONCE_HEADER`]); the agent's next calibration request sends it back
//!   ([`ECHO_HEADER`]). The time from the controller handing out the answer to the echo
//!   arriving is one round trip plus the agent's turnaround (microseconds), which can
//!   only make the line look slower, never faster: the echo cannot be sent before the
//!   answer arrived. The RTT is the median of the samples.
//! - **Downstream**: a download's payload ends with its nonce, so the echo needs the
//!   whole body. From handing out the answer to the echo arriving is the transfer plus
//!   one round trip; the rate is `bytes / (elapsed - rtt)` over the longest download.
//! - **Upstream**: the controller times an upload's body itself, from its first chunk
//!   to its last, over the bytes after the first chunk.
//!
//! An agent from before the echo existed sends none; its samples are the gaps between
//! consecutive requests on the same connection (same peer address and port), timed the
//! same way. Such an agent could pipeline its pings to shrink its RTT (never its
//! transfer times below what its socket buffers hold); current agents always echo, and
//! a wrong echo voids the sample.
//!
//! Sessions live in the memory of the replica the agent talks to, which its one
//! kept-alive calibration connection makes the same replica for the whole calibration;
//! an agent whose calibration is split across replicas gets `calibration_incomplete`
//! and calibrates again later. Sessions are bounded ([`MAX_SESSIONS`], oldest evicted)
//! and expire after [`SESSION_TTL`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

pub use lastmile_protocol::calibration::{ECHO_HEADER, NONCE_HEADER, NONCE_LEN};
/// Sessions kept at most (each a few hundred bytes).
pub const MAX_SESSIONS: usize = 10_000;
/// A session untouched this long is forgotten.
pub const SESSION_TTL: Duration = Duration::from_secs(600);
/// Round-trip samples needed for an RTT.
pub const MIN_PINGS: usize = 3;

/// What an answer handed out is waiting to have echoed.
#[derive(Debug, Clone)]
struct Pending {
    nonce: String,
    sent: Instant,
    peer: Option<SocketAddr>,
    /// A download's payload size; `None` for a ping.
    download_bytes: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Session {
    touched: Option<Instant>,
    pending: Option<Pending>,
    rtts: Vec<Duration>,
    /// (bytes, from answer to echo).
    downloads: Vec<(u64, Duration)>,
    /// (bytes after the first chunk, first to last chunk).
    uploads: Vec<(u64, Duration)>,
}

/// The figures the controller timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timed {
    pub rtt_us: u64,
    pub down_bps: u64,
    pub up_bps: u64,
}

/// Why the controller could not time a calibration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    pub pings: usize,
    pub downloads: usize,
    pub uploads: usize,
}

/// Every agent's calibration in progress on this replica.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn with<T>(&self, agent_id: &str, now: Instant, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| {
            s.touched
                .is_some_and(|t| now.duration_since(t) < SESSION_TTL)
        });
        if map.len() >= MAX_SESSIONS && !map.contains_key(agent_id) {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.touched)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let session = map.entry(agent_id.to_owned()).or_default();
        session.touched = Some(now);
        f(session)
    }

    /// A calibration request arrived from `peer` with `echo` (the header's value, if
    /// any): closes the answer the previous request is waiting on. Call first in every
    /// calibration handler.
    pub fn arrived(&self, agent_id: &str, peer: Option<SocketAddr>, echo: Option<&str>) {
        let now = Instant::now();
        self.with(agent_id, now, |s| {
            let Some(p) = s.pending.take() else {
                return;
            };
            let counts = match echo {
                Some(echo) => echo == p.nonce,
                // An agent from before the echo: the next request on the same connection.
                None => peer.is_some() && peer == p.peer,
            };
            if !counts {
                return;
            }
            let elapsed = now.duration_since(p.sent);
            match p.download_bytes {
                None => s.rtts.push(elapsed),
                Some(bytes) => s.downloads.push((bytes, elapsed)),
            }
        });
    }

    /// A ping answer is handed out now; returns its nonce for [`NONCE_HEADER`].
    pub fn ping_sent(&self, agent_id: &str, peer: Option<SocketAddr>) -> String {
        self.sent(agent_id, peer, None)
    }

    /// A download answer of `bytes` is handed out now; returns the nonce its payload
    /// must end with.
    pub fn download_sent(&self, agent_id: &str, peer: Option<SocketAddr>, bytes: u64) -> String {
        self.sent(agent_id, peer, Some(bytes))
    }

    fn sent(
        &self,
        agent_id: &str,
        peer: Option<SocketAddr>,
        download_bytes: Option<u64>,
    ) -> String {
        let nonce = new_nonce();
        let now = Instant::now();
        self.with(agent_id, now, |s| {
            s.pending = Some(Pending {
                nonce: nonce.clone(),
                sent: now,
                peer,
                download_bytes,
            });
        });
        nonce
    }

    /// An upload's body arrived: `timed_bytes` after its first chunk, over `took`.
    pub fn uploaded(&self, agent_id: &str, timed_bytes: u64, took: Duration) {
        if timed_bytes == 0 || took.is_zero() {
            return;
        }
        self.with(agent_id, Instant::now(), |s| {
            s.uploads.push((timed_bytes, took))
        });
    }

    /// The figures of the agent's calibration, ending its session.
    pub fn finish(&self, agent_id: &str) -> Result<Timed, Incomplete> {
        let session = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(agent_id).unwrap_or_default()
        };
        figures(&session)
    }
}

fn new_nonce() -> String {
    let mut bytes = [0u8; NONCE_LEN / 2];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn bits_per_second(bytes: u64, took: Duration) -> u64 {
    let seconds = took.as_secs_f64().max(1e-6);
    ((bytes as f64 * 8.0) / seconds) as u64
}

fn figures(s: &Session) -> Result<Timed, Incomplete> {
    let incomplete = || Incomplete {
        pings: s.rtts.len(),
        downloads: s.downloads.len(),
        uploads: s.uploads.len(),
    };
    if s.rtts.len() < MIN_PINGS {
        return Err(incomplete());
    }
    let mut rtts = s.rtts.clone();
    rtts.sort();
    let rtt = rtts[rtts.len() / 2];
    // The longest transfer is timed best (the agent grows them until one is long).
    let &(down_bytes, down_took) = s
        .downloads
        .iter()
        .max_by_key(|(_, took)| *took)
        .ok_or_else(incomplete)?;
    // Less the round trip in it, but never below half the elapsed time (a noisy RTT
    // must not turn a long transfer into an instant one).
    let down_transfer = down_took.saturating_sub(rtt).max(down_took / 2);
    let &(up_bytes, up_took) = s
        .uploads
        .iter()
        .max_by_key(|(_, took)| *took)
        .ok_or_else(incomplete)?;
    Ok(Timed {
        rtt_us: (rtt.as_micros() as u64).max(1),
        down_bps: bits_per_second(down_bytes, down_transfer).max(1),
        up_bps: bits_per_second(up_bytes, up_took).max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 2], port)))
    }

    #[test]
    fn only_echoed_answers_or_the_same_connection_count() {
        let s = Sessions::default();
        for _ in 0..3 {
            let nonce = s.ping_sent("a", peer(1000));
            s.arrived("a", peer(1000), Some(&nonce));
        }
        // A wrong echo, and an echo-less request from another connection: no sample.
        s.ping_sent("a", peer(1000));
        s.arrived("a", peer(1000), Some("0000"));
        s.ping_sent("a", peer(1000));
        s.arrived("a", peer(2000), None);
        // An older agent on its one connection: counted.
        s.ping_sent("a", peer(1000));
        s.arrived("a", peer(1000), None);
        let nonce = s.download_sent("a", peer(1000), 1_000_000);
        s.arrived("a", peer(1000), Some(&nonce));
        s.uploaded("a", 1_000_000, Duration::from_millis(100));
        let session = s.inner.lock().unwrap().get("a").cloned().unwrap();
        assert_eq!(session.rtts.len(), 4);
        assert_eq!(session.downloads.len(), 1);
        assert!(s.finish("a").is_ok());
        // Finishing ends the session.
        assert_eq!(
            s.finish("a"),
            Err(Incomplete {
                pings: 0,
                downloads: 0,
                uploads: 0
            })
        );
    }

    #[test]
    fn figures_take_the_median_rtt_and_the_longest_transfers() {
        let ms = Duration::from_millis;
        let session = Session {
            rtts: vec![ms(40), ms(41), ms(90), ms(39), ms(42)],
            // 1 MB in 840 ms including a 41 ms round trip: 800 ms of transfer, 10 Mbit/s.
            downloads: vec![(16_384, ms(60)), (1_000_000, ms(841))],
            uploads: vec![(125_000, ms(1000))],
            ..Session::default()
        };
        let t = figures(&session).unwrap();
        assert_eq!(t.rtt_us, 41_000);
        assert_eq!(t.down_bps, 10_000_000);
        assert_eq!(t.up_bps, 1_000_000);
    }
}
