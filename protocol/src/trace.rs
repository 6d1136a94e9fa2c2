//! Path traces: where on the way to a target the time is lost.
//!
//! When an incident opens, the controller asks the agents that saw it to trace the path
//! to the check's target (a [`TraceTask`] in the lease answer, for agents whose
//! heartbeat says `path_trace`). The agent sends small UDP probes with rising TTL, as
//! `tracepath` does without privileges, and reports each hop that answered with the
//! round-trip times of its probes ([`TraceReport`], `POST /api/v1/agents/traces`).
//! Everything is bounded: at most [`MAX_TRACE_HOPS`] hops and
//! [`MAX_PROBES_PER_HOP`] probes a hop, each waited for at most
//! [`MAX_PROBE_TIMEOUT_MS`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::MeasurementError;

/// Most hops a trace goes out to (TTL 1 to this).
pub const MAX_TRACE_HOPS: u8 = 30;

/// Most probes sent to each hop.
pub const MAX_PROBES_PER_HOP: u8 = 3;

/// Longest a probe's answer is waited for, milliseconds.
pub const MAX_PROBE_TIMEOUT_MS: u32 = 2_000;

/// Hops in a row that answer nothing before a trace gives up (a firewall that drops
/// everything past it: waiting out the remaining TTLs would tell nothing more).
pub const MAX_SILENT_HOPS: u8 = 5;

/// Controller -> agent: trace the path to a check's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceTask {
    /// Also the report's idempotency key.
    pub trace_id: Uuid,
    /// The check's URL: its host is resolved through the agent's address guard, as for a
    /// measurement, and the first permitted address is traced.
    pub url: String,
    /// TTLs 1 to `max_hops` (at most [`MAX_TRACE_HOPS`]).
    pub max_hops: u8,
    /// Probes per hop (at most [`MAX_PROBES_PER_HOP`]).
    pub probes_per_hop: u8,
    /// How long each probe's answer is waited for (at most [`MAX_PROBE_TIMEOUT_MS`]).
    pub probe_timeout_ms: u32,
    /// A report after this is refused: the incident has moved on.
    pub expires_at: DateTime<Utc>,
}

/// One TTL of a trace: who answered, and how fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceHop {
    /// The TTL the probes were sent with (1 is the first router).
    pub ttl: u8,
    /// The address that answered (a router's "time exceeded", or the target itself);
    /// `null` when nothing answered.
    pub addr: Option<String>,
    /// Probes sent with this TTL.
    pub sent: u8,
    /// Round-trip time of each probe that got an answer, µs, in the order sent.
    pub rtts_us: Vec<u64>,
}

/// Agent -> controller: the path an agent saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceReport {
    pub trace_id: Uuid,
    pub started_at: DateTime<Utc>,
    /// The address traced (`null` when the name did not resolve to a permitted one).
    pub target_addr: Option<String>,
    /// Hops in TTL order, 1 first.
    pub hops: Vec<TraceHop>,
    /// Whether the target itself answered.
    pub reached: bool,
    /// Why no trace could be run (a name that does not resolve, a forbidden address,
    /// no socket); `null` when it ran, reached or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MeasurementError>,
}

/// Controller -> agent: the report is stored (also when it was stored before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceAck {
    pub trace_id: Uuid,
}

/// What a report says that cannot be right, in words (the controller's 422).
pub fn check_report(report: &TraceReport, task_hops: u8, task_probes: u8) -> Result<(), String> {
    if report.hops.len() > usize::from(task_hops) {
        return Err(format!(
            "{} hops reported; the trace asked for at most {task_hops}",
            report.hops.len()
        ));
    }
    for (i, hop) in report.hops.iter().enumerate() {
        let expected = i + 1;
        if usize::from(hop.ttl) != expected {
            return Err(format!(
                "hop {expected} has ttl {}: hops must be listed by TTL from 1",
                hop.ttl
            ));
        }
        if hop.sent > task_probes {
            return Err(format!(
                "hop {expected} says {} probes were sent; the trace asked for {task_probes}",
                hop.sent
            ));
        }
        if hop.rtts_us.len() > usize::from(hop.sent) {
            return Err(format!(
                "hop {expected} has {} round-trip times for {} probes sent",
                hop.rtts_us.len(),
                hop.sent
            ));
        }
        if hop.addr.is_none() != hop.rtts_us.is_empty() {
            return Err(format!(
                "hop {expected}: an address goes with round-trip times, and none without"
            ));
        }
        if let Some(addr) = &hop.addr {
            if addr.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("hop {expected}: {addr:?} is not an IP address"));
            }
        }
        if hop.rtts_us.iter().any(|rtt| *rtt > 60_000_000) {
            return Err(format!(
                "hop {expected}: a round-trip time over a minute cannot be a probe's"
            ));
        }
    }
    if let Some(addr) = &report.target_addr {
        if addr.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("target_addr {addr:?} is not an IP address"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ttl: u8, addr: Option<&str>, rtts: &[u64]) -> TraceHop {
        TraceHop {
            ttl,
            addr: addr.map(str::to_owned),
            sent: 3,
            rtts_us: rtts.to_vec(),
        }
    }

    fn report(hops: Vec<TraceHop>) -> TraceReport {
        TraceReport {
            trace_id: Uuid::nil(),
            started_at: DateTime::<Utc>::default(),
            target_addr: Some("192.0.2.1".into()),
            hops,
            reached: true,
            error: None,
        }
    }

    #[test]
    fn a_well_formed_report_passes_and_a_bent_one_says_why() {
        let good = report(vec![
            hop(1, Some("10.0.0.1"), &[800, 900]),
            hop(2, None, &[]),
            hop(3, Some("192.0.2.1"), &[12_000, 12_500, 11_900]),
        ]);
        assert_eq!(check_report(&good, 30, 3), Ok(()));
        let skipped = report(vec![hop(2, Some("10.0.0.1"), &[1])]);
        assert!(check_report(&skipped, 30, 3)
            .unwrap_err()
            .contains("listed by TTL"));
        let too_many = report(vec![hop(1, Some("10.0.0.1"), &[1, 2, 3, 4])]);
        assert!(check_report(&too_many, 30, 3).is_err());
        let silent_with_times = report(vec![hop(1, None, &[5])]);
        assert!(check_report(&silent_with_times, 30, 3).is_err());
        let long = report((1..=5).map(|t| hop(t, None, &[])).collect());
        assert!(check_report(&long, 4, 3).unwrap_err().contains("at most 4"));
        let not_ip = report(vec![hop(1, Some("router.example"), &[1])]);
        assert!(check_report(&not_ip, 30, 3).is_err());
    }
}
